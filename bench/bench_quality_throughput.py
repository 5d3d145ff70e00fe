"""Training throughput of STFT on the real-size synthetic UCF benchmark: threads and batch size.

    .venv/bin/python bench/bench_quality_throughput.py [--samples 1024] [--rounds 3]

Measures samples/s of ``stft_neuro.train.train_epoch`` (forward, losses, backward, Adam step; no
evaluation) on the first ``--samples`` samples of ``stage_1_train`` (data.sizes=real, seed 0), for
each setting in ``SETTINGS``. Settings run round-robin (``--rounds`` passes, each a fresh model
trained one epoch after one warm-up epoch), so that load from other processes on a shared machine
falls on all of them alike; the median over rounds is reported. Results: stdout (markdown) and
``bench/results/quality_throughput.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from stft_neuro.machine import cpu_name  # noqa: E402

from stft_neuro import config as config_mod  # noqa: E402
from stft_neuro.data import load_benchmark  # noqa: E402
from stft_neuro.train import make_model, train_epoch  # noqa: E402

# name -> (torch threads, overrides). "before": the defaults before issue #11 (batch 64, torch's
# default of one thread per core).
SETTINGS: dict[str, tuple[int, list[str]]] = {
    "before: batch 64, 2 threads": (2, ["train.batch_size=64"]),
    "batch 64, 1 thread": (1, ["train.batch_size=64"]),
    "batch 256 (AVCA), 1 thread": (1, ["train.batch_size=256"]),
    "batch 256 (AVCA), 2 threads": (2, ["train.batch_size=256"]),
    "AVCA-like, batch 64, 1 thread": (1, ["train.batch_size=64", "spiking.enabled=false", "fusion.kind=concat"]),
}


def one(cfg, bench, split, threads: int) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = make_model(cfg, bench)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    w2v = torch.as_tensor(bench.class_embeddings)
    classes = torch.as_tensor(np.unique(split.labels))
    train_epoch(model, split.subset(np.arange(min(256, len(split)))), w2v, classes, opt, cfg,
                torch.device("cpu"), seed=0)  # warm-up (allocator, first-call costs)
    t0 = time.perf_counter()
    train_epoch(model, split, w2v, classes, opt, cfg, torch.device("cpu"), seed=1)
    return len(split) / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    base = config_mod.load(overrides=["data.sizes=real"])
    bench = load_benchmark(base.data)
    split = bench.splits["stage_1_train"]
    split = split.subset(np.arange(min(args.samples, len(split))))
    rates: dict[str, list[float]] = {k: [] for k in SETTINGS}
    for r in range(args.rounds):
        for name, (threads, overrides) in SETTINGS.items():
            cfg = config_mod.load(overrides=["data.sizes=real", *overrides])
            rates[name].append(one(cfg, bench, split, threads))
            print(f"round {r} {name}: {rates[name][-1]:.0f} samples/s", flush=True)
    ref = statistics.median(rates["before: batch 64, 2 threads"])
    lines = [f"CPU: {cpu_name()}; torch {torch.__version__}; {len(split)} samples of real-size UCF "
             f"stage_1_train, T = {base.spiking.num_steps}; median of {args.rounds} round-robin rounds.", "",
             "| setting | samples/s (median) | all rounds | vs before |", "|---|---|---|---|"]
    for name, xs in rates.items():
        med = statistics.median(xs)
        lines.append(f"| {name} | {med:.0f} | {', '.join(f'{x:.0f}' for x in xs)} | {med / ref:.2f}x |")
    print("\n".join(lines))
    out = Path(__file__).resolve().parent / "results" / "quality_throughput.json"
    out.write_text(json.dumps({"cpu": cpu_name(), "samples": len(split), "rates": rates,
                               "command": "python bench/bench_quality_throughput.py " + " ".join(sys.argv[1:])},
                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
