"""``stft-neuro deploy``: the whole Loihi 2 deployment view of any NIR graph, as one bundle folder.

Steps (each reuses the one definition the STFT branch uses):

1. read the graph (``converters.nir_in``) and the input ``X.npy`` ``(T, *in)`` or ``(B, T, *in)``
   (``run_nir.load_input``), lower it for Lava (``converters.nir_lava.lower``) and quantize it with
   the project's one quantizer into a graph of populations (``converters.nir_fixed.quantize_graph``;
   the host input: the 99.9th percentile of ``|X|`` maps to the largest ``--input-bits`` payload);
2. design rules and core mapping (``hw_targets/loihi2/graph_rules.py``: the STFT plan's rules and
   mapping per Dense and per LIF population, and at most 8 profiles per layer). **Any error: every
   violation is printed (node, parameter, rule, limit, value), then one line ``stft-neuro: error:``
   and exit 1; nothing is written** (a bundle of a network that cannot be placed would be a plan
   that no chip runs);
3. the fixed-point run on ``--backend`` (``reference``: ``nir_fixed.run_reference``; ``lava``:
   Lava's bit-accurate ``fixed_pt`` models, checked equal to the reference spike for spike), and
   the float run of the same graph (``converters.nir_torch``, the run-nir torch backend);
4. the report: per layer spikes, synaptic events, neuron updates (``report.counts``), NeuroBench
   keys (``report.neurobench``), energy estimate (``report.energy``, the per-operation model of
   ``hw_targets/loihi2/energy.py``), what quantization saturated or clipped, and per layer the
   agreement of the fixed-point spikes with the float run's;
5. the bundle, written to a temporary sibling folder and renamed into place (complete or absent).

Units and shapes: payloads are integers ``(S, B, n_in)`` in Lava steps, ``S = T + max depth``
(Lava's Dense delivers one step late; a layer at depth ``d`` answers input step ``t`` at Lava step
``t + d``); spikes per layer ``(S, B, n)``; counts per sample over the ``S`` steps; energy in pJ per
sample (an estimate).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from stft_neuro.errors import UserError

FORMAT = "stft-neuro/deploy-bundle"
#: 2: ``files`` as ``{name: {"bytes", "sha256"}}``, as the export bundle's (1: ``{name: sha256}``)
VERSION = 2
GRAPH_FILE = "graph.safetensors"
NIR_FILE = "graph.nir"
NETX_WHY = ("not written: lava-dl netx holds a feed-forward chain of Dense/Conv -> CUBA layers, "
            "each one neuron profile with biases on v; this graph's populations, recurrent Dense, "
            "bias sources and unrolled convolutions have no netx writer here "
            "(converters/netx_out.write_netx takes the STFT chain's DeploymentPlan)")

DESCRIPTION = """\
Deploy a NIR graph (written by snnTorch, Sinabs, nir or any tool; the nodes run-nir runs on Lava)
to Loihi 2 and write one bundle folder: design rules and core mapping, the quantization report
(what saturated or was clipped; per layer the agreement of the fixed-point spikes with the float
run on --input), the fixed-point graph (graph.safetensors: one Lava LIF per quantized (du, dv, vth)
profile, one Dense per pair), a fixed-point run on --backend, and the report (spikes, synaptic
events, neuron updates, NeuroBench keys, energy ESTIMATE; report.json, report.html and a table on
stdout).

An LI/CubaLI readout (read by an Output) is a population that never spikes and sends its membrane
v to the host every step (a graded message per neuron per step; neuron updates, no spikes); its
agreement with the float run is the correlation of its v (in float units) with the float v.

Design rules: every violation is listed at once (node, parameter, rule, limit, value). With an
error, nothing is written: the violations are printed, one line names how many, exit 1.

