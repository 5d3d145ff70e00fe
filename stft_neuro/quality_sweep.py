"""Rankable model quality (issue #16): the full STFT against the strongest baselines, paired over seeds.

The sweep behind ``bench/bench_quality.py`` (a thin command-line entry point), kept in the package
so that its tests import it as a module rather than through ``sys.path``::

    .venv/bin/python bench/bench_quality.py run    [--seeds 0 1 2 3 4] [--variants ...] [--set k=v ...]
                                                   [--ray [ADDRESS] [--ray-workers N]]
    .venv/bin/python bench/bench_quality.py report [--out FILE] [--write]

``run`` trains every (variant, seed) by the AVCA protocol (stage 1 picks the epoch count and the
calibration b on validation; stage 2 retrains and tests at that b) on the synthetic benchmark with
``data.sizes=real`` by default (the real UCF-GZSL per-class sample counts). Seed ``k`` sets both
``data.seed`` and ``train.seed``, so every variant is paired with the full model on the same data.

Variants (``VARIANTS``): two ridge families whose member is chosen on stage-1 validation
(``stft_neuro/baselines/ridge.py``: ``FAMILY``, issue #16's 24 members, and ``EXTENDED_FAMILY``);
the full STFT with the real-size recipe (``RECIPE``, what ``data.sizes=real`` selects); the
AVCA-like model with the same recipe; the full STFT without its spiking branch. For the full STFT
the row also records what the spiking branch is worth on the test split: HM with its output zeroed
and shuffled across samples (``stft_neuro/branch_worth.py``).

Resumable: each finished (variant, seed) is written at once to the results JSON (``--out``,
default ``bench/results/quality16_<dataset>_<sizes>.json``), and a rerun with the same settings
skips those; a run cut off mid-training resumes from its last epoch (run folders under ``--work``).
Runs go in priority order: the ridge family, the full STFT and the AVCA-like model on every seed
first, then the rest, so that a sweep stopped early still has the paired comparison that matters
most. The settings that define the benchmark (overrides, seeds' meaning) are stored in the file; a
rerun with different overrides refuses to mix them.

``report`` prints the markdown table: S/U/HM/ZSL mean +- sd over seeds, each variant's paired HM
difference to the full STFT with its 95% t-interval (``stft_neuro.baselines.compare``), chance,
the median wall time per run, and the spiking branch's worth; with ``--write`` it also replaces the
section of BENCHMARKS.md. The issue #11 table (``bench/results/quality_UCF_real.json``) was made by
this script's earlier variant list (git history) and is kept as it was.
With ``--ray`` every (variant, seed) is one Ray task (``stft_neuro/shard.py``; a local Ray
with one worker per core, or the cluster at ADDRESS), recorded in the same file as it finishes.
Run it under ``nohup`` for the background; ``train.threads=1`` (the default here) keeps one core
free on a 2-core machine. Two processes on different ``--seeds`` may share one results file (each
write merges under a file lock).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from stft_neuro import config as config_mod
from stft_neuro.baselines import avca_like, ridge
from stft_neuro.baselines.compare import mean_sd, paired_difference
from stft_neuro.data import load_benchmark
from stft_neuro.errors import UserError
from stft_neuro.machine import cpu_name
from stft_neuro.results_file import update_locked

REFERENCE = "STFT (full)"
MLP = "fusion.text_projection=mlp"
LINEAR = "fusion.text_projection=linear"
#: issue #16's real-size recipe, chosen on stage-1 validation (seed 0; see BENCHMARKS.md): the
#: linear text projection, the centred unit-normalised word table, and skip paths from both the
#: transformer and the spiking branch; ``data.sizes=real`` selects it by default (config.RECIPES),
#: and since the second sweep also weight decay 1e-3, which that sweep passes with ``--set``.
RECIPE = [LINEAR, "fusion.word_geometry=centred_unit", "fusion.skip=both"]
#: The paper's chip (``SpikingConfig``'s defaults: three LIF layers read as a class code, TSF into
#: the fusion, dynamic thresholds) with the trained readout: what the STFT rows before the saliency
#: recipe ran, pinned because ``data.sizes=real`` now selects the saliency chip.
PAPER_CHIP = ["spiking.saliency=0", "fusion.readout=trained", "spiking.hidden=256,256,128", "spiking.num_steps=10",
              "spiking.du=0.25", "spiking.dv=0.1", "spiking.init=default", "spiking.dynamic_threshold=true"]
#: issue #16's spike-driven saliency recipe: what ``data.sizes=real`` selects
#: (``config.RECIPE_CHIPS["real"]``, listed so that the rows say what they ran).
SALIENCY_RECIPE = [f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else str(v).lower() if isinstance(v, bool) else v}"
                   for k, v in config_mod.RECIPE_CHIPS["real"].items()]
SALIENCY = "STFT (spike saliency, ridge readout)"
#: the AVCA-like model with the saliency recipe's ridge readout: also the saliency STFT retrained
#: without its chip (no chip means no GLP, TSF or Tucker fusion; see ``baselines/avca_like.py``)
SALIENCY_NO_SPIKING = "AVCA-like + ridge readout (saliency STFT without its chip)"
RIDGE_FAMILY = "linear (ridge family, validation-selected)"
RIDGE_EXTENDED = "linear (extended ridge family, validation-selected)"
AVCA_LIKE = "AVCA-like (no spiking, concat)"
NO_SPIKING = "STFT without the spiking branch"
#: the closed-form baselines: variant name -> the ridge family it selects from
RIDGES = {RIDGE_FAMILY: ridge.FAMILY, RIDGE_EXTENDED: ridge.EXTENDED_FAMILY}
# name -> config overrides (None: a closed-form ridge family, no training). Priority order.
VARIANTS: dict[str, list[str] | None] = {
    RIDGE_FAMILY: None,
    RIDGE_EXTENDED: None,
    REFERENCE: [*RECIPE, *PAPER_CHIP],
    AVCA_LIKE: [*RECIPE, *PAPER_CHIP, *avca_like.OVERRIDES],
    NO_SPIKING: [*RECIPE, *PAPER_CHIP, "spiking.enabled=false"],
    SALIENCY: [*RECIPE, *SALIENCY_RECIPE],
    SALIENCY_NO_SPIKING: [*RECIPE, *SALIENCY_RECIPE, *avca_like.OVERRIDES],
}
#: the model each variant's paired HM difference is taken against (default: the full STFT).
BASE: dict[str, str] = {SALIENCY_NO_SPIKING: SALIENCY}
TIER_1 = (RIDGE_FAMILY, REFERENCE, AVCA_LIKE)
METRICS = ("S", "U", "HM", "ZSL")
DEFAULT_SET = ["data.sizes=real", "train.threads=1"]
#: The repository's bench/ folder: the default home of the results files and run folders.
HERE = Path(__file__).resolve().parents[1] / "bench"


def _record(path: Path, data: dict, name: str, seed: int, row: dict) -> dict:
    """Add one result to the file under an exclusive lock, merging with what other processes
    (e.g. a second sweep on other seeds) wrote since we read it; returns the merged data."""
    def merge(on_disk: dict | None) -> dict:
        for variant, rows in (on_disk or {"results": {}})["results"].items():
            for key, r in rows.items():
                data["results"].setdefault(variant, {}).setdefault(key, r)
        data["results"].setdefault(name, {})[str(seed)] = row
        return data
    return update_locked(path, merge)


def _pinned() -> frozenset[str]:
    """``section.key`` named by every trained variant: the base config's value never reaches a run."""
    named = [{o.split("=")[0].strip() for o in v} for v in VARIANTS.values() if v is not None]
    return frozenset.intersection(*map(frozenset, named))


