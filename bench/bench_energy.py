"""Energy that pays (issue #17, item 4): HM against the chip's energy per sample, paired over seeds.

    .venv/bin/python bench/bench_energy.py run    [--seeds 0 1 2] [--configs NAME=k=v,k=v ...] [--only NAME ...]
                                                  [--qat-epochs 1] [--set section.key=value ...] [--out FILE]
                                                  [--from-runs DIR]
    .venv/bin/python bench/bench_energy.py report --out FILE [--plot PNG]

Per seed ``k`` (``data.seed = train.seed = k``): one float run by the AVCA protocol (``Trainer``:
stage 1 picks the epoch count and the calibration b on validation, stage 2 retrains), then, from
that same float run, one QAT fine-tuning per energy configuration (``stft_neuro/qat.py``, as
``stft-neuro train --qat --from``; ``train.epochs`` from ``--qat-epochs``, 1 as in the demo).
The energy knobs act in QAT, where the chip's estimate is the deployed run's exact count
(``spiking.energy_budget_uj``: the budget held by a multiplier on the spike counts and payloads;
``spiking.payload_dead_zone``: payloads ``|q| <= k`` not sent; ``spiking.input_weight_density``:
layer 1 pruned to its largest weights; all part of the plan QAT trains for). The configuration
``none`` (no knob: dead zone 0, every weight kept, whatever the recipe's defaults) is the
unconstrained model of the same recipe, which every other configuration is paired with.
``--from-runs DIR`` fine-tunes finished float runs ``DIR/seed<k>`` of the same recipe (e.g. the
quality sweep's) instead of training new ones.

Each QAT run then runs ``stft-neuro simulate --backend reference`` (the closed loop, bit-exact
with Lava ``fixed_pt``) on the whole stage-2 test split and ``stft-neuro report``'s count of it,
so every energy figure is the report's own: the chip, the host, their sum (hybrid), the spiking
branch run as an ANN on the host, and everything on the host. It also records what the branch is
worth (stage-2 test HM with the spiking output zeroed and shuffled across samples,
``stft_neuro/branch_worth.py``): a chip made cheap by being silent carries nothing.

The configurations are a fixed grid, reported whole: nothing here is selected on the test split.

Resumable: each (configuration, seed) row is merged into ``--out`` (default
``bench/results/energy17_<sizes>.json``) as it finishes, under a file lock; a rerun skips the rows
there. Run folders go under ``bench/results/runs/<out stem>/``. The settings (``--set``,
``--qat-epochs``) are stored in the file; a rerun with others refuses to mix them.

``report`` prints the table (mean +- sd over seeds; each configuration's paired HM difference to
``none`` with its 95 % t-interval; chip / ANN; hybrid / all-on-host) and, with ``--plot``, draws
HM against chip energy per sample (every seed a point, the means joined; linear axes from zero).
Energies are ESTIMATES (Loihi per-operation energies, Davies et al. 2018; no Loihi 2 table is
published; host fp32 MACs, Horowitz 2014).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from stft_neuro import config as config_mod
from stft_neuro.baselines.compare import mean_sd, paired_difference
from stft_neuro.errors import UserError
from stft_neuro.machine import cpu_name
from stft_neuro.results_file import update_locked

HERE = Path(__file__).resolve().parent
#: one torch thread: a 2-core machine keeps a core for the rest
DEFAULT_SET = ["train.threads=1"]


#: name -> QAT overrides; "none" is the unconstrained model every other configuration is paired with
CONFIGS = {
    "none": ["spiking.payload_dead_zone=0", "spiking.input_weight_density=1"],
    "budget2.5": ["spiking.energy_budget_uj=2.5"],
    "k64+budget2.5": ["spiking.payload_dead_zone=64", "spiking.energy_budget_uj=2.5"],
    "k96+budget2.5": ["spiking.payload_dead_zone=96", "spiking.energy_budget_uj=2.5"],
    "k112+budget1": ["spiking.payload_dead_zone=112", "spiking.energy_budget_uj=1"],
}


def float_run(seed: int, overrides: list[str], work: Path, bench, from_runs: Path | None = None
              ) -> tuple[Path, dict]:
    """The seed's float run (trained once, resumable) -> (folder, protocol results).

    ``from_runs``: take the finished run ``from_runs/seed<k>`` instead (e.g. the quality sweep's
    runs of the same recipe); refused unless its config is the one ``overrides`` select (up to
    ``config.DEPLOY_ONLY``, which the configurations set for QAT)."""
    from stft_neuro.train import Trainer
    if from_runs is not None:
        from stft_neuro.checkpoint import read_json
        run_dir = from_runs / f"seed{seed}"
        if not (run_dir / "metrics.json").is_file():
            raise UserError(f"--from-runs: {run_dir} is not a finished run folder (no metrics.json)")
        want = config_mod.load(overrides=[*overrides, f"data.seed={seed}", f"train.seed={seed}"]).to_dict()
        have = config_mod.from_run_dict(read_json(run_dir / "config.json", "config")).to_dict()
        def norm(v):
            return list(v) if isinstance(v, (list, tuple)) else v
        diff = sorted(f"{sec}.{k}" for sec in want for k in want[sec]
                      if f"{sec}.{k}" not in {"train.threads", "train.device", *config_mod.DEPLOY_ONLY}
                      and norm(have.get(sec, {}).get(k)) != norm(want[sec][k]))
        if diff:
            raise UserError(f"--from-runs: {run_dir} was trained with another config "
                            f"({', '.join(diff[:4])}); pass the --set it was trained with")
        return run_dir, read_json(run_dir / "metrics.json", "metrics")
    cfg = config_mod.load(overrides=[*overrides, f"data.seed={seed}", f"train.seed={seed}"])
    run_dir = work / "float" / f"seed{seed}"
    return run_dir, Trainer(cfg, bench, run_dir).run(resume=(run_dir / "meta.json").is_file())


def run_one(name: str, qat_set: list[str], seed: int, base: tuple[Path, dict], qat_epochs: int,
            work: Path, bench) -> dict:
    """QAT one configuration from the seed's float run, simulate and count it -> its row."""
    import shutil

    from stft_neuro.qat import qat_finetune
    float_dir, result = base
    qat_dir = work / name / f"seed{seed}"
    shutil.rmtree(qat_dir, ignore_errors=True)   # QAT has no resume: an interrupted one starts over
    t0 = time.perf_counter()
    qat = qat_finetune(float_dir, qat_dir, [f"train.epochs={qat_epochs}", *qat_set], bench=bench)
    qat_s = time.perf_counter() - t0
    row = measure(qat_dir, bench, result["stage1_val"]["bias"], seed)
    return {"seed": seed, "config": name, "qat_set": qat_set, "val_HM": result["stage1_val"]["HM"],
            "float_HM": result["stage2_test"]["HM"], "ptq_HM": qat["ptq"]["HM"],
            "HM": qat["qat"]["HM"], "S": qat["qat"]["S"], "U": qat["qat"]["U"], **row,
            "qat_seconds": qat_s, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}


