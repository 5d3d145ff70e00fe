"""Two CPU training costs, each measured side by side with its fix in one process.

    .venv/bin/python bench/bench_train_speed.py --run RUN_DIR [--batches 10] [--repeats 3]
        [--out bench/results/train_speed.json]
        [--prepare "STFT (spike saliency, ridge readout)" --seed 0 --epochs 11 --set data.dataset=ActivityNet ...]

With ``--prepare VARIANT`` and no ``RUN_DIR`` yet, the state is made first: the quality sweep's
variant (``quality_sweep.VARIANTS``, its ``DEFAULT_SET`` and ``--set``) trained into ``RUN_DIR`` for
``--epochs`` stage-1 epochs, validation included, as training ran before ``flush_denormals``
existed (the bench swaps it for a no-op). The real-size ActivityNet saliency STFT slowed from
epoch 8 on (seed 0: 20 s, then 35, 71, 130 s per epoch).

1. **Subnormal floats.** Resume the run folder ``RUN_DIR`` (a run stopped mid-training: its
   ``last.safetensors`` and ``last_optim.pt``, in the stage it stopped in) and train the same ``--batches`` batches of its
   training split from that same state, alternately with torch's default (subnormals computed, in
   microcode on x86) and inside ``train.flush_denormals`` (flushed to zero, what training uses).
   The state matters: subnormals appear only after Adam's second moments of gradient-starved
   parameters have decayed for some epochs (BENCHMARKS.md, "Training speed").
2. **Class distances.** ``protocol.distances`` (one matrix product) against the pairwise-difference
   form it replaced, on the run's benchmark sizes: its validation samples against its classes, in
   the embedding width of the class table.

Medians over ``--repeats``; the ratio is old / new. One torch thread. The CPU is named beside the
figures (``machine.cpu_name``).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from stft_neuro import config as config_mod
from stft_neuro import protocol
from stft_neuro import train as train_mod
from stft_neuro.checkpoint import read_json
from stft_neuro.config import from_run_dict
from stft_neuro.data import load_benchmark
from stft_neuro.data.benchmark import Split
from stft_neuro.machine import cpu_name
from stft_neuro.train import Trainer, train_epoch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_reference import median_time  # noqa: E402  (one warm-up call, then the median)


def pairwise_difference_distances(x: np.ndarray, t: np.ndarray, chunk: int = 1 << 24) -> np.ndarray:
    """The form ``protocol.distances`` had before: every (sample, class) difference, in row chunks."""
    out = np.empty((x.shape[0], t.shape[0]))
    rows = max(1, chunk // (t.shape[0] * t.shape[1]))
    for i in range(0, x.shape[0], rows):
        diff = x[i:i + rows, None, :] - t[None, :, :]
        out[i:i + rows] = np.sqrt(np.einsum("nce,nce->nc", diff, diff))
    return out


def _subnormal_product() -> float:
    return (torch.tensor([torch.finfo(torch.float32).tiny]) * torch.tensor([0.01])).item()


def subnormal_count(opt: torch.optim.Optimizer) -> int:
    """Nonzero entries of the optimizer state below float32's smallest normal number."""
    tiny = torch.finfo(torch.float32).tiny
    return sum(int(((v != 0) & (v.abs() < tiny)).sum()) for s in opt.state.values()
               for v in s.values() if torch.is_tensor(v) and v.is_floating_point() and v.dim() > 0)


class _Stop(Exception):
    """Raised by ``prepare``'s epoch hook once the state has trained its ``--epochs``."""


