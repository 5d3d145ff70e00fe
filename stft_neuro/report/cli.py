"""``stft-neuro report --run DIR``: counts, NeuroBench metrics and energy estimates of a simulate run.

Also the library entry that ``run-nir --report DIR`` uses (:func:`report_graph_run`).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from stft_neuro.report.counts import ReportInputError

DESCRIPTION = """\
Report on a `stft-neuro simulate` output folder (records.npz, plan.safetensors, results.json):
per layer and step spikes, firing rates, synaptic events (nonzero presynaptic values x fan-out of
nonzero weights), neuron updates (active: the update changed u or v; inactive: the rest; u and v
are recomputed by replaying the recorded inputs through the bit-exact reference simulator, which
must reproduce every recorded spike), host <-> chip messages; NeuroBench 2.3's metrics
(Footprint, ParameterCount, ConnectionSparsity, ActivationSparsity, SynapticOperations,
MembraneUpdates) by its definitions; and energy ESTIMATES: Loihi per-operation energies (Davies et
al., IEEE Micro 2018, Table 2; no Loihi 2 table is published), host fp32 MACs on 45 nm CMOS
(Horowitz, ISSCC 2014), and the spiking branch as an ANN on the host. Host compute is counted with
torch's FlopCounterMode when results.json names the training run ("checkpoint").