PINNED = _pinned()


def same_config(stored: dict, now: dict) -> bool:
    """True when ``now`` is the configuration ``stored`` describes: equal on every key that is not
    pinned by every trained variant (``PINNED``: the chip keys, which each variant names) or acts
    only on the deployed chip (``config.DEPLOY_ONLY``: the sweep tests float runs), and
    any key added to the code since then holds its default (new switches default to the old
    behaviour, so results made before they existed stay valid), or holds the value that
    ``config.from_run_dict`` gives a stored run lacking it (``train.spiking_weight_decay``: the
    stored ``train.weight_decay``, which then decayed every parameter alike)."""
    defaults = config_mod.Config().to_dict()
    legacy = config_mod.from_run_dict(stored).to_dict()
    for section, values in now.items():
        old = stored.get(section, {})
        for key, value in values.items():
            if f"{section}.{key}" in PINNED | config_mod.DEPLOY_ONLY:
                continue
            if key not in old and key in legacy.get(section, {}) and legacy[section][key] != defaults[section][key]:
                old = {**old, key: legacy[section][key]}
            if key in old:
                if old[key] != value and not (isinstance(value, (list, tuple)) and list(old[key]) == list(value)):
                    return False
            elif value != defaults[section][key]:
                return False
    return True


def order(variants: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """Tier-1 variants (ridge, full, AVCA-like) over all seeds, then the rest over all seeds."""
    first = [(v, s) for s in seeds for v in variants if v in TIER_1]
    return first + [(v, s) for s in seeds for v in variants if v not in TIER_1]


def run(args: argparse.Namespace) -> int:
    overrides = [*DEFAULT_SET, *args.overrides]
    base = config_mod.load(overrides=overrides)
    out = Path(args.out or HERE / "results" / f"quality16_{base.data.dataset}_{base.data.sizes}.json")
    work = Path(args.work or HERE / "results" / "runs" / out.stem)
    fresh = {"overrides": overrides, "config": base.to_dict(), "results": {}}
    data = json.loads(out.read_text()) if out.is_file() else fresh
    if data["overrides"] != overrides or not same_config(data["config"], base.to_dict()):
        raise UserError(f"{out} holds results made with another configuration (--set {data['overrides']}, "
                        "or changed defaults): use another --out")
    data.setdefault("cpu", cpu_name())
    if args.ray is not None:
        data = _run_on_ray(args, order(args.variants, args.seeds), overrides, work, out, data)
        print(report_text(data, base))
        return 0
    bench_cache: dict[int, object] = {}
    for name, seed in order(args.variants, args.seeds):
        if out.is_file():  # another process may have finished it meanwhile
            data["results"] = {**json.loads(out.read_text())["results"]}
        if str(seed) in data["results"].get(name, {}):
            continue
        if seed not in bench_cache:
            bench_cache.clear()  # one benchmark in memory at a time (real-size UCF: ~0.5 GB)
            t0 = time.perf_counter()
            bench_cache[seed] = load_benchmark(config_mod.load(overrides=[*overrides, f"data.seed={seed}"]).data)
            print(f"seed {seed}: benchmark generated in {time.perf_counter() - t0:.1f} s", flush=True)
        bench = bench_cache[seed]
        data.setdefault("chance", chance(bench))
        row = run_pair(name, seed, overrides, work, bench)
        data = _record(out, data, name, seed, row)
        _print_row(name, seed, row)
    print(report_text(data, base))
    return 0


def run_pair(name: str, seed: int, overrides: list[str], work: Path, bench) -> dict:
    """Train (or fit, for ridge) one (variant, seed) by the protocol on ``bench`` (generated with
    ``data.seed = seed``); returns its results row. The body of the sweep, run in this process or,
    with ``--ray``, in a Ray worker (:func:`_pair_task`); run folders (resume points) go under ``work``."""
    cfg = config_mod.load(overrides=[*overrides, *(VARIANTS[name] or []),
                                     f"data.seed={seed}", f"train.seed={seed}"])
    t0 = time.perf_counter()
    worth = None
    if VARIANTS[name] is None:
        result = ridge.select_and_run(bench, RIDGES[name])
        history: list[dict] = []
        device = "cpu"  # numpy, closed form
    else:
        from stft_neuro.train import Trainer, device_label
        device = device_label(cfg.train.device)
        run_dir = work / name.replace(" ", "_").replace("/", "_") / f"seed{seed}"
        result = Trainer(cfg, bench, run_dir).run(resume=(run_dir / "meta.json").is_file())
        history = json.loads((run_dir / "meta.json").read_text())["progress"]["history"]
        if cfg.spiking.enabled:
            from stft_neuro.branch_worth import branch_worth
            from stft_neuro.checkpoint import load_run
            model = load_run(run_dir)[0]
            worth = {k: v["HM"] for k, v in
                     branch_worth(model, bench, 2, result["stage1_val"]["bias"], seed=seed).items()}
    seconds = time.perf_counter() - t0
    rates = sorted(r["samples_per_s"] for r in history)
    # epoch_seconds: training epochs only (both stages), summed from the run's history, so it
    # is right for a run resumed after a stop (``seconds`` counts only this process's part).
    row = {**result["stage2_test"], "seed": seed, "seconds": seconds,
           "epoch_seconds": sum(r["seconds"] for r in history) if history else seconds,
           "best_epoch": result["stage1_val"]["best_epoch"], "val_HM": result["stage1_val"]["HM"],
           "median_samples_per_s": rates[len(rates) // 2] if rates else None,
           "device": device,
           "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    if worth is not None:
        row["worth"] = worth  # stage-2 test HM as trained / spiking output zeroed / shuffled
    if "chosen" in result:
        row["chosen"] = result["chosen"]
    return row


def _print_row(name: str, seed: int, row: dict) -> None:
    seconds = row["seconds"]
    print(f"{name:34s} seed {seed}: " + " ".join(f"{k} {row[k]:5.1f}" for k in METRICS) +
          f"  ({seconds:.0f} s, best epoch {row['best_epoch']})", flush=True)


def _pair_task(shared: tuple[list[str], str], shard) -> tuple[dict, dict]:
    """One (variant, seed) as a Ray task (``run --ray``): it generates its own benchmark for the
    pair's seed (``shard.seed``), then :func:`run_pair`; returns (row, :func:`chance` of the benchmark)."""
    overrides, work = shared
    name, seed = shard.payload
    bench = load_benchmark(config_mod.load(overrides=[*overrides, f"data.seed={seed}"]).data)
    return run_pair(name, seed, overrides, Path(work), bench), chance(bench)


def _run_on_ray(args: argparse.Namespace, pairs: list[tuple[str, int]], overrides: list[str],
                work: Path, out: Path, data: dict) -> dict:
    """``run --ray [ADDRESS]``: every (variant, seed) not yet in the results file is one Ray task
    (``train.threads`` cores each, 1 by default; stft_neuro/shard.py), recorded in the file as it
    finishes (the same format, merged under the lock), so an interrupted sweep resumes as without
    Ray. A pair that fails after Ray's retries ends the sweep with one line naming it; what finished
    before is kept. Run folders go under ``--work`` on the worker's machine (on a cluster, a shared
    path makes them resumable from any node)."""
    from stft_neuro import shard as shard_mod

    shard_mod.require_ray()  # a clear error without Ray; workers import this module
    done = json.loads(out.read_text())["results"] if out.is_file() else data["results"]
    todo = [(name, seed) for name, seed in pairs if str(seed) not in done.get(name, {})]
    shards = [shard_mod.Shard(index=i, seed=seed, label=f"{name}, seed {seed}", payload=(name, seed))
              for i, (name, seed) in enumerate(todo)]
    threads = config_mod.load(overrides=overrides).train.threads or 1

    def record(shard, value) -> None:
        nonlocal data
        row, ch = value
        name, seed = shard.payload
        data.setdefault("chance", ch)
        data = _record(out, data, name, seed, row)
        _print_row(name, seed, row)

    if shards:
        with shard_mod.connect(args.ray, args.ray_workers) as ray_desc:
            print(f"Ray ({args.ray}): {ray_desc['workers']} cores, {len(shards)} runs of {threads} "
                  "thread(s) each", flush=True)
            shard_mod.run_shards(_pair_task, shards, shared=(overrides, str(work)), num_cpus=threads,
                                 on_result=record)
    if out.is_file():
        data["results"] = json.loads(out.read_text())["results"]
    return data


def chance(bench) -> dict[str, float]:
    """Expected metrics of uniform guessing: 1/C with all classes as candidates, 1/|unseen| for ZSL."""
    c = len(bench.seen(2)) + len(bench.unseen(2))
    return {"S": 100.0 / c, "U": 100.0 / c, "HM": 100.0 / c, "ZSL": 100.0 / len(bench.unseen(2))}


def _diff_cell(mine: dict[int, float], ref: dict[int, float]) -> str:
    try:
        d = paired_difference(mine, ref)
    except UserError:
        common = sorted(set(mine) & set(ref))
        return (f"{mine[common[0]] - ref[common[0]]:+.1f} (n=1, seed {common[0]}: no CI)"
                if common else "n/a (no paired seed)")
    return f"{d.mean:+.1f} [{d.low:+.1f}, {d.high:+.1f}] (n={d.n})" + (" *" if d.separated else "")


def report_text(data: dict, base, reference: str = REFERENCE) -> str:
    """The markdown table; paired HM differences (and the branch's worth) against ``reference``
    (``report --base``; a variant's own ``BASE`` entry wins)."""
    results: dict[str, dict[str, dict]] = data["results"]
    ch = data.get("chance")
    seeds = sorted({int(s) for rows in results.values() for s in rows})
    lines = [f"Synthetic {base.data.dataset} benchmark, real class split and word2vec, "
             f"data.sizes={base.data.sizes}; seeds {', '.join(map(str, seeds))} (seed k = data.seed "
             f"= train.seed, so each variant is paired with the full model on the same data); "
             f"{base.train.epochs} stage-1 epochs, stage 2 retrains for the best stage-1 epoch count; "
             f"batch {base.train.batch_size}, lr {base.train.lr:g}. CPU: {data.get('cpu', '?')}.", "",
             "| variant | seeds | S | U | HM | ZSL | HM - paired base (95% CI) | training s / run (median) | trained on |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in VARIANTS:
        rows = results.get(name)
        if not rows:
            continue
        cells = []
        for k in METRICS:
            m, sd = mean_sd([r[k] for r in rows.values()])
            cells.append(f"{m:.1f} ± {sd:.1f}")
        ref_name = BASE.get(name, reference)
        ref = {int(s): r["HM"] for s, r in results.get(ref_name, {}).items()}
        diff = "—" if name == reference else _diff_cell({int(s): r["HM"] for s, r in rows.items()}, ref)
        secs = sorted(r.get("epoch_seconds", r["seconds"]) for r in rows.values())
        where = ", ".join(f"{dev} ({n})" for dev, n in sorted(
            Counter(r.get("device", "cpu") for r in rows.values()).items()))
        lines.append(f"| {name} | {len(rows)} | " + " | ".join(cells) + f" | {diff} | {secs[len(secs) // 2]:.0f} | {where} |")
    if ch is not None:
        lines.append("| chance (uniform guess) | — | " + " | ".join(f"{ch[k]:.1f}" for k in METRICS) + " | — | — | — |")
    extra = [o for o in data.get("overrides", []) if o not in DEFAULT_SET]
    lines += ["", f"\\* the 95% t-interval of the paired HM difference excludes 0. Base: {reference} "
              f"({' '.join('`' + o + '`' for o in [*(VARIANTS[reference] or []), *extra])}"
              + "".join(f"; {k} against {v}" for k, v in BASE.items() if k in results and v != reference)
              + "). The ridge rows choose "
              "their member on stage-1 validation HM per seed (chosen: "
              + "; ".join(f"{name}: " + ", ".join(f"{c} x{n}" for c, n in Counter(
                  r.get("chosen", "?") for r in results[name].values()).most_common())
                          for name in RIDGES if results.get(name)) + ")."]
    worth = {int(s): r["worth"] for s, r in results.get(reference, {}).items() if "worth" in r}
    if worth:
        as_trained = {s: w["as_trained"] for s, w in worth.items()}
        lines += ["", f"What the spiking branch is worth to the prediction of {reference} (stage-2 test HM at "
                  "the run's b; `stft_neuro/branch_worth.py`):", "",
                  "| spiking output at test | HM | HM - as trained (95% CI) |", "|---|---|---|"]
        for key, label in (("as_trained", "as trained"), ("shuffled", "shuffled across samples"),
                           ("zeroed", "zeroed")):
            vals = {s: w[key] for s, w in worth.items()}
            m, sd = mean_sd(list(vals.values()))
            lines.append(f"| {label} | {m:.1f} ± {sd:.1f} | "
                         + ("—" if key == "as_trained" else _diff_cell(vals, as_trained)) + " |")
    return "\n".join(lines)


def report(args: argparse.Namespace) -> int:
    out = Path(args.out or HERE / "results" / "quality16_UCF_real.json")
    if not out.is_file():
        raise UserError(f"no results file {out}: run `bench/bench_quality.py run` first")
    data = json.loads(out.read_text())
    base = config_mod.load(overrides=data["overrides"])
    if args.base not in VARIANTS:
        raise UserError(f"report --base {args.base!r}: not a variant ({', '.join(VARIANTS)})")
    text = report_text(data, base, args.base)
    print(text)
    if args.write:
        from markdown import replace_section
        cmd = "python bench/bench_quality.py run " + " ".join(f"--set {o}" for o in data["overrides"]
                                                             if o not in DEFAULT_SET) + f" --out {os.path.relpath(out, HERE.parent)}"
        cmd += (f" && python bench/bench_quality.py report --out {os.path.relpath(out, HERE.parent)}"
                + (f" --base '{args.base}'" if args.base != REFERENCE else "") + " --write")
        replace_section(args.section or f"Model quality, real-size synthetic {base.data.dataset} (issue #16)",
                        text, cmd.strip())
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    r.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME")
    r.add_argument("--set", dest="overrides", action="append", default=[])
    r.add_argument("--out", default=None)
    r.add_argument("--work", default=None, help="run folders (resume points); default bench/results/runs/<out>")
    r.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="one Ray task per (variant, seed) (needs stft-neuro[ray]): alone, a local Ray "
                        "with one worker per core; with ADDRESS (auto, HOST:6379) an existing cluster")
    r.add_argument("--ray-workers", type=int, metavar="N", help="cores of the local Ray (default: all)")
    p = sub.add_parser("report")
    p.add_argument("--out", default=None)
    p.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    p.add_argument("--section", default=None, help="the BENCHMARKS.md heading to write")
    p.add_argument("--base", default=REFERENCE, metavar="NAME",
                   help=f"the variant the paired differences are taken against (default: {REFERENCE})")
    args = ap.parse_args()
    try:
        return run(args) if args.cmd == "run" else report(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