The folder is written whole or not at all (a temporary sibling, then rename); an existing DIR is
replaced only with --force. netx (lava-dl) is not written for these graphs (the report says why).
"""

EXAMPLES = """\
examples:
  stft-neuro deploy net.nir --input x.npy --out deployed/net
  stft-neuro deploy net.nir --input x.npy --out deployed/net --backend lava --json
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``deploy`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "deploy", help="deploy any NIR graph to Loihi 2: design rules, mapping, quantization, "
                       "fixed-point run, report, bundle",
        description=DESCRIPTION, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="NET.nir", help="NIR graph (HDF5)")
    p.add_argument("--input", required=True, metavar="X.npy",
                   help="input (T, ...) or (B, T, ...), '...' the Input node's shape; no pickle")
    p.add_argument("--out", required=True, metavar="DIR", help="bundle folder to write")
    p.add_argument("--backend", choices=("reference", "lava"), default="reference",
                   help="who runs the fixed-point graph: the bit-exact reference (default) or Lava "
                        "fixed_pt (checked equal to the reference, every spike)")
    p.add_argument("--input-bits", type=int, default=8, metavar="BITS",
                   help="graded payload bits of the host input (2..8, default 8)")
    p.add_argument("--dt", type=float, default=None, metavar="SECONDS",
                   help="timestep; overrides the graph's metadata dt (default: metadata, else 1e-4)")
    p.add_argument("--constants", default=None, metavar="TOML", help="energy constant overrides")
    p.add_argument("--force", action="store_true", help="replace an existing DIR")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    return p


# ------------------------------------------------------------------------------------------------
# the steps


def quantize(file: str, graph: Any, x: np.ndarray, dt: float, input_bits: int
             ) -> tuple[Any, Any, list, dict[str, Any], Any]:
    """Float graph + input ``(B, T, n_in)`` -> ``(lowered plan, fixed-point graph, per-layer
    LayerQuant, input quantization info, payloads (B, T, n_in) float32 tensor)``."""
    from stft_neuro.converters.nir_fixed import quantize_graph
    from stft_neuro.converters.nir_lava import LavaMappingError, lower
    from stft_neuro.converters.nir_out import NIR_FORMAT
    from stft_neuro.run_nir import quantize_input

    fmt = graph.metadata.get("stft_neuro.format", "")
    if (fmt.decode() if isinstance(fmt, bytes) else str(fmt)) == NIR_FORMAT:
        raise UserError(f"{file}: stft-neuro's own exported spiking branch (exact integers in its "
                        "metadata): `stft-neuro export` writes its bundle and `stft-neuro resources` "
                        "its design rules; deploy quantizes float graphs")
    try:
        lplan = lower(graph, dt)
        scale, payloads, info = quantize_input(x, input_bits)
        fg, layers = quantize_graph(lplan, scale, input_bits, max_profiles=None)
    except LavaMappingError as exc:
        raise UserError(f"{file}: cannot deploy: {exc}") from None
    return lplan, fg, layers, info, payloads


def design_rules(fg: Any, quant: list | None = None) -> tuple[dict[str, Any], Any]:
    """``(resources section, mapping)``: ``hw_targets/loihi2/report.resource_report`` of the
    populations (limits, per-population cores, totals) with the graph's design rules
    (``quant``: the per-layer ``LayerQuant``, for the weight-bits rule)."""
    from stft_neuro.converters.nir_fixed import MAX_PROFILES_PER_LAYER
    from stft_neuro.hw_targets.loihi2 import graph_rules as GR
    from stft_neuro.hw_targets.loihi2.report import resource_report

    rows = GR.check_graph(fg, MAX_PROFILES_PER_LAYER, quant=quant)
    res = resource_report(GR.population_network(fg))
    errors = sum(r["severity"] == "error" for r in rows)
    res["design_rules"] = {"passed": errors == 0, "errors": errors,
                           "warnings": len(rows) - errors, "rules_checked": GR.rules_checked(),
                           "rules_not_applied": list(GR.NOT_APPLIED), "violations": rows}
    res["mapping_note"] = ("one population (Lava LIF process) per set of cores; its incoming Dense "
                           "stored dense on its cores (convolutions unrolled: an over-estimate)")
    return res, GR.map_graph(fg)


def run_fixed(fg: Any, xin: Any, backend: str) -> tuple[dict, dict, dict[str, Any]]:
    """Run ``fg`` on payloads ``xin`` ``(S, B, n_in)``: ``(spikes {layer: (S, B, n)}, activity of
    the reference run, info)``. ``reference``: the bit-exact reference; ``lava``: Lava fixed_pt's
    spikes, ``torch``: the arithmetic's step-by-step definition (``nir_fixed.run_definition``),
    each of which must equal the reference's, every spike (the reference always runs: its
    ``activity`` is what the report counts)."""
    from stft_neuro.converters import nir_fixed as F

    activity: dict = {}
    ref = F.run_reference(fg, xin, activity)
    info: dict[str, Any] = {"backend": backend}
    if backend == "reference":
        return ref, activity, info
    if backend == "torch":
        other, who = F.run_definition(fg, xin), "the fixed-point definition (torch)"
    else:
        from stft_neuro.sim.lava_runtime import LavaUnavailableError
        runner = F.LavaFixedRunner(fg)
        try:
            other, who = runner.run(xin), "Lava fixed_pt"
        except LavaUnavailableError as exc:
            raise UserError(f"--backend lava: {exc}") from None
        info.update(build_s=runner.timing.build_s, steps_s=runner.timing.steps_s)
    differ = {k: int((other[k] != ref[k]).sum()) for k in ref}
    if any(differ.values()):
        raise UserError(f"{who} differs from the reference simulator (spikes differing per "
                        f"layer: {differ}): a bug, please report it")
    info[f"{backend}_equals_reference"] = True
    return other, activity, info


def float_agreement(graph: Any, dt: float, x: np.ndarray, spikes: dict, lplan: Any,
                    state_scales: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
    """Per layer, the fixed-point spikes (aligned by the layer's depth) against the float run of
    the same graph (torch simulator) on ``x`` ``(B, T, *in)``: ``equal_fraction`` (neuron-steps
    where both spike or both do not), spikes per sample of each and ``coincident`` (both spike),
    firing rates (spikes per neuron per step) and ``rate_difference`` (fixed - float). An LI/CubaLI
    readout (no spikes; ``spikes`` holds its integer v) is compared by value: its v in float units
    (divided by ``state_scales[layer]``) against the float run's v: ``correlation``,
    ``max_abs_difference``, ``float_abs_max``; its rates are 0."""
    import torch

    from stft_neuro.converters.nir_torch import TorchSimulator

    B, T = x.shape[:2]
    rec = TorchSimulator(graph, dt).run(torch.from_numpy(x), record=True)
    out = {}
    for st in lplan.stages:
        if st.readout:
            a = (spikes[st.name][st.depth:st.depth + T].numpy().transpose(1, 0, 2).astype(np.float64)
                 / (state_scales or {}).get(st.name, 1.0))
            b = rec[st.name].numpy().reshape(B, T, -1).astype(np.float64)
            ok = a.size > 1 and np.std(a) > 0 and np.std(b) > 0
            out[st.name] = {"readout": True,
                            "correlation": float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
                            if ok else float("nan"),
                            "max_abs_difference": float(np.abs(a - b).max(initial=0.0)),
                            "float_abs_max": float(np.abs(b).max(initial=0.0)),
                            "spikes_fixed": 0.0, "spikes_float": 0.0, "coincident": 0.0,
                            "rate_fixed": 0.0, "rate_float": 0.0, "rate_difference": 0.0}
            continue
        a = spikes[st.name][st.depth:st.depth + T].numpy().transpose(1, 0, 2) != 0
        b = rec[st.name].numpy().reshape(B, T, -1) != 0
        n = a.size or 1
        out[st.name] = {"equal_fraction": float((a == b).mean()) if a.size else 1.0,
                        "spikes_fixed": float(a.sum()) / B, "spikes_float": float(b.sum()) / B,
                        "coincident": float((a & b).sum()) / B,
                        "rate_fixed": float(a.sum()) / n, "rate_float": float(b.sum()) / n,
                        "rate_difference": float(a.sum() - b.sum()) / n}
    return out


def quantization_section(layers: list, info: dict[str, Any]) -> dict[str, Any]:
    """What quantizing did: the input, and per layer (``LayerQuant``) saturated, zeroed and clipped."""
    keys = ("weights_saturated", "weights_zeroed", "weights_changed_by_sign_mode",
            "bias_saturated", "du_clipped", "dv_clipped", "vth_clipped", "v_reset_clipped")
    return {"input": info, "layers": {q.name: q.as_dict() for q in layers},
            "totals": {k: sum(getattr(q, k) for q in layers) for k in keys},
            "weights": sum(q.weights for q in layers)}


def fixed_graph_report(fg: Any, xin: Any, spikes: dict, activity: dict,
                       host_layers: tuple[str, ...], consts: Any, source: dict[str, Any],
                       mapping: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run report of ``fg`` run on payloads ``xin`` ``(S, B, n_in)`` (``spikes`` per layer
    ``(S, B, n)`` and the reference's ``activity``, as :func:`run_fixed` returns them): per layer
    spikes, synaptic events, neuron updates (``report.counts.count_fixed_graph_run``, spikes sent
    to the cores of ``mapping``, default ``graph_rules.map_graph``; ``host_layers`` read by the
    host), NeuroBench keys and the energy estimate (``report.build.build_report``). Returns
    ``(report, extras for report.cli.emit)``. deploy and run-nir (a bundle, or any graph of
    populations in fixed point) both report through this."""
    from stft_neuro.hw_targets.loihi2.graph_rules import dest_cores, map_graph
    from stft_neuro.report.build import build_report
    from stft_neuro.report.counts import count_fixed_graph_run
    from stft_neuro.report.neurobench import fixed_graph_static

    mapping = map_graph(fg) if mapping is None else mapping
    counts = count_fixed_graph_run(fg, np.asarray(xin), {k: np.asarray(v) for k, v in spikes.items()},
                                   activity, dest_cores(fg, mapping, host_layers), host_layers)
    rep = build_report(counts, fixed_graph_static(fg), None, consts, source=dict(source),
                       host_why="a NIR graph has no host side")
    readouts = {p.layer for p in fg.populations if p.readout}   # send v, not spikes: not plotted
    extras = {"sample_spikes": [np.asarray(s[:, 0]) for k, s in spikes.items() if k not in readouts],
              "sample_theta": None, "sample_label": "sample 0"}
    return rep, extras


# ------------------------------------------------------------------------------------------------
# the bundle


def load_bundle(folder: str | Path) -> tuple[Any, dict[str, Any]]:
    """A deploy bundle folder, verified: every file of ``manifest.json`` present with its SHA-256,
    then ``graph.safetensors`` loaded -> ``(fixed-point graph, its header)``. One-line
    ``UserError`` naming the file for a folder that is not a deploy bundle, a missing or changed
    file."""
    from stft_neuro.export.bundle import BUNDLE_FORMAT, file_problem
    from stft_neuro.hw_targets.loihi2.graph_file import load_graph

    d = Path(folder)
    man_path = d / "manifest.json"
    if not man_path.is_file():
        raise UserError(f"{d}: a folder without manifest.json, not a deploy bundle "
                        "(`stft-neuro deploy NET.nir --input X.npy --out DIR` writes one)")
    try:
        man = json.loads(man_path.read_text())
        fmt, files = man.get("format"), dict(man.get("files") or {})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError,
            ValueError) as exc:
        raise UserError(f"{man_path}: not a readable manifest ({str(exc).splitlines()[0][:100]})"
                        ) from None
    if fmt == BUNDLE_FORMAT:
        raise UserError(f"{d}: an STFT export bundle ({BUNDLE_FORMAT}); `stft-neuro simulate "
                        "--bundle` runs it, run-nir runs deploy bundles")
    if fmt != FORMAT or man.get("version") != VERSION:
        raise UserError(f"{man_path}: format {fmt!r} version {man.get('version')!r} is not "
                        f"{FORMAT!r} version {VERSION}")
    for need in (GRAPH_FILE, NIR_FILE):
        if need not in files:
            raise UserError(f"{man_path}: does not list {need}; not a complete deploy bundle")
    for name, record in sorted(files.items()):
        problem = file_problem(d, name, record)
        if problem is not None:
            raise UserError(f"{problem}; deploy again")
    g, header = load_graph(d / GRAPH_FILE)
    return g, header