def measure(run_dir: Path, bench, bias: float, seed: int) -> dict:
    """A trained run's deployed HM, branch worth and the report's energy figures (module doc)."""
    from stft_neuro.branch_worth import branch_worth
    from stft_neuro.checkpoint import load_run
    from stft_neuro.report.cli import report_run_folder
    from stft_neuro.simulate import simulate

    model = load_run(run_dir)[0]
    worth = {k: v["HM"] for k, v in branch_worth(model, bench, 2, bias, seed=seed).items()}
    with tempfile.TemporaryDirectory() as tmp:
        sim = simulate(bundle=None, checkpoint=str(run_dir), backend="reference", out=f"{tmp}/sim")
        rep, _ = report_run_folder(f"{tmp}/sim")
    e = rep["energy"]
    ann = e["ann_all_on_host"]
    rates = {name: layer["firing_rate"] for name, layer in rep["layers"].items() if "firing_rate" in layer}
    return {"deployed_HM": sim["metrics"]["HM"], "worth_HM": worth,
            "chip_uj": e["chip"] / 1e6, "host_uj": e["host"] / 1e6, "hybrid_uj": e["hybrid_total"] / 1e6,
            "ann_uj": ann["spiking_branch_as_ann"] / 1e6, "all_on_host_uj": ann["total_with_host"] / 1e6,
            "chip_over_ann": ann["chip_over_spiking_branch_as_ann"],
            "payloads_per_sample": rep["messages"]["host_to_chip"]["payloads"],
            "firing_rates": rates, "samples": rep["samples"]}


