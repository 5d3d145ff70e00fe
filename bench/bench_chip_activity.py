"""Is a trained run's chip alive? Input currents and firing per layer on its own test samples (issue #16).

    .venv/bin/python bench/bench_chip_activity.py RUN_DIR [RUN_DIR ...] [--samples 512] [--json]

For each run folder (a float run, ``model.safetensors``) the first ``--samples`` samples of
``stage_2_test_unseen`` go through the run's host encoding and its own float chip (the model's
``ChipNetwork``, dynamic thresholds as trained): the mean |input current| (threshold units), each
layer's mean firing rate and the fraction of its neurons that never fire, and the spiking vector
``s`` (TSF readout) with its spread across samples. A chip whose currents are 0 and whose layers
never fire contributes nothing the readout could use, whatever the shuffling test says.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from stft_neuro.checkpoint import load_run
from stft_neuro.data import load_benchmark


@torch.no_grad()
def activity(run_dir: Path, samples: int) -> dict:
    model, cfg, _ = load_run(run_dir)
    if model.spiking is None:
        return {"run": str(run_dir), "error": "no spiking branch"}
    model.eval()
    split = load_benchmark(cfg.data).splits["stage_2_test_unseen"]
    a, v, n = (torch.as_tensor(x[:samples]) for x in (split.audio, split.visual, split.lengths))
    x, g = model.spiking.encode(a, v, n)
    record = model.spiking.drive(x, g, model.spiking.chip)
    s = model.spiking.readout(record.spikes[-1])
    layers = [{"rate": float(sp.mean()), "never_fire": float((sp.sum((0, 1)) == 0).float().mean())}
              for sp in record.spikes]
    return {"run": str(run_dir), "samples": int(x.shape[1]), "mean_abs_current": float(x.abs().mean()),
            "layers": layers, "s_mean": float(s.mean()), "s_sd_over_samples": float(s.std(0).mean())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [activity(r, args.samples) for r in args.runs]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        if "error" in r:
            print(f"{r['run']}: {r['error']}")
            continue
        rates = " / ".join(f"{l['rate']:.3f} ({l['never_fire']:.0%} never)" for l in r["layers"])
        print(f"{r['run']}: |current| {r['mean_abs_current']:.3f}; rates {rates}; "
              f"s mean {r['s_mean']:.4f}, sd over samples {r['s_sd_over_samples']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
