"""The snnTorch NIR profile's approximate form for biases (issue 18) on trained runs, per layer.

For each run (QAT runs: their own plan), 32 stage-2 unseen test samples are encoded by the run's
host into payloads (T steps plus L zero steps), the bundle-style ``snntorch`` profile file is
loaded by snnTorch's ``import_from_nir`` and run, and its spikes are compared with the reference
simulator (== Lava fixed_pt, static thresholds) at the documented lag ``l`` (equal entries and spike
coincidence, as ``tests/test_nir_consumers.py`` measures). Beside it: the same weights with the
biases zeroed, in the exact bias-free form, against their own fixed-point run. Uses the consumer
runners of ``tests/test_nir_consumers.py``.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_snntorch_bias.py RUN/qat [RUN/qat ...]
"""
from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_nir_consumers import agreement, aligned, run_snntorch  # noqa: E402

from stft_neuro.checkpoint import load_run  # noqa: E402
from stft_neuro.converters.nir_out import plan_to_nir, write_nir  # noqa: E402
from stft_neuro.converters.nir_profiles import lag_steps  # noqa: E402
from stft_neuro.data import load_benchmark  # noqa: E402
from stft_neuro.hw_targets.loihi2.network import FixedPointNetwork  # noqa: E402
from stft_neuro.hw_targets.loihi2.weights import effective_bias  # noqa: E402
from stft_neuro.qat import calibrate  # noqa: E402
from stft_neuro.sim.reference import ReferenceSimulator  # noqa: E402


def without_biases(plan):
    layers = tuple(dataclasses.replace(x, bias_mant=np.zeros_like(x.bias_mant)) for x in plan.network.layers)
    return dataclasses.replace(plan, network=FixedPointNetwork(layers))


def main() -> int:
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="snn-bias-"))
    for run in sys.argv[1:]:
        model, cfg, meta = load_run(run)
        bench = load_benchmark(cfg.data)
        if not meta.get("deploy"):
            calibrate(model, bench.splits["stage_2_train"], torch.device("cpu"))
        plan, _ = model.spiking.deployment_plan()
        split = bench.splits["stage_2_test_unseen"]
        a, v, n = (torch.as_tensor(x[:32]) for x in (split.audio, split.visual, split.lengths))
        with torch.no_grad():
            x = plan.encode_input(model.spiking.encode(a, v, n)[0])
        L = plan.num_layers
        x = torch.cat([x, x.new_zeros(L, *x.shape[1:])]).float()
        nonzero = [int((effective_bias(l.bias_mant, l.bias_exp) != 0).sum()) for l in plan.network.layers]
        print(f"{run}: nonzero biases per layer {nonzero}")
        res = {}
        for which, p in (("biases (approximate form)", plan), ("bias-free (exact form)", without_biases(plan))):
            path = write_nir(plan_to_nir(p, profile="snntorch"), tmp / "p.nir")
            cons = run_snntorch(path, x, L)
            ref, _ = ReferenceSimulator(p).run(x.double())
            res[which] = [agreement(*aligned(cons[l], ref[l], lag)) for l, lag in enumerate(lag_steps(p))]
        for which, rows in res.items():
            print(f"  {which:<27}" + "  ".join(f"layer {l + 1}: equal {eq:.4f} coincidence {d:.4f}"
                                                for l, (eq, d) in enumerate(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