def run(args: argparse.Namespace) -> int:
    from stft_neuro.data import load_benchmark
    overrides = [*DEFAULT_SET, *args.overrides]
    settings = {"overrides": overrides, "qat_epochs": args.qat_epochs,
                "from_runs": str(args.from_runs) if args.from_runs else None}
    base_cfg = config_mod.load(overrides=overrides)
    out = Path(args.out or HERE / "results" / f"energy17_{base_cfg.data.sizes}.json")
    work = HERE / "results" / "runs" / out.stem
    configs = dict(CONFIGS)
    for spec in args.configs or []:
        name, _, sets = spec.partition("=")
        configs[name] = [s for s in sets.split(",") if s]
    if args.only:
        unknown = sorted(set(args.only) - set(configs))
        if unknown:
            raise UserError(f"--only: unknown configuration(s) {', '.join(unknown)} (known: {', '.join(configs)})")
        configs = {n: configs[n] for n in configs if n in args.only or n == "none"}
    if out.is_file():
        stored = json.loads(out.read_text())
        if {k: stored.get(k) for k in settings} != settings:
            raise UserError(f"{out} holds results made with other settings "
                            f"({ {k: stored.get(k) for k in settings} }): use another --out")
    for seed in args.seeds:
        todo = [n for n in configs if not (out.is_file() and str(seed) in
                                           json.loads(out.read_text())["results"].get(n, {}))]
        if not todo:
            continue
        bench = load_benchmark(config_mod.load(overrides=[*overrides, f"data.seed={seed}"]).data)
        base = float_run(seed, overrides, work, bench, args.from_runs)
        for name in todo:
            row = run_one(name, configs[name], seed, base, args.qat_epochs, work, bench)

            def merge(on_disk, name=name, seed=seed, row=row):
                data = on_disk or {**settings, "cpu": cpu_name(), "results": {}}
                data["results"].setdefault(name, {})[str(seed)] = row
                return data
            update_locked(out, merge)
            print(f"{name}, seed {seed}: HM {row['HM']:.2f} (float {row['float_HM']:.2f}), chip "
                  f"{row['chip_uj']:.2f} uJ = {row['chip_over_ann']:.2f} x ANN, hybrid {row['hybrid_uj']:.1f} "
                  f"vs all-on-host {row['all_on_host_uj']:.1f} uJ, shuffled {row['worth_HM']['shuffled']:.2f}",
                  flush=True)
    print(report_text(json.loads(out.read_text())))
    return 0


