"""What the netx plan that ``stft-neuro export --target lava`` derives costs (issue 18), per seed.

For each run folder given (a float run ``RUN`` with its 1-epoch QAT run ``RUN/qat``, and
optionally ``RUN/qatnx``, the same QAT with ``spiking.netx_compatible=true``), with the functions
``export`` itself uses (``stft_neuro/export/netx_plan.py``):

- float run: its plan after calibration (PTQ) vs the netx plan derived from it;
- QAT run: its own plan vs the netx plan derived from its float parameters (what export writes);
- option (a), "quantize for netx by default": the QAT run vs the QAT run trained for netx.

S/U/HM on the stage-2 test split, host = the run's torch model, chip = the reference simulator
of each plan in the closed loop (dynamic thresholds), at the run's calibration b. Weights zeroed
and threshold coarsening per layer. Results: ``bench/results/netx_cost.json`` (merged per run).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_netx_cost.py RUN [RUN ...]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stft_neuro.results_file import update_locked  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "netx_cost.json"


def measure(run: Path) -> dict:
    from stft_neuro.checkpoint import load_run
    from stft_neuro.data import load_benchmark
    from stft_neuro.export import netx_plan as NP
    from stft_neuro.qat import calibrate
    from stft_neuro.machine import cpu_description

    out = {"run": str(run), "cpu": cpu_description(), "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    bench = None
    for kind, folder in (("float", run), ("qat", run / "qat"), ("qatnx", run / "qatnx")):
        if not (folder / "model.safetensors").is_file():
            continue
        model, cfg, meta = load_run(folder)
        bench = bench or load_benchmark(cfg.data)
        if not meta.get("deploy"):
            calibrate(model, bench.splits["stage_2_train"], torch.device("cpu"))
        model = model.cpu().eval()
        plan, _ = model.spiking.deployment_plan()
        bias = float(meta["progress"]["best_bias"])
        row = {"seed": cfg.train.seed, "netx_problem": NP.netx_problem(plan)}
        plans = {"run_plan": plan}
        if row["netx_problem"] is not None:
            derived, _ = NP.derive_netx_plan(model.spiking.chip)
            plans["netx_plan"] = derived
            row["static"] = NP.static_cost(plan, derived)
        row["hm"] = NP.hm_cost(model, bench, bias, plans)
        out[kind] = row
    return out


def _ci(diffs: list[float]) -> str:
    """mean [95 % t interval] of paired differences."""
    import numpy as np
    from scipy import stats
    d = np.asarray(diffs, dtype=np.float64)
    if d.size < 2:
        return f"{d.mean():+.2f}"
    half = stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)
    return f"{d.mean():+.2f} [{d.mean() - half:+.2f}, {d.mean() + half:+.2f}] (n={d.size})"


def table(results: dict) -> str:
    """The markdown table of BENCHMARKS.md from the results file: per seed, HM of each plan, and
    the paired differences with 95 % t intervals."""
    rows = sorted(results.values(), key=lambda r: r["float"]["seed"])
    lines = ["| seed | float: PTQ plan | PTQ -> derived netx plan | QAT plan | QAT -> derived netx plan "
             "(what export writes) | QAT trained for netx (option a) | layer-1 weights zeroed (QAT) | "
             "threshold coarser, layers 1/2/3 (QAT) |", "|---|---|---|---|---|---|---|---|"]
    d_ptq, d_qat, d_a = [], [], []
    for r in rows:
        f, q, a = r["float"], r["qat"], r.get("qatnx")
        fh, fn = f["hm"]["run_plan"]["HM"], f["hm"]["netx_plan"]["HM"]
        qh, qn = q["hm"]["run_plan"]["HM"], q["hm"]["netx_plan"]["HM"]
        d_ptq.append(fn - fh)
        d_qat.append(qn - qh)
        ah = a["hm"]["run_plan"]["HM"] if a else float("nan")
        if a:
            d_a.append(ah - qh)
        st = q["static"]["layers"]
        lines.append(f"| {f['seed']} | {fh:.2f} | {fn:.2f} ({fn - fh:+.2f}) | {qh:.2f} | {qn:.2f} ({qn - qh:+.2f}) | "
                     f"{ah:.2f} ({ah - qh:+.2f}) | {100 * st[0]['weights_zeroed_fraction']:.0f} % | "
                     + "/".join(f"{x['threshold_coarser']:.3g}x" for x in st) + " |")
    lines.append(f"| mean [95 % CI] | | {_ci(d_ptq)} | | {_ci(d_qat)} | {_ci(d_a)} | | |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--table", action="store_true", help="print the markdown table of the results file")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(RESULTS.read_text())))
        return 0
    torch.set_num_threads(1)
    for run in args.runs:
        res = measure(run)
        update_locked(RESULTS, lambda old, r=res: {**(old or {}), str(r["run"]): r})
        f, q = res.get("float", {}), res.get("qat", {})
        line = [str(run)]
        for name, row in (("float", f), ("qat", q), ("qatnx", res.get("qatnx", {}))):
            if row:
                hm = row["hm"]
                line.append(f"{name}: HM {hm['run_plan']['HM']:.2f}" +
                            (f" netx {hm['netx_plan']['HM']:.2f}" if "netx_plan" in hm else ""))
        print("  ".join(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