def prepare(run: Path, variant: str, seed: int, epochs: int, sets: list[str]) -> None:
    """Train ``variant`` into ``run`` for ``epochs`` stage-1 epochs with subnormals computed (the
    training before ``flush_denormals``), leaving a resume point."""
    from stft_neuro.quality_sweep import DEFAULT_SET, VARIANTS
    if VARIANTS.get(variant, None) is None:
        raise SystemExit(f"error: --prepare {variant!r}: not a trained variant of the quality sweep")
    cfg = config_mod.load(overrides=[*DEFAULT_SET, *sets, *VARIANTS[variant],
                                     f"data.seed={seed}", f"train.seed={seed}"])
    bench = load_benchmark(cfg.data)

    def stop(row: dict) -> None:
        print(f"epoch {row['epoch']}: {row['seconds']:.1f} s training", flush=True)
        if row["epoch"] >= epochs:
            raise _Stop

    kept = train_mod.flush_denormals
    train_mod.flush_denormals = contextlib.nullcontext  # the training as it was: subnormals computed
    try:
        with contextlib.suppress(_Stop):
            train_mod.Trainer(cfg, bench, run, on_epoch=stop).run(resume=(run / "meta.json").is_file())
    finally:
        train_mod.flush_denormals = kept


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a run folder stopped mid-training (resume point)")
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench/results/train_speed.json")
    ap.add_argument("--prepare", metavar="VARIANT", default=None,
                    help="first train this quality-sweep variant into --run (subnormals computed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=11, help="stage-1 epochs that --prepare trains")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    torch.set_num_threads(1)
    run = Path(args.run)
    if args.prepare is not None:
        prepare(run, args.prepare, args.seed, args.epochs, args.sets)
    if not (run / "last_optim.pt").is_file():
        print(f"error: {run}: no last_optim.pt (a run stopped mid-training is needed)", file=sys.stderr)
        return 2
    cfg = from_run_dict(read_json(run / "config.json", "config"))
    bench = load_benchmark(cfg.data)
    trainer = Trainer(cfg, bench, run)
    stage = read_json(run / "meta.json", "metadata")["progress"]["stage"]
    model, opt, sched = trainer._fresh(stage)
    progress = trainer._restore(model, opt, sched)
    split = bench.splits[f"stage_{stage}_train"]
    n = args.batches * cfg.train.batch_size
    sub = Split(**{f.name: getattr(split, f.name)[:n] if isinstance(getattr(split, f.name), np.ndarray)
                   else getattr(split, f.name) for f in dataclasses.fields(split)})
    classes = torch.as_tensor(np.unique(split.labels))
    state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    subnormals = subnormal_count(opt)

    def epoch(flush: bool) -> None:
        model.load_state_dict(state[0])
        opt.load_state_dict(state[1])
        kept = train_mod.flush_denormals
        if not flush:  # train_epoch flushes by itself: swap that for a no-op
            train_mod.flush_denormals = contextlib.nullcontext
        try:
            train_epoch(model, sub, trainer.w2v, classes, opt, cfg, trainer.device, 0)
        finally:
            train_mod.flush_denormals = kept
        assert _subnormal_product() > 0.0, "flushing leaked out of training"

    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both alike
        for flush in (False, True):
            t0 = time.perf_counter()
            epoch(flush)
            times[flush].append(time.perf_counter() - t0)
    kept, flushed = statistics.median(times[False]), statistics.median(times[True])

    n_val = sum(len(bench.splits[k].labels) for k in ("stage_1_val_seen", "stage_1_val_unseen"))
    table = np.asarray(bench.class_embeddings, dtype=np.float64)
    x = np.random.default_rng(0).normal(size=(n_val, table.shape[1]))
    old = median_time(lambda: pairwise_difference_distances(x, table), args.repeats)
    new = median_time(lambda: protocol.distances(x, table), args.repeats)
    agree = float(np.abs(pairwise_difference_distances(x, table) - protocol.distances(x, table)).max())

    result = {"cpu": cpu_name(), "run": str(run), "resumed_at": {"stage": progress.stage, "epoch": progress.epoch},
              "optimizer_subnormals": subnormals, "batches": args.batches, "batch_size": cfg.train.batch_size,
              "train_s": {"subnormals_kept": kept, "flushed": flushed, "ratio": kept / flushed},
              "distances": {"shape": [n_val, *table.shape], "pairwise_s": old, "matmul_s": new,
                            "ratio": old / new, "max_abs_difference": agree}}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{cpu_name()}\nresumed at stage {progress.stage} epoch {progress.epoch}, "
          f"{subnormals:,} subnormal optimizer entries")
    print(f"{args.batches} training batches: subnormals kept {kept:.2f} s, flushed {flushed:.2f} s "
          f"({kept / flushed:.1f}x)")
    print(f"distances {n_val} x {table.shape[0]} x {table.shape[1]}: pairwise {old:.3f} s, "
          f"one matmul {new:.3f} s ({old / new:.1f}x), max |difference| {agree:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
