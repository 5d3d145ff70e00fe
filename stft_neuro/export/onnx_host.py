"""The host side of the hybrid pipeline as ONNX graphs with a dynamic batch, and a runtime for them.

The chip runs the spiking branch (Dense + LIF); everything else runs on the host (README.md,
"Concepts"). :func:`export_host_onnx` writes the host's part of :class:`~stft_neuro.model.stft.STFT`
as single-file ONNX graphs, so that a deployment needs neither torch nor the training checkpoint
on the host; :class:`OnnxHost` runs them in onnxruntime (CPUExecutionProvider) with the same calls
the torch host makes (``SpikingBranch.encode`` / ``initial_cue`` / ``threshold_cue`` / readout)::

    host_encoder.onnx   audio (B,S,Da), visual (B,S,Dv), lengths (B,)  -> payloads (T,B,n_in), g (B,)
    host_cue0.onnx      g (B,)                                         -> theta (B,L)   for step 0
    host_cue.onnx       spikes_0 (B,n_1) ... spikes_{L-1} (B,n_L), g   -> theta (B,L)   for step t+1
    host_readout.onnx   out_spikes (T,B,n_L), audio, visual, lengths   -> joint (B,E)

Shapes: B batch and S seconds are dynamic (symbolic dims ``"B"`` and ``"S"``); T = ``num_steps``,
the layer widths n_l and the embedding width E are fixed by the model. Units:

- ``payloads``: with a deployment plan, the plan's ``encode_input`` is part of the graph:
  ``clip(round_half_even(x / input_scale), lo, hi)`` in float64, returned as float32 holding
  integers (Loihi ``input_bits`` graded-spike payloads). Without a plan (float deployment, plan
  ``None``) the output is named ``currents`` and holds the float input currents.
- ``theta``: with a plan, ``plan.theta_to_chip`` is part of the graph: per layer
  ``clip(round_half_even(theta_l * threshold_scales[l]), theta_range[l])``, threshold-mantissa
  offsets as float32 integers; without a plan, threshold units of the float model.
- ``g``: the GLP cue ``mean(sigmoid(P)) - 1/2`` (dimensionless, zeros without GLP).
- ``joint``: what ``STFT.forward`` returns as ``"joint"``; the protocol predicts the class whose
  projected embedding (``STFT.embed_classes``) is nearest (Euclidean).

Choices, written down:

- **The initial cue is its own graph** (``host_cue0.onnx``, input ``g`` only) rather than a flag
  input of ``host_cue.onnx``: step 0 has no spikes to feed, a flag would need dummy spike tensors
  and an in-graph ``Where`` that evaluates both branches, and two small graphs are each exactly
  one torch function (``initial_cue``, ``threshold_cue``) composed with ``theta_to_chip``.
- **The readout graph includes the transformer, the Tucker fusion and the projection**: it takes
  the last chip layer's spike record and the features again (the transformer reads the features,
  not the spikes). The TSF readout needs only the last layer's spikes.
- **Graphs are plan-specific**: a plan's conversions are constants in the encoder and cue graphs,
  and the plan's conversion constants are recorded in the graphs' metadata (key
  :data:`METADATA_KEY`), so :meth:`OnnxHost.run` refuses a backend that runs another plan.
- **The transformer's data-dependent input check** (``LatentSemanticTransformer._check`` asks
  ``bool(mask.any(1).all())``, which ``torch.export`` cannot trace) is replaced, on a private copy
  of the model used only for export, by the static part of the check; :class:`OnnxHost` performs
  the dropped check (every sample has ``1 <= lengths <= S``) on the host before running a graph.
  The minimal model change that would make the copy unnecessary: skip that check when
  ``torch.compiler.is_exporting()``.
- Exported with ``torch.onnx.export(..., dynamo=True, dynamic_shapes=..., external_data=False)``
  (``dynamo=True`` needs ``onnxscript``; the legacy exporter breaks dynamic shapes in
  onnxruntime, measured with torch 2.13). The files are written under temporary names and moved
  into place with ``os.replace`` only after every graph exported and loaded in onnxruntime; on
  any failure no new file remains and existing files are untouched.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import time
import types
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from stft_neuro.errors import UserError
from stft_neuro.hw_targets.loihi2.plan import DeploymentPlan
from stft_neuro.model.host import SpikingBranch
from stft_neuro.model.stft import STFT

FORMAT = "stft-neuro/onnx-host"
VERSION = 1
METADATA_KEY = "stft_neuro.onnx_host"
ENCODER_FILE = "host_encoder.onnx"
CUE_FILE = "host_cue.onnx"
CUE0_FILE = "host_cue0.onnx"
READOUT_FILE = "host_readout.onnx"
ALL_FILES = (ENCODER_FILE, CUE0_FILE, CUE_FILE, READOUT_FILE)
BATCH_DIM, SECONDS_DIM = "B", "S"
#: Example sizes used for tracing: distinct and > 1, so that torch.export keeps B and S symbolic
#: and never merges them ("duck sizing" unifies dynamic dims of equal example size).
_EXAMPLE_BATCH, _EXAMPLE_SECONDS = 3, 7
_ONNX_DTYPES = {1: "float32", 6: "int32", 7: "int64", 9: "bool", 11: "float64"}


class OnnxHostError(UserError):
    """A host ONNX graph folder that is missing, corrupted, of another format, or does not fit."""


# ----------------------------------------------------------------------------------------------
# Export wrappers: each is one torch function of the model (same parameters), traced as one graph
# ----------------------------------------------------------------------------------------------

class _EncoderGraph(nn.Module):
    """``SpikingBranch.encode`` then (with a plan) ``plan.encode_input``: -> (T,B,n_in), (B,)."""

    def __init__(self, branch: SpikingBranch, plan: DeploymentPlan | None) -> None:
        super().__init__()
        self.branch, self.plan = branch, plan

    def forward(self, audio: Tensor, visual: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x, g = self.branch.encode(audio, visual, lengths)
        return (x if self.plan is None else self.plan.encode_input(x)), g


class _CueGraph(nn.Module):
    """``SpikingBranch.threshold_cue`` then (with a plan) ``plan.theta_to_chip``.

    ``forward(spikes_0, ..., spikes_{L-1}, g)`` -> theta (B, L) for the next step."""

    varargs = True

    def __init__(self, branch: SpikingBranch, plan: DeploymentPlan | None) -> None:
        super().__init__()
        self.branch, self.plan = branch, plan

    def forward(self, *inputs: Tensor) -> Tensor:
        *spikes, g = inputs
        theta = self.branch.threshold_cue(tuple(spikes), g)
        return theta if self.plan is None else self.plan.theta_to_chip(theta)


class _InitialCueGraph(nn.Module):
    """``SpikingBranch.initial_cue`` then (with a plan) ``plan.theta_to_chip``: g (B,) -> (B, L)."""

    def __init__(self, branch: SpikingBranch, plan: DeploymentPlan | None) -> None:
        super().__init__()
        self.branch, self.plan = branch, plan

    def forward(self, g: Tensor) -> Tensor:
        theta = self.branch.initial_cue(g)
        return theta if self.plan is None else self.plan.theta_to_chip(theta)


class _ReadoutGraph(nn.Module):
    """The joint embedding of ``STFT.forward`` from the received spike record and the features.

    ``forward(out_spikes (T,B,n_L), audio, visual, lengths)`` (without a spiking branch
    ``forward(audio, visual, lengths)``) -> joint (B, E): ``STFT.readout`` of ``STFT.host_part``
    (transformer, TSF readout, spike-pooled features, fusion, skip paths, projection), as
    ``STFT.forward`` makes ``joint`` once the spikes are known."""

    varargs = True

    def __init__(self, model: STFT) -> None:
        super().__init__()
        self.model = model

    def joint(self, out_spikes: Tensor | None, audio: Tensor, visual: Tensor, lengths: Tensor) -> Tensor:
        m = self.model
        return m.readout(m.host_part(audio, visual, lengths), out_spikes)  # (B, E): the one readout

    def forward(self, *inputs: Tensor) -> Tensor:
        if self.model.spiking is None:
            return self.joint(None, *inputs)
        return self.joint(*inputs)


def _static_check(self, audio: Tensor, visual: Tensor, mask: Tensor | None) -> Tensor:
    """Stand-in for ``LatentSemanticTransformer._check`` during export: the shape checks are static
    (the traced shapes are the model's); the data-dependent empty-mask check moves to the host
    (:meth:`OnnxHost._features`)."""
    if mask is None:
        return torch.ones(audio.shape[:2], dtype=torch.bool, device=audio.device)
    return mask.to(torch.bool)


def _export_copy(model: STFT) -> STFT:
    """A private eval-mode CPU copy of ``model`` whose transformer check is traceable (see module doc)."""
    m = copy.deepcopy(model).cpu().eval()
    m.transformer._check = types.MethodType(_static_check, m.transformer)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


# ----------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------

def _plan_constants(plan: DeploymentPlan | None) -> dict[str, Any] | None:
    """The plan's host -> chip conversion constants (JSON): what the graphs have baked in."""
    if plan is None:
        return None
    out = {"input_bits": plan.input_bits, "input_scale": plan.input_scale,
           "payload_range": list(plan.payload_range),
           "threshold_scales": list(plan.threshold_scales),
           "theta_range": [list(r) for r in plan.theta_range],
           "sizes": list(plan.sizes), "num_steps": int(plan.num_steps)}
    if getattr(plan, "payload_dead_zone", 0):  # absent when 0: graphs exported before it stay valid
        out["payload_dead_zone"] = int(plan.payload_dead_zone)
    return out


#: The constants a graph role bakes in (the rest of ``_plan_constants`` is description).
_BAKED = {"encoder": ("input_scale", "payload_range"), "cue0": ("threshold_scales", "theta_range"),
          "cue": ("threshold_scales", "theta_range"), "readout": ()}


def baked_constants_difference(path: str | Path, plan: DeploymentPlan) -> str | None:
    """The first way the host graph at ``path`` does not convert with ``plan``, in one line; None
    if it does. Checks the graph's metadata (``plan`` constants, :data:`METADATA_KEY`) and the
    constants the exporter baked into the graph itself: the encoder's float64 ``input_scale`` and
    payload bounds, the cue graphs' float64 per-layer ``threshold_scales`` and theta bounds (found
    among the graph's float64 initializers and Constant nodes by value: ``torch.onnx`` names them
    freely)."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for a damaged file
        return f"not a readable ONNX graph ({type(exc).__name__})"
    meta = {p.key: p.value for p in model.metadata_props}.get(METADATA_KEY)
    try:
        desc = json.loads(meta) if meta else None
    except json.JSONDecodeError:
        desc = None
    if not isinstance(desc, dict):
        return f"metadata {METADATA_KEY}: missing or not JSON"
    want = _plan_constants(plan)
    got = desc.get("plan") or {}
    for key, val in want.items():
        if got.get(key) != val:
            return f"metadata {METADATA_KEY} plan.{key}: {got.get(key)!r} vs {val!r}"
    f64 = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.DOUBLE]
    for node in model.graph.node:
        if node.op_type == "Constant":
            f64 += [numpy_helper.to_array(a.t) for a in node.attribute
                    if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == onnx.TensorProto.DOUBLE]
    values = [np.asarray(a, np.float64).ravel() for a in f64]

    def present(vec) -> bool:
        v = np.asarray(vec, np.float64).ravel()
        return any(a.shape == v.shape and np.array_equal(a, v) for a in values)

    for key in _BAKED.get(desc.get("role"), ()):
        if key == "payload_range":
            ok = present([want[key][0]]) and present([want[key][1]])
        elif key == "theta_range":
            ok = present([r[0] for r in want[key]]) and present([r[1] for r in want[key]])
        elif key == "input_scale":
            ok = present([want[key]])
        else:
            ok = present(want[key])
        if not ok:
            return f"baked-in constant {key}: the graph holds no float64 constant equal to the plan's {want[key]!r}"
    return None


def _check_export_args(model: STFT, plan: DeploymentPlan | None) -> None:
    if not isinstance(model, STFT):
        raise UserError(f"export_host_onnx: expected an STFT model, got {type(model).__name__}")
    if plan is not None and not isinstance(plan, DeploymentPlan):
        raise UserError(f"export_host_onnx: plan must be a DeploymentPlan or None, got {type(plan).__name__}")
    branch = model.spiking
    if branch is None:
        if plan is not None:
            raise UserError("export_host_onnx: a deployment plan was given but the model has no spiking "
                            "branch (spiking.enabled = false)")
        return
    if plan is None and branch.deploy:
        raise UserError("export_host_onnx: the model's spiking branch runs Loihi fixed point (a QAT/deploy "
                        "run); its host graphs need the calibrated deployment plan "
                        "(model.spiking.deployment_plan()), got plan=None")
    if plan is not None:
        if tuple(plan.sizes) != tuple(branch.chip.sizes):
            raise UserError(f"export_host_onnx: the plan's layer sizes {tuple(plan.sizes)} do not match "
                            f"the model's spiking branch {tuple(branch.chip.sizes)}")
        if int(plan.num_steps) != int(branch.cfg.num_steps):
            raise UserError(f"export_host_onnx: the plan has num_steps={plan.num_steps}, the model "
                            f"{branch.cfg.num_steps}")


def _io_units(model: STFT, plan: DeploymentPlan | None) -> dict[str, str]:
    """Units of every graph input and output, by name (they go into the returned description)."""
    units = {
        "audio": "per-second audio features (float32); seconds at and after lengths[b] are ignored",
        "visual": "per-second visual features (float32); seconds at and after lengths[b] are ignored",
        "lengths": "valid seconds per sample (int64), 1 <= lengths[b] <= S",
        "g": "GLP cue mean(sigmoid(P)) - 1/2 (dimensionless, in (-0.5, 0.5); zeros without GLP)",
        "joint": "joint audio-visual embedding (float32); the prediction is the nearest class embedding "
                 "STFT.embed_classes(w2v) (Euclidean)",
        "out_spikes": "spikes of the last chip layer at every step t = 0..T-1, as received (0/1 float32)",
    }
    if model.spiking is not None:
        for l in range(model.spiking.chip.num_layers):
            units[f"spikes_{l}"] = f"spikes of chip layer {l} at step t (0/1 float32)"
    if plan is None:
        units["currents"] = "input currents of steps t = 0..T-1 in the float model's units (float32)"
        units["theta"] = "threshold modulation per layer in the float model's threshold units (float32)"
    else:
        lo, hi = plan.payload_range
        units["payloads"] = (f"{plan.input_bits}-bit graded-spike payloads of steps t = 0..T-1: integers in "
                             f"[{lo}, {hi}] stored as float32; one LSB = {plan.input_scale!r} float current "
                             "units (plan.encode_input, round half to even)")
        units["theta"] = ("threshold-mantissa offsets per layer: integers stored as float32, layer l clamped "
                          "to plan theta_range[l] (plan.theta_to_chip, round half to even)")
    return units


def _describe_graph(path: Path, file: str, units: dict[str, str]) -> dict[str, Any]:
    """``{file, bytes, opset, inputs, outputs}`` of the ONNX file at ``path`` (to be named ``file``)."""
    import onnx

    m = onnx.load(str(path))

    def values(vs) -> list[dict[str, Any]]:
        out = []
        for v in vs:
            t = v.type.tensor_type
            shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
            out.append({"name": v.name, "shape": shape, "dtype": _ONNX_DTYPES.get(t.elem_type, str(t.elem_type)),
                        "units": units.get(v.name, "")})
        return out

    return {"file": file, "bytes": path.stat().st_size,
            "opset": max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=None),
            "inputs": values(m.graph.input), "outputs": values(m.graph.output)}


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter logs and warns at length (constant folding, dim renames, deprecations):
    silence it for the duration of the export only (levels and filters are restored)."""
    names = ("torch.onnx", "onnxscript", "onnx_ir", "torch.export", "torch._dynamo", "torch.fx")
    saved = {n: logging.getLogger(n).level for n in names}
    try:
        for n in names:
            logging.getLogger(n).setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def _export_one(module: nn.Module, args: tuple, input_names: list[str], output_names: list[str],
                dynamic: tuple, dest: Path, metadata: dict[str, Any]) -> None:
    """Trace ``module`` at ``args`` and write one self-contained ONNX file ``dest`` (with metadata)."""
    if getattr(module, "varargs", False):  # forward(*inputs): torch.export sees one tuple argument
        dynamic = (dynamic,)
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=dynamic,
                                    input_names=input_names, output_names=output_names,
                                    external_data=False, verbose=False)
        program.model.metadata_props[METADATA_KEY] = json.dumps(metadata, sort_keys=True)
        program.save(str(dest), external_data=False)


