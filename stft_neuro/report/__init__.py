"""Reports of what ran: counts (``counts.py``), NeuroBench 2.3 metrics (``neurobench.py``), energy
estimates (``energy.py``), the JSON report (``build.py``), HTML and PNG plots (``html.py``), the
``simulate`` run folder (``records.py``) and the ``stft-neuro report`` command (``cli.py``).

Nothing here imports Lava; counting a Lava run means counting its records.
"""
