"""``stft-neuro run-nir``: run a NIR graph written by any tool on an input array.

Reads ``FILE.nir`` (``converters.nir_in``: quirks repaired with one warning each), takes an input
``(T, ...)`` or ``(B, T, ...)`` from a ``.npy`` file (loaded without pickle), runs it on the torch
simulator (``converters.nir_torch``) or on Lava ``floating_pt`` (``converters.nir_lava``) and writes
the Output node's values in the same layout, aligned to input time on every backend. The file is
written whole or not at all (a temporary file in the same folder, then ``os.replace``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from stft_neuro.errors import UserError

DESCRIPTION = """\
Run a NIR graph (nir 1.0.x HDF5, written by snnTorch, Sinabs, nir itself or this project) on an
input array and write its output.

Supported nodes: Input, Output, Affine, Linear, Scale, LIF, CubaLIF, IF, LI, CubaLI, I, Threshold,
Delay, Flatten, Conv1d, Conv2d, SumPool2d, AvgPool2d, nested NIRGraph, recurrent edges (a cycle
through a neuron: the edge leaving the neuron carries the previous step, as snnTorch's RLeaky).
The lava backend runs LIF, CubaLIF, IF, the linear nodes between them and uniform Delays (and, in
fixed point only, an LI/CubaLI readout read by an Output; see 'Fixed point').

Time: NIR stores no timestep. dt is --dt if given, else the graph's metadata "dt", else 1e-4 s
(the snnTorch/NIR-paper convention); the dt used is printed. Forward Euler, synaptic current
first: I = (1-dt/tau_syn) I + w_in dt/tau_syn x ; v = (1-dt/tau_mem) v + r dt/tau_mem I
+ v_leak dt/tau_mem ; spike v > v_threshold ; v = v_reset. IF/I: v += r x per step (r = 1/dt
on every neuron is read as SpikingJelly writes it: v += r dt x). A warning names every repair.

Alignment: output step t is the graph's output at input step t on every backend. Lava delivers
every connection (Dense/Sparse) one step late, so a neuron d connections from the input computes
step t at Lava step t + d; run-nir feeds d extra zero steps after the input and shifts each output
back by its d, so no step is lost or shifted. (The project's own export writes that delay as a
Delay node per layer: there d = 0.)

Fixed point (--fixed-point, or --backend reference): the graph becomes a Loihi 2 deployment plan
and runs in Lava's fixed_pt arithmetic: on "reference" (the project's bit-exact simulator), "lava"
(Lava fixed_pt) or "torch" (the arithmetic's definition in torch); all three give the same spikes.
A graph exported by stft-neuro carries its exact integer parameters and is run as written; its
input is then the graded payload in Loihi units (integers in the plan's payload range). Any other
graph that the lava backend runs is quantized by the project's one quantizer (the 99.9th
percentile of |input| maps to the largest --input-bits payload): a plain chain with one du, dv and
threshold per layer as the STFT plan; anything else (per-neuron parameters, recurrence, biases into
a synaptic current, convolutions) as a graph of populations, one Lava LIF per quantized (du, dv,
vth) profile, at most 8 profiles per layer (converters/nir_fixed.py). An LI or CubaLI node read by
an Output (a readout, as snnTorch, Norse or Rockpool end a network) runs as a population that never
spikes and sends its membrane v every step (a graded spike; Lava's LIF arithmetic without threshold
and reset): the output written is then that v converted back to the graph's float units (the
integer v divided by the layer's state scale), not spikes. The report says what
saturated and how far the fixed-point output is from the float run of the same graph. --report in
fixed point counts either kind: a plain chain by its plan, a graph of populations as `stft-neuro
deploy` reports it (per-layer spikes, synaptic events, neuron updates, NeuroBench keys, energy).

A deploy bundle (DIR written by `stft-neuro deploy`, manifest format "stft-neuro/deploy-bundle")
in place of FILE.nir runs the bundle's STORED integer graph (graph.safetensors) exactly as
deployed, on new inputs: the SHA-256 of every file in its manifest.json is checked first (a
changed file is one line naming it, nothing written); the input is quantized with the bundle's
stored input scale and payload bits, not re-calibrated on this input, so a value beyond the
payload range saturates (the run prints how many payloads saturated); alignment and Output nodes
as above (graph.nir, the bundle's copy of the source graph, names them); --fixed-point is implied;
--backend reference (default for a bundle), lava (Lava fixed_pt) or torch (the fixed-point
arithmetic's definition), the latter two checked equal to the reference every spike; dt and input
bits are the bundle's (--dt or --input-bits with another value is an error). --report writes the
report deploy writes for that input.
"""

EXAMPLES = """\
examples:
  stft-neuro run-nir net.nir --input x.npy --out y.npy
  stft-neuro run-nir net.nir --input x.npy --out y.npy --backend lava --json
  stft-neuro run-nir deployed/net --input x2.npy --out y2.npy --report deployed/net-x2
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``run-nir`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "run-nir", help="run a NIR graph (any tool's) on an input array, torch or Lava",
        description=DESCRIPTION, epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE.nir|DIR",
                   help="NIR graph (HDF5), or a bundle folder written by `stft-neuro deploy` (runs "
                        "its stored integer graph; see 'A deploy bundle' above)")
    p.add_argument("--input", required=True, metavar="IN.npy",
                   help="input array (T, ...) or (B, T, ...), '...' the Input node's shape; "
                        "loaded without pickle")
    p.add_argument("--out", required=True, metavar="OUT.npy",
                   help="output array, same layout as the input: (T, ...) or (B, T, ...), float32 "
                        "(spikes; for an LI/CubaLI readout its membrane v, in fixed point converted "
                        "to float units)")
    p.add_argument("--backend", choices=("torch", "reference", "lava"), default=None,
                   help="torch: step-by-step torch simulation (float32, reproduces snnTorch; with "
                        "--fixed-point the fixed-point arithmetic's definition); lava: Lava "
                        "floating_pt (fixed_pt with --fixed-point); reference: the bit-exact "
                        "fixed-point simulator (implies --fixed-point). Default: torch; "
                        "reference for a deploy bundle")
    p.add_argument("--fixed-point", action="store_true",
                   help="run in Loihi 2 fixed-point arithmetic (see 'Fixed point' above)")
    p.add_argument("--input-bits", type=int, default=None, metavar="BITS",
                   help="graded payload bits when --fixed-point quantizes a float graph (2..8, "
                        "default 8; a deploy bundle's are stored)")
    p.add_argument("--output", default=None, metavar="NAME",
                   help="which Output node to write when the graph has several (default: the one "
                        "computed last; the choice is printed)")
    p.add_argument("--dt", type=float, default=None, metavar="SECONDS",
                   help="timestep; overrides the graph's metadata dt (default: metadata, else 1e-4; "
                        "a deploy bundle's is stored)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="also write counts, NeuroBench metrics and energy estimates of this run to "
                        "DIR (report.json, report.html, PNGs; layers keyed by NIR node name); see "
                        "`stft-neuro report --help` for the definitions")
    p.add_argument("--constants", default=None, metavar="TOML",
                   help="energy constant overrides for --report")
    return p


def _usage(msg: str) -> int:
    print(f"stft-neuro run-nir: error: {msg} (see stft-neuro run-nir --help)", file=sys.stderr)
    return 2


def load_input(path: str | os.PathLike, in_shape: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    """``IN.npy`` -> ``(x (B, T, *in_shape) float64, batched)``. One-line ``UserError`` for a missing,
    pickled, non-numeric, empty, wrongly shaped or non-finite array."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such input file")
    try:
        x = np.load(p, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise UserError(f"{p}: holds pickled objects; run-nir loads plain arrays only "
                            "(pickles can run code)") from None
        raise UserError(f"{p}: not a .npy array ({str(exc).splitlines()[0][:120]})") from None
    except (OSError, EOFError) as exc:
        raise UserError(f"{p}: not a readable .npy array ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(x, np.ndarray):
        if hasattr(x, "close"):
            x.close()
        raise UserError(f"{p}: a .npz archive; give one array saved with np.save")
    if x.dtype.kind not in "biuf":
        raise UserError(f"{p}: dtype {x.dtype} is not a real number type")
    r = len(in_shape)
    if x.ndim not in (r + 1, r + 2) or tuple(x.shape[x.ndim - r:]) != tuple(in_shape):
        want = ", ".join(str(s) for s in in_shape)
        raise UserError(f"{p}: shape {x.shape} does not fit the graph's input: expected (T, {want}) "
                        f"or (B, T, {want})")
    batched = x.ndim == r + 2
    x = x.astype(np.float64) if batched else x.astype(np.float64)[None]
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise UserError(f"{p}: empty input (shape {x.shape if batched else x.shape[1:]})")
    if not np.all(np.isfinite(x)):
        raise UserError(f"{p}: holds NaN or infinite values")
    return x, batched


def pick_output(graph: Any, name: str | None, where: str) -> str:
    """The Output node to write: ``name``, or the only one, or the one computed last."""
    if name is not None:
        if name not in graph.outputs:
            raise UserError(f"{where}: no Output node {name!r} (it has: {', '.join(graph.outputs)})")
        return name
    return max(graph.outputs, key=graph.order.index)


def save_atomic(path: str | os.PathLike, arr: np.ndarray) -> None:
    """``np.save`` to a temporary file beside ``path``, then ``os.replace``: whole or nothing."""
    p = Path(path)
    if not p.parent.is_dir():
        raise UserError(f"{p}: folder {p.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run(file: str, x: np.ndarray, backend: str, dt: float | None = None
        ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Library entry: graph file + input ``(B, T, *in)`` -> ``({output: (B, T, *out)}, info)``."""
    from stft_neuro.converters.nir_in import read_nir
    graph, dt_used, dt_source = read_nir(file, dt)
    return run_graph(graph, x, backend, dt_used, dt_source)


def run_graph(graph: Any, x: np.ndarray, backend: str, dt: float, dt_source: str = "given"
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Run a validated graph on ``x`` ``(B, T, *in)`` with ``backend`` ("torch" or "lava")."""
    info: dict[str, Any] = {"backend": backend, "dt": dt, "dt_source": dt_source}
    t0 = time.perf_counter()
    if backend == "torch":
        import torch
        from stft_neuro.converters.nir_torch import TorchSimulator
        sim = TorchSimulator(graph, dt)
        out = {k: v.numpy().astype(np.float32) for k, v in sim.run(torch.from_numpy(x)).items()}
    elif backend == "lava":
        from stft_neuro.converters.nir_lava import LavaFloatRunner, lower
        plan = lower(graph, dt)
        runner = LavaFloatRunner(plan)
        out = runner.run(x)
        info["lava"] = {"depth": {s.name: s.depth for s in plan.stages},
                        "extra_zero_steps": plan.max_depth, "build_s": runner.timing.build_s,
                        "steps_s": runner.timing.steps_s, "teardown_s": runner.timing.teardown_s}
    else:
        raise UserError(f"unknown backend {backend!r}")
    info["seconds"] = time.perf_counter() - t0
    return out, info


def quantize_input(x: np.ndarray, input_bits: int) -> tuple[float, Any, dict[str, Any]]:
    """The host's input conversion for a float graph: the 99.9th percentile of ``|x|`` maps to the
    largest ``input_bits`` payload. ``x`` ``(B, T, n_in)`` -> ``(input_scale, payloads (B, T, n_in)
    float32 tensor of integers, saturating, info)``."""
    from stft_neuro.hw_targets.loihi2 import quantize as Q

    ref = float(np.percentile(np.abs(x), 99.9)) if x.size else 0.0
    scale = Q.input_scale_for(ref, input_bits)
    payloads, info = encode_input(x, scale, input_bits)
    return scale, payloads, info


def encode_input(x: np.ndarray, scale: float, input_bits: int) -> tuple[Any, dict[str, Any]]:
    """``x`` (float, any shape) -> ``(payloads, info)``: ``round(x / scale)`` (``x`` read as float32,
    as the host sends it) saturated to the ``input_bits`` payload range, a float32 tensor of
    integers; ``info``: bits, scale, how many payloads saturated, of how many."""
    import torch

    from stft_neuro.hw_targets.loihi2.network import PayloadRange

    lo, hi = PayloadRange.for_message_bits(input_bits)
    raw = torch.round(torch.from_numpy(x).to(torch.float32).double() / scale)
    info = {"input_bits": input_bits, "input_scale": scale,
            "payloads_saturated": int(((raw < lo) | (raw > hi)).sum()), "payloads": int(raw.numel())}
    return raw.clamp(lo, hi).to(torch.float32), info


def read_graph(file: str, dt: float | None) -> tuple[Any, float, str, list[str]]:
    """``read_nir`` with every quirk it repaired printed as one warning line on stderr:
    ``(graph, dt, dt_source, quirks)``."""
    from stft_neuro.converters.nir_in import NIRQuirkWarning, read_nir
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NIRQuirkWarning)
        graph, dt, dt_source = read_nir(file, dt)
    quirks = [str(w.message) for w in caught if issubclass(w.category, NIRQuirkWarning)]
    for q in quirks:
        print(f"stft-neuro: warning: {q}", file=sys.stderr)
    return graph, dt, dt_source, quirks


def fixed_point_run(file: str, graph: Any, x: np.ndarray, backend: str, dt: float,
                    input_bits: int = 8, keep: dict[str, Any] | None = None,
                    bundle: tuple[Any, dict[str, Any]] | None = None
                    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Run ``graph`` (read from ``file``) in Loihi 2 fixed point on ``x`` ``(B, T, n_in)``.

    Returns ``({output node: (B, T, n) spikes, or an LI/CubaLI readout's v in float units}, info)``
    aligned to input time like the float path.
    A graph exported by stft-neuro runs its own plan (``converters.nir_out.plan_from_nir``); any
    other plain chain is quantized by ``quantize.plan_from_float`` (see the command's help), any
    other graph by ``nir_fixed.quantize_graph``. ``bundle``: ``(fixed-point graph, header)`` of a
    deploy bundle (``deploy_nir.load_bundle``; ``graph`` its graph.nir): that graph runs as stored,
    the input quantized with its stored input scale and bits.
    ``keep``, if given, receives what ran (for ``--report``): ``plan`` (None for a graph of
    populations), ``payloads`` (T', B, n_in), ``spikes`` per layer (T', B, n), ``names`` (the LIF
    nodes), T' = T + the extra zero steps; for a graph of populations also ``fgraph``,
    ``layer_spikes`` {layer: (T', B, n)}, ``activity`` (the reference's) and ``host_layers``."""
    import nir
    import torch

    from stft_neuro.converters.nir_lava import LavaMappingError, lower, to_float_layers
    from stft_neuro.converters.nir_out import NIR_FORMAT, plan_from_nir
    from stft_neuro.hw_targets.loihi2 import quantize as Q

    t0 = time.perf_counter()
    x = x.reshape(x.shape[0], x.shape[1], -1)  # (B, T, n_in): the plan's input is flat
    try:
        lplan = lower(graph, dt)
    except LavaMappingError as exc:
        raise UserError(f"{file}: cannot run in fixed point: {exc}") from None
    info: dict[str, Any] = {"backend": backend, "fixed_point": True, "dt": dt}
    if bundle is not None:
        fgraph, head = bundle
        if (dict(fgraph.depth) != {st.name: int(st.depth) for st in lplan.stages}
                or fgraph.n_in != x.shape[2]):
            raise UserError(f"{file}: its graph.nir and graph.safetensors disagree (layers "
                            f"{dict(fgraph.depth)} vs {({st.name: st.depth for st in lplan.stages})}, "
                            f"inputs {fgraph.n_in} vs {x.shape[2]}): not one deploy's bundle")
        plan = None
        payloads, info["quantization"] = encode_input(x, float(head["input_scale"]),
                                                      fgraph.input_bits)
        info["quantization"]["input_scale_from"] = "the bundle (deploy's input); not re-calibrated"
        info["plan"] = (f"the bundle's integer graph as deployed: {len(fgraph.populations)} "
                        f"populations, {len(fgraph.projections)} Dense")
    elif str(graph.metadata.get("stft_neuro.format", "")) == NIR_FORMAT or \
            graph.metadata.get("stft_neuro.format", b"") == NIR_FORMAT.encode():
        plan = plan_from_nir(nir.read(str(file)), where=str(file))
        plan.check_payload(torch.from_numpy(x.reshape(-1, x.shape[-1])))
        payloads = torch.from_numpy(x).to(torch.float32)
        info["plan"] = "exact, from the file's fixed-point metadata"
    else:
        try:
            layers = to_float_layers(lplan)
        except LavaMappingError:
            layers = None  # not a plain chain of one profile per layer: the graph path below
        scale, clamped, info["quantization"] = quantize_input(x, input_bits)
        xt = torch.from_numpy(x).to(torch.float32)
        if layers is not None:
            plan, report = Q.plan_from_float(layers, scale, input_bits, num_steps=x.shape[1], dt=dt)
            payloads = plan.encode_input(xt)
            info["plan"] = "quantized by the project's quantizer"
            info["quantization"].update(
                weights_saturated=report.weights_saturated,
                layers=[{"name": i.name, "weights_saturated": i.weights_saturated,
                         "weights_zeroed": i.weights_zeroed, "bias_saturated": i.bias_saturated,
                         "vth": i.vth, "weight_exp": i.scales.weight_exp} for i in report.layers])
        else:
            from stft_neuro.converters.nir_fixed import quantize_graph
            try:
                fgraph, greport = quantize_graph(lplan, scale, input_bits)
            except LavaMappingError as exc:
                raise UserError(f"{file}: cannot run in fixed point: {exc}") from None
            plan = None
            payloads = clamped
            info["plan"] = ("quantized by the project's quantizer as a graph: "
                            f"{len(fgraph.populations)} populations, {len(fgraph.projections)} Dense")
            info["quantization"].update(
                weights_saturated=sum(q.weights_saturated for q in greport),
                layers=[q.as_dict() for q in greport])
    depth = [int(st.depth) for st in lplan.stages]
    extra = max(depth)
    B, T = payloads.shape[0], payloads.shape[1]
    xin = torch.cat([payloads, payloads.new_zeros(B, extra, payloads.shape[2])], 1).transpose(0, 1)
    if plan is None:
        from stft_neuro.deploy_nir import run_fixed
        xin = xin.contiguous()
        res, activity, run_info = run_fixed(fgraph, xin, backend)
        if backend == "lava":
            info["lava"] = {"build_s": run_info["build_s"], "steps_s": run_info["steps_s"],
                            "networks": 1}
        if backend != "reference":
            info[f"{backend}_equals_reference"] = True
        spikes = [res[st.name] for st in lplan.stages]
        if keep is not None:
            keep.update(fgraph=fgraph, layer_spikes=res, activity=activity,
                        host_layers=tuple(sorted(set(lplan.outputs.values()))))
    elif backend == "reference":
        from stft_neuro.sim.reference import ReferenceSimulator
        spikes, _ = ReferenceSimulator(plan).run(xin.contiguous())
    elif backend == "lava":
        from stft_neuro.sim.lava_runtime import LavaUnavailableError
        from stft_neuro.sim.lava_session import LavaSession
        try:
            with LavaSession(plan, B) as session:
                spikes, _ = session.run(xin.contiguous())
        except LavaUnavailableError as exc:
            raise UserError(f"--backend lava: {exc}") from None
        info["lava"] = {"build_s": session.timing.build_s, "steps_s": session.timing.steps_s,
                        "networks": session.timing.builds}
    else:
        from stft_neuro.hw_targets.loihi2 import arithmetic as A
        spikes, _ = A.chip_run(xin.to(torch.float64), None, None, A.network_arith(plan.network))
    if keep is not None:
        keep.update(plan=plan, payloads=xin, spikes=spikes, names=[st.name for st in lplan.stages])
    stage_index = {st.name: i for i, st in enumerate(lplan.stages)}
    out = {}
    for o in graph.outputs:
        src = [s for s, _ in graph.incoming[o]]
        if len(src) != 1 or src[0] not in stage_index:
            raise UserError(f"{file}: Output {o!r} does not read a neuron layer; fixed point "
                            "writes spikes of LIF layers (or an LI readout's v) only")
        l = stage_index[src[0]]
        y = spikes[l][depth[l]:depth[l] + T].transpose(0, 1).numpy().astype(np.float64)
        if lplan.stages[l].readout:  # integer v -> float units (one state scale per layer)
            y = y / fgraph.of_layer(src[0])[0].state_scale
            info.setdefault("readouts", {})[o] = {
                "node": src[0], "state_scale": fgraph.of_layer(src[0])[0].state_scale,
                "output": "membrane v in float units (integer v / state_scale)"}
        y = y.astype(np.float32)
        out[o] = y.reshape(B, T, *lplan.stages[l].shape)  # (B, T, *node shape), as the float path
    info.update(depth={st.name: d for st, d in zip(lplan.stages, depth)}, extra_zero_steps=extra,
                seconds=time.perf_counter() - t0)
    return out, info


def main(args: argparse.Namespace) -> int:
    """``stft-neuro run-nir``: 0 on success, 1 for bad input (one line), 2 for usage errors."""
    bundle, graph_file = None, args.file
    if Path(args.file).is_dir():  # a deploy bundle: verified, then its stored graph runs
        from stft_neuro.deploy_nir import NIR_FILE, load_bundle
        bundle = load_bundle(args.file)
        head = bundle[1]
        for flag, given, stored in (("--input-bits", args.input_bits, head["input_bits"]),
                                    ("--dt", args.dt, head["dt"])):
            if given is not None and given != stored:
                return _usage(f"{flag} {given:g} with deploy bundle {args.file}, which runs as "
                              f"deployed ({flag} {stored:g}); leave {flag} out")
        args.backend, graph_file = args.backend or "reference", str(Path(args.file) / NIR_FILE)
    args.backend = args.backend or "torch"
    bits = 8 if args.input_bits is None else args.input_bits
    fixed = bundle is not None or args.fixed_point or args.backend == "reference"
    if fixed and not 1 < bits <= 8:
        return _usage(f"--input-bits must be 2..8, got {bits}")
    graph, dt, dt_source, quirks = read_graph(graph_file, head["dt"] if bundle else args.dt)
    if bundle:
        dt_source = "the deploy bundle's"
    output = pick_output(graph, args.output, args.file)
    in_shape = graph.nodes[graph.inputs[0]].out_shape
    x, batched = load_input(args.input, in_shape)
    if not Path(args.out).parent.is_dir():
        raise UserError(f"{args.out}: folder {Path(args.out).parent} does not exist")
    consts = None
    if args.report:  # a bad constants file fails before anything runs or is written
        from stft_neuro.report.energy import load_constants
        consts = load_constants(args.constants)
    if fixed:
        ran: dict[str, Any] = {}
        out, info = fixed_point_run(args.file, graph, x, args.backend, dt, bits, ran, bundle)
        info["dt_source"] = dt_source
        q = info.get("quantization") or {}
        if bundle and q["payloads_saturated"]:
            from stft_neuro.hw_targets.loihi2.network import PayloadRange
            lo, hi = PayloadRange.for_message_bits(q["input_bits"])
            print(f"stft-neuro: warning: {q['payloads_saturated']} of {q['payloads']} input payloads "
                  f"saturated: {args.input} goes beyond the bundle's input range "
                  f"[{lo * q['input_scale']:.4g}, {hi * q['input_scale']:.4g}] (deploy's input "
                  "scale; not re-calibrated)", file=sys.stderr)
        float_out, _ = run_graph(graph, x, "torch", dt, dt_source)
        a, b = out[output], float_out[output]
        if output in info.get("readouts", {}):
            ok = a.size > 1 and np.std(a) > 0 and np.std(b) > 0
            info["vs_float"] = {"readout": True,
                                "correlation": float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
                                if ok else float("nan"),
                                "max_abs_difference": float(np.max(np.abs(a - b))),
                                "float_abs_max": float(np.max(np.abs(b)))}
        else:
            info["vs_float"] = {"equal_fraction": float(np.mean(a == b)),
                                "spikes_fixed": float(a.sum()), "spikes_float": float(b.sum())}
    else:
        out, info = run_graph(graph, x, args.backend, dt, dt_source)
    y = out[output]
    y = y if batched else y[0]
    if args.report:
        from stft_neuro.report.cli import report_graph_run, report_plan_run
        src = {"kind": "run-nir", "file": str(args.file), "backend": args.backend,
               "fixed_point": fixed, "output_node": output, "deploy_bundle": bundle is not None}
        if fixed and ran["plan"] is None:  # a graph of populations: deploy's report
            from stft_neuro.deploy_nir import fixed_graph_report
            from stft_neuro.report.cli import _write_dir
            rep, extras = fixed_graph_report(ran["fgraph"], ran["payloads"], ran["layer_spikes"],
                                             ran["activity"], ran["host_layers"], consts, src)
            rep["run_nir"] = {"input": str(args.input), "plan": info["plan"],
                              "input_quantization": info["quantization"], "depth": info["depth"],
                              "lava_steps": int(ran["payloads"].shape[0])}
            _write_dir(rep, extras, args.report)
        elif fixed:
            report_plan_run(ran["plan"], ran["payloads"], ran["spikes"], ran["names"], args.report,
                            args.constants, src)
        else:
            report_graph_run(graph, dt, x, args.report, args.constants, src, checked={output: out[output]})
    save_atomic(args.out, np.ascontiguousarray(y, dtype=np.float32))  # last: no output after a failure
    result = {"file": str(args.file), "input": str(args.input), "out": str(args.out),
              "output_node": output, "output_nodes": list(graph.outputs),
              "input_shape": list(x.shape if batched else x.shape[1:]), "output_shape": list(y.shape),
              "quirks": quirks, "graph": graph.summary(), **info,
              "output_sum": float(np.sum(y)), "deploy_bundle": bundle is not None}
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        B, T = x.shape[0], x.shape[1]
        extra = ""
        if args.backend == "lava" and not fixed:
            extra = (f"; Lava: {info['lava']['extra_zero_steps']} extra zero steps, outputs shifted "
                     f"back by their depth {info['lava']['depth']}")
        if fixed:
            extra = (f"; fixed point ({info['plan']}), {info['extra_zero_steps']} extra zero steps, "
                     f"outputs shifted back by their depth {info['depth']}")
            q = info.get("quantization")
            if q:
                extra += (f"\nquantization: input {q['input_bits']}-bit, scale {q['input_scale']:.4g}"
                          + (" (the bundle's)" if bundle else "") +
                          f", {q['payloads_saturated']}/{q['payloads']} payloads saturated"
                          + (f", {q['weights_saturated']} weights saturated"
                             if "weights_saturated" in q else ""))
            vf = info["vs_float"]
            if vf.get("readout"):
                extra += (f"\noutput {output!r} is the readout {info['readouts'][output]['node']!r}'s "
                          "membrane v in float units; vs the float run of the same graph: "
                          f"correlation {vf['correlation']:.4f}, largest |difference| "
                          f"{vf['max_abs_difference']:.4g} (float |v| up to {vf['float_abs_max']:.4g})")
            else:
                extra += (f"\nvs the float run of the same graph: {vf['equal_fraction']:.2%} of "
                          f"output values equal; spikes {vf['spikes_fixed']:g} (fixed) vs "
                          f"{vf['spikes_float']:g} (float)")
        print(f"dt = {dt:g} s ({dt_source})\n"
              f"backend {args.backend}: {B} sample(s) x {T} steps, input {tuple(in_shape)} -> "
              f"output {output!r} {graph.nodes[output].in_shape} in {info['seconds']:.3f} s{extra}\n"
              + (f"(the graph has {len(graph.outputs)} Output nodes: {', '.join(graph.outputs)}; "
                 "choose with --output)\n" if len(graph.outputs) > 1 else "") +
              f"wrote {args.out} {tuple(y.shape)} float32 (output sum {result['output_sum']:g})")
    return 0