def _nir_with_metadata(file: str, path: Path, header: dict[str, Any]) -> str:
    """The source graph with the integer graph's header in its metadata
    (``stft_neuro.fixed_point``); a graph ``nir.read`` cannot load is copied as it is."""
    import nir

    from stft_neuro.converters.nir_out import write_nir
    try:
        g = nir.read(str(file))
    except Exception as exc:  # nir's reader is stricter than ours: keep the file, say so
        shutil.copyfile(file, path)
        return f"copied unchanged (nir.read: {str(exc).splitlines()[0][:100]})"
    g.metadata = {**dict(g.metadata or {}), "stft_neuro.format": FORMAT,
                  "stft_neuro.fixed_point": json.dumps(header)}
    write_nir(g, path)
    return "the source graph; the fixed-point graph's header in metadata 'stft_neuro.fixed_point'"


def format_deploy(rep: dict[str, Any]) -> str:
    """The human-readable view: design rules, mapping, quantization and agreement per layer, then
    the run report's table (``report.build.format_table``)."""
    from stft_neuro.hw_targets.loihi2.graph_rules import format_violations
    from stft_neuro.report.build import format_table

    d, res = rep["deploy"], rep["deploy"]["resources"]
    dr, t = res["design_rules"], res["totals"]
    convs = sum(q.get("lava_conv_inputs", 0) for q in d["quantization"]["layers"].values())
    lines = [f"deploy {d['file']}: {d['populations']} LIF populations, {d['projections']} Dense"
             + (f" ({convs} of them convolutions on Lava's Conv process)" if convs else "")
             + f"; backend {d['run']['backend']}"
             + (" (Lava fixed_pt == reference, every spike)" if d["run"].get("lava_equals_reference")
                else ""),
             f"design rules: {'PASS' if dr['passed'] else 'FAIL'} ({dr['errors']} error(s), "
             f"{dr['warnings']} warning(s), {len(dr['rules_checked'])} rules checked)"]
    if dr["violations"]:
        lines.append(format_violations(dr["violations"]))
    lines.append(f"mapping: {t['cores_used']} cores on {t['chips_needed']} chip(s), {t['neurons']} "
                 f"neurons, {t['synapses']} synapses, {t['synaptic_memory_bits']} bits (an estimate)")
    q, ag = d["quantization"], d["float_agreement"]
    lines += ["", f"quantization: input {q['input']['input_bits']}-bit, scale "
                  f"{q['input']['input_scale']:.4g}, {q['input']['payloads_saturated']}/"
                  f"{q['input']['payloads']} payloads saturated; agreement with the float run:",
              f"{'layer':<16} {'profiles':>8} {'w.exp':>5} {'w.sat':>6} {'w.zero':>7} {'w.lost':>6} "
              f"{'b.sat':>6} {'du/dv/vth clip':>14} {'equal':>7} {'rate fixed':>10} {'rate float':>10}"]
    for name, lq in q["layers"].items():
        a = ag[name]
        tail = (f"readout v: correlation {a['correlation']:.4f} with the float run" if a.get("readout")
                else f"{a['equal_fraction']:>7.2%} {a['rate_fixed']:>10.4f} {a['rate_float']:>10.4f}")
        lines.append(f"{name[:16]:<16} {lq['profiles']:>8} {lq['weight_exp']:>5} "
                     f"{lq['weights_saturated']:>6} {lq['weights_zeroed']:>7} "
                     f"{lq['weights_zeroed_drive']:>6.1%} {lq['bias_saturated']:>6} "
                     f"{lq['du_clipped']:>4}/{lq['dv_clipped']}/{lq['vth_clipped']:<5} {tail}")
    return "\n".join(lines) + "\n\n" + format_table(rep)


