"""Where temporal evidence pays (issue #16, item 4): HM against the class event's share of the clip.

    .venv/bin/python bench/bench_event_fraction.py run    [--fractions 0.1,0.2 0.3,0.6 0.8,1.0]
                                                          [--seeds 0 1 2] [--variants ...] [--set k=v ...]
    .venv/bin/python bench/bench_event_fraction.py report [--plot FILE] [--write]

A characterisation of the synthetic benchmark, not a tuning target. For each event-fraction range
``lo,hi`` (``data.event_fraction``: each sample's event covers a share drawn uniformly in
``[lo, hi]`` of its seconds; the default benchmark is ``0.3,0.6``) ``run`` calls the issue-16 sweep
(``bench/bench_quality.py run``, the AVCA protocol, ``data.sizes=real``, seed k = data seed =
training seed, so every model is paired on the same data) with ``--set data.event_fraction=lo,hi``
into its own resumable results file ``bench/results/event16_<lo>_<hi>.json``. Default variants:
the validation-selected ridge family, the full STFT and the AVCA-like model; the ridge alone takes
seconds, the trained models minutes per seed (BENCHMARKS.md says which ranges were run for which).

``report`` reads every ``event16_*.json`` (at the default share 0.3-0.6 also the trained models of
the main sweep, ``bench/results/quality16wd_UCF_real.json``, the same benchmark and configuration):
one row per (range, variant) with HM mean +- sd, the
paired difference to the ridge with its 95 % t-interval, and seeds; ``--plot`` draws HM against
the range's midpoint (linear axes from zero), ``--write`` replaces the section of BENCHMARKS.md;
the table and the per-seed numbers also go to ``bench/results/event16_summary.json``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from stft_neuro.baselines.compare import mean_sd, paired_difference

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RIDGE = "linear (ridge family, validation-selected)"
DEFAULT_VARIANTS = [RIDGE, "STFT (full)", "AVCA-like (no spiking, concat)"]
SECTION = "Where temporal evidence pays: HM against the event's share of the clip (issue #16)"


def _file(fraction: str) -> Path:
    lo, hi = (float(x) for x in fraction.split(","))
    return RESULTS / f"event16_{lo:g}_{hi:g}.json"


def run(args: argparse.Namespace) -> int:
    for fraction in args.fractions:
        cmd = [sys.executable, str(HERE / "bench_quality.py"), "run", "--seeds", *map(str, args.seeds),
               "--variants", *args.variants, "--out", str(_file(fraction)),
               "--set", f"data.event_fraction={fraction}"]
        for item in args.overrides:
            cmd += ["--set", item]
        print(f"== event fraction {fraction}", flush=True)
        code = subprocess.call(cmd)
        if code:
            return code
    return 0


#: The default share (``data.event_fraction = 0.3,0.6``) is the main real-size UCF sweep's
#: benchmark, byte-identical: its trained models come from that sweep's results file, whose
#: configuration equals this sweep's at 0.3,0.6 (``main_sweep_matches``).
DEFAULT_SHARE = [0.3, 0.6]
MAIN_SWEEP = RESULTS / "quality16wd_UCF_real.json"


def main_sweep_matches(main: dict, here: dict) -> bool:
    """The main sweep's configuration equals this one's but for keys added to the config after
    it ran, whose values here are what it used: ``data.event_fraction`` (0.3,0.6),
    ``fusion.transformer_dropout`` (0) and ``train.spiking_weight_decay`` (its one weight decay)."""
    import copy
    a, b = copy.deepcopy(main["config"]), copy.deepcopy(here["config"])
    later = {("data", "event_fraction"): DEFAULT_SHARE, ("fusion", "transformer_dropout"): 0.0,
             ("train", "spiking_weight_decay"): a["train"]["weight_decay"]}
    for (sec, key), used in later.items():
        if key not in a[sec]:
            a[sec][key] = used
    from stft_neuro.quality_sweep import same_config
    return same_config(a, b)


def summary() -> list[dict]:
    """Rows ``{fraction, variant, seeds, HM (mean, sd), diff_to_ridge}`` of every results file
    (at the default share, with the main sweep's trained variants that the file lacks)."""
    rows = []
    for path in sorted(RESULTS.glob("event16_*_*.json")):
        data = json.loads(path.read_text())
        fraction = [float(x) for x in data["config"]["data"]["event_fraction"]]
        results = dict(data["results"])
        if fraction == DEFAULT_SHARE and MAIN_SWEEP.is_file():
            main_data = json.loads(MAIN_SWEEP.read_text())
            if main_sweep_matches(main_data, data):
                for variant in ("STFT (spike saliency, ridge readout)", "AVCA-like (no spiking, concat)"):
                    results.setdefault(variant, main_data["results"].get(variant, {}))
        ridge = {int(s): r["HM"] for s, r in results.get(RIDGE, {}).items()}
        for variant, per_seed in results.items():
            hm = {int(s): r["HM"] for s, r in per_seed.items()}
            mean, sd = mean_sd(list(hm.values()))
            row = {"fraction": fraction, "variant": variant, "seeds": sorted(hm), "HM": [mean, sd],
                   "per_seed": hm, "trained_on": sorted({r.get("device", "closed form") for r in per_seed.values()})}
            if variant != RIDGE and len(set(hm) & set(ridge)) >= 2:
                d = paired_difference(hm, ridge)
                row["diff_to_ridge"] = {"n": d.n, "mean": d.mean, "low": d.low, "high": d.high}
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| event share of the clip | model | seeds | HM | minus ridge (paired, 95 % CI) |",
             "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["fraction"], r["variant"] != RIDGE, r["variant"])):
        d = r.get("diff_to_ridge")
        cell = "" if d is None else f"{d['mean']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]"
        lo, hi = r["fraction"]
        lines.append(f"| {lo:g}-{hi:g} | {r['variant']} | {','.join(map(str, r['seeds']))} | "
                     f"{r['HM'][0]:.1f} +- {r['HM'][1]:.1f} | {cell} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for variant in sorted({r["variant"] for r in rows}):
        pts = sorted((sum(r["fraction"]) / 2, r["HM"][0], r["HM"][1]) for r in rows if r["variant"] == variant)
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                    capsize=3, label=variant)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, None)
    ax.set_xlabel("class event's share of the clip (midpoint of the drawn range)")
    ax.set_ylabel("stage-2 test HM (%), mean +- sd over seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(args: argparse.Namespace) -> int:
    rows = summary()
    if not rows:
        print(f"bench_event_fraction: no results in {RESULTS}/event16_*.json (run first)", file=sys.stderr)
        return 1
    text = table(rows) + (
        "\n\nEvery trained row ran on the CPU, one torch thread per run (`train.threads=1`; the "
        "machine line above is the reporting process's). At the default share 0.3-0.6 the trained "
        "rows are the main real-size UCF sweep's (`bench/results/quality16wd_UCF_real.json`, the "
        "same benchmark and configuration, seeds 0-4). Per-seed values: "
        "`bench/results/event16_summary.json`; plot (HM against the share's midpoint, linear axes "
        "from 0): `bench/results/event16.png`.")
    print(text)
    (RESULTS / "event16_summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    if args.plot:
        plot(rows, Path(args.plot))
    if args.write:
        sys.path.insert(0, str(HERE))
        from markdown import replace_section
        replace_section(SECTION, text, "bench/bench_event_fraction.py run && bench/bench_event_fraction.py report --write")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--fractions", nargs="+", default=["0.1,0.2", "0.3,0.6", "0.8,1.0"])
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    r.add_argument("--set", dest="overrides", action="append", default=[])
    p = sub.add_parser("report")
    p.add_argument("--plot", default=None)
    p.add_argument("--write", action="store_true")
    args = ap.parse_args()
    return run(args) if args.cmd == "run" else report(args)


if __name__ == "__main__":
    sys.exit(main())