def export_host_onnx(model: STFT, plan: DeploymentPlan | None, out_dir: str | Path) -> dict[str, Any]:
    """Write the host graphs of ``model`` into ``out_dir``; return their description (JSON-ready).

    Args:
        model: the STFT whose host side to export (not modified: a private eval-mode copy is traced).
        plan: the deployment plan the chip backend runs (its ``encode_input`` / ``theta_to_chip``
            become part of the encoder and cue graphs), or None for a float deployment (float
            currents and threshold units). A model whose spiking branch is in deploy mode needs its
            plan (:class:`~stft_neuro.errors.UserError` otherwise).
        out_dir: folder to write into (created if missing).

    Returns a dict: ``format``, ``version``, ``units`` (``"loihi-fixed-point"`` or ``"float"``),
    ``spiking``, ``dynamic_threshold``, ``num_steps``, ``sizes``, ``plan`` (the conversion constants
    baked into the graphs, or None), ``initial_cue`` (how step 0's cue is obtained), ``graphs``
    (role -> ``{file, bytes, opset, inputs, outputs}``, each input/output ``{name, shape, dtype,
    units}`` with symbolic dims as strings), ``absent`` (role -> why that graph was not written)
    and ``export_seconds``. Graphs of roles that are absent are removed from ``out_dir`` if an
    earlier export left them there.
    """
    _check_export_args(model, plan)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    m = _export_copy(model)
    branch = m.spiking
    dynamic_threshold = bool(branch is not None and branch.cfg.dynamic_threshold)
    head = {"format": FORMAT, "version": VERSION,
            "units": "float" if plan is None else "loihi-fixed-point",
            "spiking": branch is not None, "dynamic_threshold": dynamic_threshold,
            "num_steps": int(branch.cfg.num_steps) if branch is not None else None,
            "sizes": list(branch.chip.sizes) if branch is not None else None,
            "embed_dim": int(m.cfg.fusion.embed_dim),
            "audio_dim": int(m.audio_dim), "visual_dim": int(m.visual_dim),
            "plan": _plan_constants(plan)}
    units = _io_units(m, plan)

    gen = torch.Generator().manual_seed(0)
    B, S = _EXAMPLE_BATCH, _EXAMPLE_SECONDS
    audio = torch.randn(B, S, m.audio_dim, generator=gen)
    visual = torch.randn(B, S, m.visual_dim, generator=gen)
    lengths = torch.tensor([S, 2, S - 2], dtype=torch.int64)
    bdim = torch.export.Dim(BATCH_DIM, min=1)
    sdim = torch.export.Dim(SECONDS_DIM, min=1)
    feat_dyn = ({0: bdim, 1: sdim}, {0: bdim, 1: sdim}, {0: bdim})

    jobs: list[tuple[str, str, nn.Module, tuple, list[str], list[str], tuple]] = []
    absent: dict[str, str] = {}
    if branch is not None:
        T = branch.cfg.num_steps
        jobs.append(("encoder", ENCODER_FILE, _EncoderGraph(branch, plan), (audio, visual, lengths),
                     ["audio", "visual", "lengths"], ["currents" if plan is None else "payloads", "g"],
                     feat_dyn))
        if dynamic_threshold:
            g = torch.rand(B, generator=gen) - 0.5
            spikes = tuple((torch.rand(B, n, generator=gen) < 0.2).float() for n in branch.chip.sizes[1:])
            L = len(spikes)
            jobs.append(("cue0", CUE0_FILE, _InitialCueGraph(branch, plan), (g,), ["g"], ["theta"],
                         ({0: bdim},)))
            jobs.append(("cue", CUE_FILE, _CueGraph(branch, plan), (*spikes, g),
                         [f"spikes_{l}" for l in range(L)] + ["g"], ["theta"],
                         tuple({0: bdim} for _ in range(L + 1))))
        else:
            absent["cue0"] = absent["cue"] = "static thresholds (spiking.dynamic_threshold = false): no cues"
        out_spikes = (torch.rand(T, B, branch.out_dim, generator=gen) < 0.2).float()
        jobs.append(("readout", READOUT_FILE, _ReadoutGraph(m), (out_spikes, audio, visual, lengths),
                     ["out_spikes", "audio", "visual", "lengths"], ["joint"], ({1: bdim}, *feat_dyn)))
    else:
        absent["encoder"] = absent["cue0"] = absent["cue"] = "no spiking branch (spiking.enabled = false)"
        jobs.append(("readout", READOUT_FILE, _ReadoutGraph(m), (audio, visual, lengths),
                     ["audio", "visual", "lengths"], ["joint"], feat_dyn))
    head["initial_cue"] = (f"{CUE0_FILE}: g -> theta of step 0 (no spikes yet); {CUE_FILE} gives steps 1..T-1"
                           if dynamic_threshold else None)
    head["roles"] = {role: file for role, file, *_ in jobs}

    temps: dict[str, Path] = {}
    graphs: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    try:
        for role, file, module, args, in_names, out_names, dyn in jobs:
            tmp = out_dir / f".{file}.tmp-{os.getpid()}"
            temps[file] = tmp
            t0 = time.perf_counter()
            _export_one(module, args, in_names, out_names, dyn, tmp, {**head, "role": role})
            _open_session(tmp, file)  # the file must load in onnxruntime before it is kept
            seconds[role] = round(time.perf_counter() - t0, 3)
            graphs[role] = _describe_graph(tmp, file, units)
        for file, tmp in temps.items():
            os.replace(tmp, out_dir / file)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    written = set(temps)
    for file in ALL_FILES:
        if file not in written:
            (out_dir / file).unlink(missing_ok=True)
    seconds["total"] = round(time.perf_counter() - t_start, 3)
    return {**head, "graphs": graphs, "absent": absent, "export_seconds": seconds}


