"""Rankable model quality (issue #16): ``run`` the paired sweep, ``report`` its table.

    .venv/bin/python bench/bench_quality.py run    [--seeds 0 1 2 3 4] [--variants ...] [--set k=v ...]
                                                   [--ray [ADDRESS] [--ray-workers N]]
    .venv/bin/python bench/bench_quality.py report [--out FILE] [--write]

The sweep itself (variants, run order, resumable results file, report) is
``stft_neuro/quality_sweep.py``; see its docstring.
"""
from __future__ import annotations

import sys

from stft_neuro.quality_sweep import main

if __name__ == "__main__":
    sys.exit(main())