--constants FILE.toml overrides energy constants ([constants] table; unknown keys and negative
values are refused). Known keys: """

EXAMPLES = """\
examples:
  stft-neuro report --run runs/sim1
  stft-neuro report --run runs/sim1 --json report.json --html report.html --constants energy.toml
  stft-neuro report --compare runs/sim-a runs/sim-b --png compare.png --json compare.json
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``report`` on the CLI's subparsers."""
    from stft_neuro.report.energy import CONSTANTS
    p = subparsers.add_parser(
        "report", help="counts, NeuroBench metrics and energy estimates of a simulate run",
        description=DESCRIPTION + ", ".join(CONSTANTS) + ".", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", metavar="DIR", help="a `stft-neuro simulate` output folder")
    which.add_argument("--compare", nargs="+", metavar="RUN",
                       help="several simulate output folders: their chip energy and hybrid total "
                            "against HM on one plot (--png/--html), a table, and --json")
    p.add_argument("--json", default=None, metavar="FILE", help="write the report as JSON")
    p.add_argument("--html", default=None, metavar="FILE",
                   help="write a self-contained HTML page (and the plots as PNG files beside it)")
    p.add_argument("--png", default=None, metavar="FILE", help="--compare: write the plot as PNG")
    p.add_argument("--constants", default=None, metavar="TOML", help="energy constant overrides")
    return p


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    p = Path(path)
    if not p.parent.is_dir():
        raise ReportInputError(f"{p}: folder {p.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def _host_of(results: Mapping[str, Any]) -> tuple[dict | None, str]:
    """Host compute of the run's model when results.json names its checkpoint."""
    host = results.get("host")
    ck = results.get("checkpoint") or (host.get("checkpoint") if isinstance(host, dict) else None)
    if not ck:
        return None, "results.json names no training run ('checkpoint'), so host compute is not counted"
    from stft_neuro.checkpoint import load_run
    from stft_neuro.report.counts import host_flops
    try:
        model, cfg, _ = load_run(ck)
    except Exception as exc:  # a moved or deleted run: report without host figures, say why
        return None, f"checkpoint {ck} could not be loaded ({str(exc).splitlines()[0][:100]})"
    seconds = int(results.get("seconds") or cfg.spiking.num_steps)
    return host_flops(model, seconds), ""


def _with_judge(host: dict, results: Mapping[str, Any], steps_run: np.ndarray, T: int) -> dict:
    """Early exit: the host's per-step predictions (readout + fusion + projection after every
    judged step, ``early_exit.judged_steps``) added as the host component ``early_exit``."""
    from stft_neuro.report.counts import HostCompute
    from stft_neuro.simulate.early_exit import judged_steps
    ee = results.get("early_exit") or {}
    rule = ee.get("rule") or {}
    if "min_steps" not in rule:
        raise ReportInputError("records.npz holds steps_run (early exit) but results.json names no "
                               "early-exit rule ('early_exit.rule.min_steps')")
    per = judged_steps(steps_run, int(rule["min_steps"]), T).mean() if len(steps_run) else 0.0
    one = sum(host[k].flops for k in ("readout", "fusion", "projection") if k in host)
    one_est = sum(host[k].estimate_macs for k in ("readout", "fusion", "projection") if k in host)
    return {**host, "early_exit": HostCompute(int(round(per * one)), int(round(per * one_est)),
                                              f"{per:.3f} per-step predictions per sample (readout + "
                                              "fusion + projection each)")}


def report_run_folder(run: str | Path, constants: str | Path | None = None) -> tuple[dict, dict]:
    """Load and count a run folder -> ``(report dict, extras for plots)``."""
    from stft_neuro.report import neurobench as NB
    from stft_neuro.report.build import build_report
    from stft_neuro.report.counts import count_plan_run
    from stft_neuro.report.energy import load_constants
    from stft_neuro.report.records import read_run_folder

    consts = load_constants(constants)  # bad constants fail before the (slower) replay
    rf = read_run_folder(run)
    counts = count_plan_run(rf.plan, rf.spikes, rf.payloads, rf.theta, steps_run=rf.extra.get("steps_run"))
    host, why = _host_of(rf.results)
    if host and rf.extra.get("steps_run") is not None:
        host = _with_judge(host, rf.results, rf.extra["steps_run"], counts.steps)
    source = {"kind": "simulate", "run": str(rf.path),
              **{k: rf.results[k] for k in ("backend", "host", "bundle", "manifest_sha256")
                 if k in rf.results}}
    rep = build_report(counts, NB.plan_static(rf.plan), host, consts, source=source, host_why=why)
    extras = {"sample_spikes": [s[0] for s in rf.spikes] if rf.payloads.shape[0] else None,
              "sample_theta": rf.theta[0] if rf.theta is not None and rf.payloads.shape[0] else None,
              "sample_label": f"sample {int(rf.extra['sample_index'][0])}"
              if "sample_index" in rf.extra and len(rf.extra["sample_index"]) else "sample 0",
              "results": rf.results}
    return rep, extras


def emit(rep: dict, extras: Mapping[str, Any], json_path: str | Path | None,
         html_path: str | Path | None, png_dir: str | Path | None = None) -> str:
    """Write JSON/HTML/PNGs as asked; returns the terminal table."""
    from stft_neuro.report.build import format_table
    table = format_table(rep)
    if json_path:
        write_json_atomic(json_path, rep)
    if html_path or png_dir:
        from stft_neuro.report.html import render_plots, write_html
        plots = render_plots(rep, extras.get("sample_spikes"), extras.get("sample_theta"),
                             extras.get("sample_label", "sample 0"))
        if html_path:
            write_html(rep, html_path, plots, table, png_dir)
        else:
            Path(png_dir).mkdir(parents=True, exist_ok=True)
            for name, data in plots.items():
                (Path(png_dir) / f"{name}.png").write_bytes(data)
    return table


def report_graph_run(graph: Any, dt: float, x: np.ndarray, out_dir: str | Path,
                     constants: str | Path | None = None, source: Mapping[str, Any] | None = None,
                     checked: Mapping[str, np.ndarray] | None = None) -> dict:
    """``run-nir --report DIR`` (float path): count ``graph`` run on ``x`` ``(B, T, *in)`` by the
    torch simulator; write ``DIR/report.json``, ``DIR/report.html`` and the PNGs; return the report.

    ``checked``: Output values ``{name: (B, T, ...)}`` of the backend that actually ran (e.g. Lava
    floating_pt); the report says whether the counted torch run reproduces them exactly."""
    from stft_neuro.report import neurobench as NB
    from stft_neuro.report.build import build_report
    from stft_neuro.report.counts import count_graph_run
    from stft_neuro.report.energy import load_constants

    consts = load_constants(constants)
    counts, record = count_graph_run(graph, dt, x)
    source = dict(source or {})
    if checked:
        differ = {k: int(np.sum(np.asarray(v) != record[k].reshape(np.shape(v))))
                  for k, v in checked.items()}
        source["counted_run"] = "torch simulator (step by step)"
        source["outputs_differing_from_backend"] = differ
    rep = build_report(counts, NB.graph_static(graph), None, consts, source=source,
                       host_why="a NIR graph has no host side")
    neuron = [n for n, l in counts.layers.items() if l.spiking]
    extras = {"sample_spikes": [record[n][0].reshape(counts.steps, -1) for n in neuron] or None,
              "sample_theta": None, "sample_label": "sample 0"}
    _write_dir(rep, extras, out_dir)
    return rep


def report_plan_run(plan: Any, payloads: Any, spikes: Any, names: list[str], out_dir: str | Path,
                    constants: str | Path | None = None,
                    source: Mapping[str, Any] | None = None) -> dict:
    """``run-nir --fixed-point --report DIR``: count the fixed-point run of ``plan`` (payloads
    ``(T, B, n_in)``, spikes per layer ``(T, B, n)``, as the backend ran them, extra zero steps
    included) with layers keyed by the NIR node ``names``; write DIR as :func:`report_graph_run`."""
    from stft_neuro.report import neurobench as NB
    from stft_neuro.report.build import build_report
    from stft_neuro.report.counts import count_plan_run
    from stft_neuro.report.energy import load_constants

    consts = load_constants(constants)
    pay = np.asarray(payloads).transpose(1, 0, 2)
    sp = [np.asarray(s).transpose(1, 0, 2).astype(bool) for s in spikes]
    counts = count_plan_run(plan, sp, pay, None)
    rename = dict(zip(list(counts.layers), names))
    counts.layers = {rename[old]: layer for old, layer in counts.layers.items()}
    for layer in counts.layers.values():
        layer.name = rename[layer.name]
        layer.source = rename.get(layer.source, layer.source)
    rep = build_report(counts, NB.plan_static(plan), None, consts, source=dict(source or {}),
                       host_why="a NIR graph has no host side")
    extras = {"sample_spikes": [s[0] for s in sp] if pay.shape[0] else None, "sample_theta": None,
              "sample_label": "sample 0"}
    _write_dir(rep, extras, out_dir)
    return rep


def _write_dir(rep: dict, extras: Mapping[str, Any], out_dir: str | Path) -> None:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportInputError(f"--report {out}: cannot create the folder ({exc.strerror})") from None
    emit(rep, extras, out / "report.json", out / "report.html")


def main(args: argparse.Namespace) -> int:
    """``stft-neuro report``: 0 on success; bad input raises a one-line UserError (exit 1)."""
    if args.compare:
        return main_compare(args)
    if args.png:
        raise ReportInputError("--png goes with --compare (a --run report writes its PNGs beside --html)")
    rep, extras = report_run_folder(args.run, args.constants)
    print(emit(rep, extras, args.json, args.html))
    for what, p in (("JSON", args.json), ("HTML", args.html)):
        if p:
            print(f"wrote {what} {p}")
    return 0




def main_compare(args: argparse.Namespace) -> int:
    """``stft-neuro report --compare RUN ...`` (``report/compare.py``)."""
    from stft_neuro.report.compare import (compare_runs, format_compare_table, render_compare_png,
                                           write_compare_html)
    for p in (args.json, args.png, args.html):
        if p and not Path(p).parent.is_dir():
            raise ReportInputError(f"{p}: folder {Path(p).parent} does not exist")
    cmp = compare_runs(args.compare, args.constants)
    table = format_compare_table(cmp)
    print(table)
    if args.json:
        write_json_atomic(args.json, cmp)
        print(f"wrote JSON {args.json}")
    if args.png or args.html:
        png = render_compare_png(cmp)
        if args.png:
            tmp = Path(args.png).with_name(f".{Path(args.png).name}.tmp")
            tmp.write_bytes(png)
            tmp.replace(args.png)
            print(f"wrote PNG {args.png}")
        if args.html:
            write_compare_html(cmp, png, table, args.html)
            print(f"wrote HTML {args.html}")
    return 0