# ----------------------------------------------------------------------------------------------
# Runtime
# ----------------------------------------------------------------------------------------------

def _open_session(path: Path, name: str | None = None):
    """An onnxruntime CPU session of ``path``; :class:`OnnxHostError` (one line) if it cannot load."""
    import onnxruntime as ort

    name = name or path.name
    if not path.is_file():
        raise OnnxHostError(f"{path.parent / name}: missing (the host ONNX export is incomplete)")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxHostError(f"{path.parent / name}: not a loadable ONNX graph ({first[:200]})") from None


def _as_numpy(x: Any, dtype: np.dtype, what: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    try:
        return np.ascontiguousarray(np.asarray(x), dtype=dtype)
    except (TypeError, ValueError):
        raise UserError(f"OnnxHost: {what} is not a numeric array") from None


class OnnxHost:
    """The exported host graphs in onnxruntime: the torch host's calls, without torch models.

    ``OnnxHost(folder)`` loads the graphs written by :func:`export_host_onnx` (the description in
    their metadata says which exist). Every method takes numpy arrays or torch tensors and returns
    numpy arrays (float32). Shapes as in the module doc; ``spikes`` are 0/1.

    - :meth:`encode` (audio (B,S,Da), visual (B,S,Dv), lengths (B,)) -> (payloads (T,B,n_in), g (B,))
    - :meth:`initial_cue` (g) -> theta (B,L) for step 0
    - :meth:`cue` (spikes_t: L arrays (B,n_l), g) -> theta (B,L) for step t+1
    - :meth:`readout` (out_spikes (T,B,n_L) or None, audio, visual, lengths) -> joint (B,E)
    - :meth:`run` (audio, visual, lengths, backend) -> the closed loop through the step contract
      (``stft_neuro.closed_loop``, with :meth:`chip_input` / :meth:`chip_theta0` / :meth:`chip_theta`).

    Payloads and thetas are in the units of :attr:`description` ``["units"]``: Loihi integers of
    the exported plan, or float units.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise OnnxHostError(f"{self.folder}: not a folder of host ONNX graphs")
        readout = _open_session(self.folder / READOUT_FILE)
        meta = readout.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if meta is None:
            raise OnnxHostError(f"{self.folder / READOUT_FILE}: not an stft-neuro host graph "
                                f"(no {METADATA_KEY!r} metadata)")
        try:
            desc = json.loads(meta)
        except json.JSONDecodeError:
            raise OnnxHostError(f"{self.folder / READOUT_FILE}: its metadata is not valid JSON") from None
        if desc.get("format") != FORMAT or desc.get("version") != VERSION:
            raise OnnxHostError(f"{self.folder / READOUT_FILE}: format {desc.get('format')!r} version "
                                f"{desc.get('version')!r}; this stft-neuro reads {FORMAT!r} version {VERSION}")
        self.description: dict[str, Any] = desc
        self._sessions = {"readout": readout}
        for role, file in desc["roles"].items():
            if role == "readout":
                continue
            sess = _open_session(self.folder / file)
            other = sess.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
            try:
                other_desc = json.loads(other) if other else {}
            except json.JSONDecodeError:
                other_desc = {}
            if other_desc.get("role") != role:
                raise OnnxHostError(f"{self.folder / file}: not the {role} graph (its metadata says "
                                    f"{other_desc.get('role')!r})")
            if {k: v for k, v in other_desc.items() if k != "role"} != {
                    k: v for k, v in desc.items() if k != "role"}:
                raise OnnxHostError(f"{self.folder / file}: belongs to another export than "
                                    f"{READOUT_FILE} (their metadata differ)")
            self._sessions[role] = sess

    # -- what the graphs are ---------------------------------------------------------------------
    @property
    def spiking(self) -> bool:
        return bool(self.description["spiking"])

    @property
    def dynamic_threshold(self) -> bool:
        return bool(self.description["dynamic_threshold"])

    @property
    def fixed_point(self) -> bool:
        """True when payloads and thetas are Loihi integers of the exported plan."""
        return self.description["units"] == "loihi-fixed-point"

    @property
    def num_steps(self) -> int | None:
        return self.description["num_steps"]

    # -- the calls -------------------------------------------------------------------------------
    def _features(self, audio, visual, lengths) -> dict[str, np.ndarray]:
        d = self.description
        a = _as_numpy(audio, np.float32, "audio")
        v = _as_numpy(visual, np.float32, "visual")
        n = _as_numpy(lengths, np.int64, "lengths")
        if a.ndim != 3 or a.shape[-1] != d["audio_dim"]:
            raise UserError(f"OnnxHost: audio must be (B, S, {d['audio_dim']}), got {a.shape}")
        if v.ndim != 3 or v.shape[-1] != d["visual_dim"]:
            raise UserError(f"OnnxHost: visual must be (B, S, {d['visual_dim']}), got {v.shape}")
        if a.shape[:2] != v.shape[:2] or n.shape != a.shape[:1]:
            raise UserError(f"OnnxHost: audio {a.shape}, visual {v.shape} and lengths {n.shape} must "
                            "share B (and audio, visual S)")
        if a.shape[0] == 0 or a.shape[1] == 0:
            raise UserError(f"OnnxHost: empty batch or sequence (audio {a.shape})")
        bad = (n < 1) | (n > a.shape[1])
        if bad.any():
            raise UserError(f"OnnxHost: lengths must lie in [1, S={a.shape[1]}]; samples "
                            f"{np.flatnonzero(bad)[:8].tolist()} have {n[bad][:8].tolist()}")
        return {"audio": a, "visual": v, "lengths": n}

    def _need(self, role: str) -> Any:
        if role not in self._sessions:
            raise UserError(f"OnnxHost: this export has no {role} graph "
                            f"({self.description.get('absent', {}).get(role) or 'see its description'})")
        return self._sessions[role]

    def encode(self, audio, visual, lengths) -> tuple[np.ndarray, np.ndarray]:
        """-> payloads (T, B, n_in) (or float currents) and the GLP cue g (B,)."""
        x, g = self._need("encoder").run(None, self._features(audio, visual, lengths))
        return x, g

    def initial_cue(self, g) -> np.ndarray:
        """Theta of step 0 from the GLP cue ``g`` (B,) -> (B, L)."""
        return self._need("cue0").run(None, {"g": _as_numpy(g, np.float32, "g")})[0]

    def cue(self, spikes_t: Sequence[Any], g) -> np.ndarray:
        """Theta of step t+1 from every chip layer's spikes of step t (L arrays (B, n_l)) and g."""
        sess = self._need("cue")
        sizes = self.description["sizes"][1:]
        if len(spikes_t) != len(sizes):
            raise UserError(f"OnnxHost.cue: expected spikes of {len(sizes)} layers, got {len(spikes_t)}")
        feeds = {f"spikes_{l}": _as_numpy(s, np.float32, f"spikes_{l}") for l, s in enumerate(spikes_t)}
        feeds["g"] = _as_numpy(g, np.float32, "g")
        return sess.run(None, feeds)[0]

    def readout(self, out_spikes, audio, visual, lengths) -> np.ndarray:
        """Joint embedding (B, E) from the last layer's spikes (T, B, n_L) (None without a spiking
        branch) and the same features the encoder saw."""
        feeds = self._features(audio, visual, lengths)
        if self.spiking:
            if out_spikes is None:
                raise UserError("OnnxHost.readout: this model has a spiking branch; give its spike record")
            feeds["out_spikes"] = _as_numpy(out_spikes, np.float32, "out_spikes")
        return self._sessions["readout"].run(None, feeds)[0]

    def check_backend(self, backend: Any) -> None:
        """Refuse a backend whose units differ from the graphs' (call after ``backend.reset``):
        the host must convert with the plan the backend runs, and the graphs have one plan built in."""
        self.check_plan(getattr(backend, "plan", None))

    def check_plan(self, plan: DeploymentPlan | None) -> None:
        """:meth:`check_backend` for a backend that runs ``plan`` (None: a float backend)."""
        if self.fixed_point:
            if plan is None:
                raise UserError("OnnxHost: the graphs send Loihi integers of a plan; the backend is a float "
                                "backend (plan None)")
            mine, theirs = self.description["plan"], _plan_constants(plan)
            keys = [k for k in {**mine, **theirs}
                    if self.dynamic_threshold or k not in ("threshold_scales", "theta_range")]
            if any(mine.get(k) != theirs.get(k) for k in keys):  # static thresholds: no cue graph converts theta
                raise UserError("OnnxHost: the backend runs a different deployment plan than the one the "
                                "host graphs were exported with (input scale, threshold scales or sizes differ)")
        elif plan is not None:
            raise UserError("OnnxHost: the graphs were exported for a float backend; this backend runs a "
                            "fixed-point plan")

    # -- the host's side of the closed loop (stft_neuro.closed_loop.LoopHost) ---------------------
    def chip_input(self, x, plan) -> Tensor:
        """The encoder's output (payloads or currents, (T, B, n_in)) as sent: already in the
        graphs' units, which must be the backend's (:meth:`check_backend` with ``plan``)."""
        self.check_plan(plan)
        return torch.from_numpy(np.asarray(x))

    def chip_theta0(self, g, plan) -> Tensor:
        """:meth:`initial_cue` as a tensor (B, L), in the graphs' units."""
        return torch.from_numpy(self.initial_cue(g))

    def chip_theta(self, spikes_t, g, plan) -> Tensor:
        """:meth:`cue` of step t's spikes (L tensors (B, n_l)) as a tensor (B, L)."""
        return torch.from_numpy(self.cue(tuple(s.detach().cpu().float().numpy() for s in spikes_t), g))

    def run(self, audio, visual, lengths, backend: Any, stop: Any = None) -> dict[str, Any]:
        """The hybrid closed loop, as ``STFT.forward`` runs it with ``backend``: encode, then
        :func:`~stft_neuro.closed_loop.closed_loop` with these graphs as the host, then the readout.

        Returns ``joint`` (B, E), ``spikes`` (a tuple of L arrays (T, B, n_l), 0/1 float32), with
        dynamic thresholds ``theta`` (T, B, L) as sent, and ``record`` (the loop's
        :class:`~stft_neuro.closed_loop.SpikeRecord`: spikes, thetas and payloads sent, torch).
        ``backend`` follows the step contract (``stft_neuro.contract``), e.g.
        ``ReferenceSimulator(plan)``. ``stop``: an early-exit rule of the loop
        (``closed_loop.StopRule``; ``record.steps`` then says how many steps each sample ran)."""
        from stft_neuro.closed_loop import closed_loop

        if not self.spiking:
            return {"joint": self.readout(None, audio, visual, lengths)}
        x, g = self.encode(audio, visual, lengths)
        record = closed_loop(self, backend, x, g, stop=stop)
        spikes = tuple(s.detach().cpu().float().numpy() for s in record.spikes)
        out: dict[str, Any] = {"spikes": spikes, "record": record}
        if record.theta is not None:
            out["theta"] = record.theta.detach().cpu().numpy()
        out["joint"] = self.readout(spikes[-1], audio, visual, lengths)
        return out


# ----------------------------------------------------------------------------------------------
# Comparison with the torch host
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def compare_with_torch(model: STFT, host: OnnxHost, audio, visual, lengths, backend_factory=None,
                       class_embeddings: Tensor | None = None) -> dict[str, Any]:
    """Run the torch host and the ONNX host on the same samples; count where they differ.

    Args:
        model: the STFT the graphs were exported from (run in eval mode; not modified otherwise).
        host: the loaded graphs.
        audio, visual, lengths: one batch of samples (torch tensors).
        backend_factory: ``() -> backend`` for the closed loops (a fresh one per loop, so that both
            hosts drive identical backends); default ``ReferenceSimulator(plan)`` for fixed-point
            graphs and the model's own float ``ChipNetwork`` for float graphs.
        class_embeddings: (C, E) projected class embeddings; when given, the nearest-class
            predictions of both closed loops are compared.

    Per graph, fed identical inputs (the torch closed loop's spikes and g for the cues, replayed
    through :func:`~stft_neuro.closed_loop.closed_loop`; its spikes for the readout):
    ``max_abs_diff`` of float outputs; for integer outputs (payloads, thetas) ``mismatches``
    (count of values that differ), ``total`` and ``max_abs_diff`` in LSBs. ``closed_loop``: each
    host drives its own backend; ``joint_max_abs_diff``, ``spike_mismatches``,
    ``samples_diverged`` (samples whose spike record differs anywhere) and, with class embeddings,
    ``prediction_mismatches``.
    """
    model = model.eval()
    a, v, n = audio, visual, lengths
    out: dict[str, Any] = {"batch": int(n.shape[0])}
    if backend_factory is None:
        if host.fixed_point:
            from stft_neuro.sim.reference import ReferenceSimulator
            plan = model.spiking.deployment_plan()[0] if model.spiking is not None else None
            if plan is None or _plan_constants(plan) != host.description["plan"]:
                raise UserError("compare_with_torch: give backend_factory (the model's own plan is not "
                                "the plan the graphs were exported with)")
            backend_factory = lambda: ReferenceSimulator(plan)  # noqa: E731
        else:
            backend_factory = lambda: (model.spiking.chip if model.spiking is not None else None)  # noqa: E731

    def int_stats(ours: np.ndarray, ref: Tensor) -> dict[str, Any]:
        diff = np.abs(ours.astype(np.float64) - ref.double().numpy())
        return {"mismatches": int((diff != 0).sum()), "total": int(diff.size),
                "max_abs_diff": float(diff.max(initial=0.0))}

    def float_stats(ours: np.ndarray, ref: Tensor) -> dict[str, Any]:
        return {"max_abs_diff": float(np.abs(ours.astype(np.float64) - ref.double().numpy()).max(initial=0.0))}

    ref_backend = backend_factory()
    ref = model(a, v, n, backend=ref_backend)
    br = model.spiking
    if br is not None:
        _, g_t = br.encode(a, v, n)
        x_o, g_o = host.encode(a, v, n)
        sent = ref["record"].sent  # what the torch host sent: payloads, or float currents
        if host.fixed_point:
            out["payloads"] = int_stats(x_o, sent)
        else:
            out["currents"] = float_stats(x_o, sent)
        out["g"] = float_stats(g_o, g_t)
        if host.dynamic_threshold:
            # the ONNX host's thetas given the torch loop's spikes and g: the one closed loop, with
            # a backend that replays those spikes (row t: the cue of step t-1's spikes)
            from stft_neuro.closed_loop import Replay, closed_loop

            ours = closed_loop(host, Replay(ref["spikes"], ref_backend.plan), x_o, g_t).theta
            stats = int_stats if host.fixed_point else float_stats
            out["cue0"] = stats(ours[0].numpy(), ref["theta"][0])
            out["cue"] = stats(ours[1:].numpy(), ref["theta"][1:])
        out["readout"] = float_stats(host.readout(ref["spikes"][-1], a, v, n), ref["joint"])
    else:
        out["readout"] = float_stats(host.readout(None, a, v, n), ref["joint"])

    loop = host.run(a, v, n, backend_factory()) if br is not None else host.run(a, v, n, None)
    cl: dict[str, Any] = {"joint_max_abs_diff": float_stats(loop["joint"], ref["joint"])["max_abs_diff"]}
    if br is not None:
        diverged = np.zeros(int(n.shape[0]), dtype=bool)
        mism = 0
        for ours_l, ref_l in zip(loop["spikes"], ref["spikes"]):
            d = ours_l != ref_l.float().numpy()
            mism += int(d.sum())
            diverged |= d.any(axis=(0, 2))
        cl["spike_mismatches"] = mism
        cl["samples_diverged"] = int(diverged.sum())
        if "theta" in loop:
            d = np.abs(loop["theta"].astype(np.float64) - ref["theta"].double().numpy())
            if host.fixed_point:
                cl["theta_mismatches"] = int((d != 0).sum())
            else:
                cl["theta_max_abs_diff"] = float(d.max(initial=0.0))
    if class_embeddings is not None:
        from stft_neuro.protocol import distances

        ce = class_embeddings.detach().cpu().numpy()
        p_onnx = distances(loop["joint"], ce).argmin(1)
        p_torch = distances(ref["joint"].cpu().numpy(), ce).argmin(1)
        cl["prediction_mismatches"] = int((p_onnx != p_torch).sum())
    out["closed_loop"] = cl
    return out