def main(args: argparse.Namespace) -> int:
    """``stft-neuro deploy``: 0 when the bundle is written; 1 (one line) for bad input, a design
    rule error (after the list of violations) or a graph Loihi 2 cannot run; 2 for usage errors."""
    import torch

    from stft_neuro.run_nir import load_input, read_graph

    t0 = time.perf_counter()
    if not 1 < args.input_bits <= 8:
        raise UserError(f"--input-bits must be 2..8, got {args.input_bits}")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    if out.exists() and not args.force:
        raise UserError(f"--out {out} exists; pass --force to replace it")
    from stft_neuro.report.energy import load_constants
    consts = load_constants(args.constants)
    graph, dt, dt_source, quirks = read_graph(args.file, args.dt)
    x, _ = load_input(args.input, graph.nodes[graph.inputs[0]].out_shape)
    B, T = x.shape[:2]
    lplan, fg, qlayers, qinfo, payloads = quantize(args.file, graph, x.reshape(B, T, -1), dt,
                                                   args.input_bits)
    host_layers = tuple(sorted(set(lplan.outputs.values())))
    res, mapping = design_rules(fg, qlayers)
    if not res["design_rules"]["passed"]:
        dr = res["design_rules"]
        if args.json:
            print(json.dumps({"file": str(args.file), "design_rules": dr}, indent=2))
        else:
            from stft_neuro.hw_targets.loihi2.graph_rules import format_violations
            print(f"design rules of {args.file}: FAIL\n{format_violations(dr['violations'])}")
        rules = sorted({r["rule"] for r in dr["violations"] if r["severity"] == "error"})
        raise UserError(f"{args.file}: not deployable on Loihi 2: {dr['errors']} design rule "
                        f"error(s) of {len(rules)} rule(s) ({', '.join(rules)}), listed above; "
                        "nothing written")
    xin = torch.cat([payloads, payloads.new_zeros(B, lplan.max_depth, payloads.shape[2])], 1)
    xin = xin.transpose(0, 1).contiguous()                                     # (S, B, n_in)
    spikes, activity, run_info = run_fixed(fg, xin, args.backend)
    agreement = float_agreement(graph, dt, x, spikes, lplan,
                                {p.layer: p.state_scale for p in fg.populations if p.readout})

    from stft_neuro.hw_targets.loihi2.graph_file import graph_header, save_graph
    rep, extras = fixed_graph_report(fg, xin, spikes, activity, host_layers, consts,
                                     {"kind": "deploy", "file": str(args.file),
                                      "backend": args.backend}, mapping)
    rep["deploy"] = {
        "file": str(args.file), "input": str(args.input), "dt": dt, "dt_source": dt_source,
        "quirks": quirks, "input_shape": list(x.shape), "samples": int(B), "input_steps": int(T),
        "lava_steps": int(xin.shape[0]), "depth": {st.name: int(st.depth) for st in lplan.stages},
        "populations": len(fg.populations), "projections": len(fg.projections),
        "resources": res, "quantization": quantization_section(qlayers, qinfo),
        "float_agreement": agreement, "run": run_info,
        "bundle": {"format": FORMAT, "version": VERSION, "plan": GRAPH_FILE, "nir": NIR_FILE,
                   "netx": NETX_WHY}}

    from stft_neuro.checkpoint import atomic_folder
    from stft_neuro.export.bundle import file_records, sha256
    from stft_neuro.report.cli import emit
    with atomic_folder(out) as tmp:   # the bundle is complete or absent
        save_graph(fg, tmp / GRAPH_FILE, qinfo["input_scale"], dt)
        header = {**graph_header(fg, qinfo["input_scale"], dt), "plan_sha256": sha256(tmp / GRAPH_FILE)}
        rep["deploy"]["bundle"]["nir_note"] = _nir_with_metadata(args.file, tmp / NIR_FILE, header)
        rep["deploy"]["seconds"] = time.perf_counter() - t0
        emit(rep, extras, tmp / "report.json", tmp / "report.html")
        manifest = {"format": FORMAT, "version": VERSION, "source": str(args.file),
                    "files": file_records(tmp)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if args.json:
        print(json.dumps(rep, indent=2, default=float))
    else:
        print(format_deploy(rep) + f"\nwrote {out}/ ({', '.join(sorted(p.name for p in out.iterdir()))})")
    return 0