def report_text(data: dict) -> str:
    res = data["results"]
    ref = {int(s): r["HM"] for s, r in res.get("none", {}).items()}
    lines = [f"settings: --set {' '.join(data['overrides'])}, QAT epochs {data['qat_epochs']}; "
             f"CPU: {data.get('cpu', '?')}", "",
             "| QAT configuration | seeds | float HM | QAT HM | vs none (paired, 95 % CI) | "
             "shuffled - as trained | chip uJ | chip / ANN | hybrid / all-on-host uJ |",
             "|---|---:|---:|---:|---|---:|---:|---:|---|"]
    for b in sorted(res, key=lambda n: (n != "none", res[n][next(iter(res[n]))]["chip_uj"] * -1)):
        rows = res[b]
        seeds = sorted(int(s) for s in rows)

        def col(f, digits=2):
            m, sd = mean_sd([f(rows[str(s)]) for s in seeds])
            return f"{m:.{digits}f} ± {sd:.{digits}f}"
        diff = "—"
        if b != "none" and len(set(seeds) & set(ref)) >= 2:
            both = sorted(set(seeds) & set(ref))
            d = paired_difference({s: rows[str(s)]["HM"] for s in both}, {s: ref[s] for s in both})
            diff = f"{d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}]"
        lines.append(
            f"| {b} | {len(seeds)} | {col(lambda r: r['float_HM'])} | "
            f"{col(lambda r: r['HM'])} | {diff} | "
            f"{col(lambda r: r['worth_HM']['shuffled'] - r['worth_HM']['as_trained'])} | "
            f"{col(lambda r: r['chip_uj'])} | {col(lambda r: r['chip_over_ann'])} | "
            f"{col(lambda r: r['hybrid_uj'], 1)} / {col(lambda r: r['all_on_host_uj'], 1)} |")
    return "\n".join(lines)


def plot(data: dict, path: Path) -> None:
    """HM against chip energy: every (configuration, seed) a point, each seed's points joined by a
    thin line (the pairing), the configurations' means by a thick one; linear axes from zero."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    res = data["results"]
    order = sorted(res, key=lambda n: sum(r["chip_uj"] for r in res[n].values()) / len(res[n]))
    seeds = sorted({s for n in res for s in res[n]}, key=int)
    for s in seeds:
        pts = [(res[n][s]["chip_uj"], res[n][s]["HM"]) for n in order if s in res[n]]
        ax.plot(*zip(*pts), "-o", color="grey", lw=0.6, ms=3, alpha=0.6)
    means = [(sum(r["chip_uj"] for r in res[n].values()) / len(res[n]),
              sum(r["HM"] for r in res[n].values()) / len(res[n]), n) for n in order]
    ax.plot([m[0] for m in means], [m[1] for m in means], "-s", color="k", lw=1.5, ms=5, label="mean over seeds")
    for x, y, n in means:
        ax.annotate(n, (x, y), fontsize=8, xytext=(3, 4), textcoords="offset points")
    ann = next(iter(next(iter(res.values())).values()))["ann_uj"]
    ax.axvline(ann, color="tab:red", ls="--", lw=1)
    ax.axvline(ann / 4, color="tab:red", ls=":", lw=1)
    ax.text(ann, 1, " branch as ANN on host", fontsize=8, color="tab:red")
    ax.text(ann / 4, 1, " 0.25x", fontsize=8, color="tab:red")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("chip energy per sample (uJ, estimate)")
    ax.set_ylabel("stage-2 test HM after QAT")
    ax.set_title("HM vs chip energy (grey: one seed across configurations)", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--configs", nargs="*", default=None, metavar="NAME=k=v,k=v",
                   help="more QAT configurations beside the grid's (CONFIGS)")
    r.add_argument("--only", nargs="+", default=None, metavar="NAME",
                   help="run only these configurations (and 'none', which they are paired with)")
    r.add_argument("--qat-epochs", type=int, default=1)
    r.add_argument("--from-runs", type=Path, default=None, metavar="DIR",
                   help="fine-tune the finished float runs DIR/seed<k> (same recipe: the --set they "
                        "were trained with) instead of training new ones")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--set", dest="overrides", action="append", default=[])
    r.add_argument("--out", default=None)
    p = sub.add_parser("report")
    p.add_argument("--out", required=True)
    p.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args()
    try:
        if args.cmd == "run":
            return run(args)
        data = json.loads(Path(args.out).read_text())
        print(report_text(data))
        if args.plot:
            plot(data, args.plot)
        return 0
    except UserError as exc:
        print(f"bench_energy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
