"""What real-size synthetic benchmarks cost here: sample counts, generation time, memory, and the
training time of one AVCA-protocol run estimated from a measured training throughput.

    .venv/bin/python bench/bench_quality_sizes.py [--datasets UCF ActivityNet VGGSound] [--repeats 3]
                                                   [--rate SAMPLES_PER_S] [--epochs 20]

For each dataset: the per-split sample counts of the real split's CSV files (``data.sizes=real``),
the wall time of ``load_benchmark`` (median of ``--repeats``; audio and visual 512-d, up to 10 s),
the feature memory (float32), and an estimate of one run's training time:
``epochs * N(stage_1_train) / rate + epochs * N(stage 1 val) / (3 rate) + epochs * N(stage_2_train) / rate``
(stage 2 retrains for the best stage-1 epoch count; the estimate takes the worst case, all epochs;
evaluation is forward-only, assumed 3x faster than a training step: the backward pass costs about
twice the forward's FLOPs).
``--rate`` defaults to the median samples/s of the full STFT's epochs in
``bench/results/quality_UCF_real.json`` (measured by bench_quality.py on this machine).
A dataset whose split lacks a per-sample CSV (VGGSound: ``stage_1_train.csv``) reports the
DataError and the counts it does have.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

from stft_neuro.machine import cpu_name  # noqa: E402

from stft_neuro.config import DataConfig  # noqa: E402
from stft_neuro.data import SPLIT_NAMES, load_benchmark  # noqa: E402
from stft_neuro.data.splits import resolve_root  # noqa: E402
from stft_neuro.errors import DataError  # noqa: E402

EVAL_SPEEDUP = 3.0  # forward-only evaluation vs a training step (assumption, see module doc)


def csv_rows(root: Path) -> dict[str, int | None]:
    folder = root / "class-split" / "main_split"
    out: dict[str, int | None] = {}
    for s in SPLIT_NAMES:
        path = folder / f"{s}.csv"
        if path.is_file():
            with path.open(newline="", encoding="utf-8") as f:
                out[s] = sum(1 for _ in csv.DictReader(f))
        else:
            out[s] = None
    return out


def default_rate() -> float | None:
    path = Path(__file__).resolve().parent / "results" / "quality_UCF_real.json"
    if not path.is_file():
        return None
    rows = json.loads(path.read_text())["results"].get("STFT (full)", {}).values()
    rates = [r["median_samples_per_s"] for r in rows if r.get("median_samples_per_s")]
    return statistics.median(rates) if rates else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["UCF", "ActivityNet", "VGGSound"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rate", type=float, default=None)
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    rate = args.rate or default_rate()
    lines = [f"CPU: {cpu_name()}. Training rate for the estimate: "
             + (f"{rate:.0f} samples/s (full STFT, 1 thread)" if rate else "unknown (no --rate, no sweep results)")
             + f"; {args.epochs} stage-1 epochs.", "",
             "| dataset | samples per split (CSV rows) | generation (s, median) | features (GB) | "
             "one run, estimated (h) |", "|---|---|---|---|---|"]
    for ds in args.datasets:
        cfg = DataConfig(dataset=ds, sizes="real")
        root = resolve_root(cfg)
        if root is None:
            lines.append(f"| {ds} | no split folder | — | — | — |")
            continue
        rows = csv_rows(root)
        counts = " / ".join("?" if rows[s] is None else f"{rows[s]:,}" for s in SPLIT_NAMES)
        try:
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                bench = load_benchmark(cfg)
                times.append(time.perf_counter() - t0)
                gb = sum(sp.audio.nbytes + sp.visual.nbytes for sp in bench.splits.values()) / 1e9
                n = {s: len(bench.splits[s]) for s in SPLIT_NAMES}
                del bench
        except DataError as exc:
            lines.append(f"| {ds} | {counts} | not generated: {exc} | — | — |")
            continue
        est = "—"
        if rate:
            val = n["stage_1_val_seen"] + n["stage_1_val_unseen"]
            sec = args.epochs * (n["stage_1_train"] / rate + val / (EVAL_SPEEDUP * rate) + n["stage_2_train"] / rate)
            est = f"{sec / 3600:.2f}"
        lines.append(f"| {ds} | {counts} | {statistics.median(times):.1f} | {gb:.2f} | {est} |")
        print(f"{ds}: generation {', '.join(f'{t:.1f}' for t in times)} s", flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
