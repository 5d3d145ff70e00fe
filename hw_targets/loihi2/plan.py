"""The deployment plan: everything the host and any backend need to run the spiking branch on Loihi 2.

One immutable object is the seam between the host (GLP encoding, threshold cues, TSF, transformer)
and whatever runs the chip side (the torch deploy mode, the reference simulator, Lava)::

    float model --quantize.plan_from_float--> DeploymentPlan --save/load--> the same plan
                                                   |
        host: plan.encode_input(currents) -> payloads, plan.theta_to_chip(cues) -> mantissa offsets
        every backend: plan.check_payload(x_t), plan.check_theta(theta_t), then plan.network

What it holds:

- ``network``: the fixed-point ``Dense -> LIF`` stack in Lava ``fixed_pt`` units
  (:class:`~stft_neuro.hw_targets.loihi2.network.FixedPointNetwork`).
- the input port: ``input_bits``-bit graded payloads (the first layer's ``num_message_bits``) and
  ``input_scale``, the float input current of one payload LSB.
- ``threshold_scales[l]``: threshold-mantissa units per float threshold unit of layer ``l``
  (``S_l / 64``, see ``quantize.py``), used to convert the host's threshold cues, and the
  per-layer limits that keep ``vth + theta`` inside Loihi's unsigned 17-bit threshold.
- ``payload_dead_zone`` ``k`` (sparse messages into the chip): the host sends a payload whose
  integer ``|q| <= k`` as 0, i.e. not at all (a zero graded spike is not sent and costs no synaptic
  operation on Loihi). ``k = 0`` (default) is the plain rounding; every backend then refuses a
  payload inside the dead zone, so a run's records show the plan's dead zone was applied.
- timing: ``num_steps`` (T, the steps of one sequence), ``dt`` (seconds per step; Loihi has no
  physical step length, so this is a recorded convention that gives NIR time constants a unit),
  and one step of Dense delay per layer (Lava's ``Dense``: layer ``l`` at step ``t`` integrates
  ``s_{l-1}[t-1]``), so the last layer's response to the input of step ``t`` starts at ``t + L``.

The conversions host -> chip round in float64 (exact for every value they can produce) and clamp to
Loihi's ranges; they return the host's dtype and carry straight-through gradients (``ste.py``), so
deploy-mode training and deployment convert with the same code. The checks raise
:class:`~stft_neuro.hw_targets.errors.ChipInputError` with one message whoever calls them.

Saved as one safetensors file (no pickle): integer arrays as tensors, everything else as JSON in
the header metadata under ``stft_neuro.plan``, with a format name and version. Floats round-trip
exactly (JSON writes ``repr``), so a reloaded plan runs identically.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from stft_neuro.hw_targets.errors import ChipInputError, PlanFormatError
from stft_neuro.hw_targets.loihi2 import constants as C
from stft_neuro.hw_targets.loihi2.network import FixedPointLayer, FixedPointNetwork, PayloadRange
from stft_neuro.hw_targets.loihi2.ste import straight_through

PLAN_FORMAT = "stft-neuro/deployment-plan"
PLAN_VERSION = 1
#: The format version of a plan with a payload dead zone (``payload_dead_zone > 0``): older readers,
#: which would ignore the dead zone, refuse it. A plan without one is written as version 1, unchanged.
PLAN_VERSION_DEAD_ZONE = 2
METADATA_KEY = "stft_neuro.plan"
#: Seconds per algorithmic timestep recorded in plans and NIR exports. Loihi's timestep has no
#: fixed physical length, so this is a convention: 1e-4 s is snnTorch's and the NIR paper's (snnTorch's
#: NIR importer assumes it), so the time constants of an exported graph mean the same there.
DEFAULT_DT_S = 1e-4


@dataclass(frozen=True)
class DeploymentPlan:
    """A frozen fixed-point spiking branch plus the host <-> chip conversions (see module doc)."""

    network: FixedPointNetwork
    input_scale: float
    threshold_scales: tuple[float, ...]
    num_steps: int
    dt: float = DEFAULT_DT_S
    payload_dead_zone: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold_scales", tuple(float(k) for k in self.threshold_scales))
        object.__setattr__(self, "input_scale", float(self.input_scale))
        if isinstance(self.payload_dead_zone, bool) or int(self.payload_dead_zone) != self.payload_dead_zone:
            raise PlanFormatError(f"plan: payload_dead_zone must be an integer, got {self.payload_dead_zone!r}")
        object.__setattr__(self, "payload_dead_zone", int(self.payload_dead_zone))
        _validate(self)

    @classmethod
    def of_network(cls, network: FixedPointNetwork, num_steps: int = 1, *, input_scale: float = 1.0,
                   threshold_scales: tuple[float, ...] | None = None,
                   dt: float = DEFAULT_DT_S) -> "DeploymentPlan":
        """A plan around a network given directly in Loihi units (no float model behind it):
        payload LSB and threshold units of 1 unless given."""
        return cls(network=network, input_scale=input_scale,
                   threshold_scales=threshold_scales or (1.0,) * len(network.layers),
                   num_steps=num_steps, dt=dt)

    # ------------------------------------------------------------------ shape and ranges
    @property
    def num_layers(self) -> int:
        return len(self.network.layers)

    @property
    def n_in(self) -> int:
        return self.network.n_in

    @property
    def sizes(self) -> tuple[int, ...]:
        return self.network.sizes

    @property
    def input_bits(self) -> int:
        return int(self.network.layers[0].num_message_bits)

    @property
    def payload_range(self) -> PayloadRange:
        """Inclusive ``(lo, hi)`` of a signed ``input_bits`` payload: the first layer's
        :attr:`~stft_neuro.hw_targets.loihi2.network.FixedPointLayer.payload`."""
        return self.network.layers[0].payload

    @property
    def vth(self) -> tuple[int, ...]:
        return tuple(int(layer.vth) for layer in self.network.layers)

    @property
    def theta_range(self) -> tuple[tuple[int, int], ...]:
        """Per layer, the inclusive range of theta that keeps ``vth + theta`` in ``[0, VTH_MAX]``."""
        return tuple((-v, C.VTH_MAX - v) for v in self.vth)

    @property
    def delays(self) -> tuple[int, ...]:
        """Steps of delay added by each layer's Dense (Lava: one each)."""
        return (C.DENSE_DELAY_STEPS,) * self.num_layers

    # ------------------------------------------------------------------ host -> chip
    def encode_input(self, currents: Tensor) -> Tensor:
        """Float input currents ``(..., n_in)`` -> graded payloads (same dtype, integer values).

        ``round(x / input_scale)`` (half to even) in float64, clamped to the payload range; larger
        currents saturate; then payloads with ``|q| <= payload_dead_zone`` become 0 (not sent).
        Gradient ``1 / input_scale`` (straight through, dead zone included)."""
        lo, hi = self.payload_range
        exact = torch.round(currents.detach().to(torch.float64) / self.input_scale).clamp_(lo, hi)
        if self.payload_dead_zone:
            exact = apply_dead_zone(exact, self.payload_dead_zone)
        return straight_through(currents, exact.to(currents.dtype), 1.0 / self.input_scale)

    def theta_to_chip(self, theta: Tensor) -> Tensor:
        """Float threshold cues ``(..., L)`` (threshold units) -> mantissa offsets (same dtype).

        ``round(theta_l * threshold_scales[l])`` in float64, clamped to :attr:`theta_range`.
        Gradient ``threshold_scales[l]`` (straight through)."""
        k = torch.tensor(self.threshold_scales, dtype=torch.float64, device=theta.device)
        lo = torch.tensor([r[0] for r in self.theta_range], dtype=torch.float64, device=theta.device)
        hi = torch.tensor([r[1] for r in self.theta_range], dtype=torch.float64, device=theta.device)
        exact = torch.round(theta.detach().to(torch.float64) * k)
        exact = torch.minimum(torch.maximum(exact, lo), hi)
        return straight_through(theta, exact.to(theta.dtype), k.to(theta.dtype))

    # ------------------------------------------------------------------ what a backend accepts
    def check_payload(self, x: Tensor | np.ndarray) -> None:
        """Raise :class:`ChipInputError` unless ``x`` is ``(B, n_in)`` or ``(T, B, n_in)`` finite
        integers within the ``input_bits`` payload range (and, with a dead zone ``k``, none with
        ``0 < |x| <= k``: the host did not apply the plan's dead zone)."""
        lo, hi = self.payload_range
        _check_integers(x, "payload", self.n_in, "inputs", lo, hi,
                        f"the {self.input_bits}-bit payload range [{lo}, {hi}]")
        k = self.payload_dead_zone
        if k:
            t = _as_tensor(x)
            bad = (t != 0) & (t.abs() <= k)
            if bool(bad.any()):
                idx = tuple(int(i) for i in bad.nonzero()[0])
                raise ChipInputError(f"payload: {int(bad.sum())} nonzero values inside the plan's dead "
                                     f"zone |q| <= {k} (the host must send them as 0; first: "
                                     f"{_fmt(t[idx])} at index {idx})")

    def check_theta(self, theta: Tensor | np.ndarray) -> None:
        """Raise :class:`ChipInputError` unless ``theta`` is ``(B, L)`` or ``(T, B, L)`` finite
        integers with ``vth_l + theta_l`` in ``[0, VTH_MAX]`` for every layer ``l``."""
        t = _as_tensor(theta)
        _check_integers(t, "theta", self.num_layers, "layers", None, None, "")
        for l, (lo, hi) in enumerate(self.theta_range):
            col = t[..., l]
            bad = (col < lo) | (col > hi)
            if bool(bad.any()):
                idx = tuple(int(i) for i in bad.nonzero()[0])
                raise ChipInputError(
                    f"theta: {int(bad.sum())} values of layer {l} ({self.network.layers[l].name}) put "
                    f"vth + theta outside [0, {C.VTH_MAX}] (vth = {self.vth[l]}, so theta must lie in "
                    f"[{lo}, {hi}]; first: {_fmt(col[idx])} at index {idx + (l,)})")

    def check_run(self, x: Tensor | np.ndarray, theta: Tensor | np.ndarray | None
                  ) -> tuple[Tensor, Tensor | None]:
        """What every backend's ``run`` checks: ``x`` ``(T, B, n_in)`` payloads and ``theta``
        ``(T, B, L)`` or None, legal and of matching ``(T, B)``. Returns both as tensors."""
        x = _as_tensor(x)
        theta = None if theta is None else _as_tensor(theta)
        self.check_payload(x)
        if x.dim() != 3:
            raise ChipInputError(f"payload: run takes (T, B, {self.n_in}), got {tuple(x.shape)}")
        if theta is not None:
            self.check_theta(theta)
            if tuple(theta.shape[:2]) != tuple(x.shape[:2]):
                raise ChipInputError(f"theta: shape {tuple(theta.shape)} does not match the "
                                     f"payload's (T, B) = {tuple(x.shape[:2])}")
        return x, theta

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """Everything but the arrays, JSON-ready (also the header of a saved plan)."""
        head = {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION_DEAD_ZONE if self.payload_dead_zone else PLAN_VERSION,
            "input_bits": self.input_bits, "input_scale": self.input_scale,
            "threshold_scales": list(self.threshold_scales), "num_steps": int(self.num_steps),
            "dt": float(self.dt), "sizes": list(self.sizes), "delays": list(self.delays),
            "layers": [{"name": layer.name, "weight_exp": int(layer.weight_exp), "du": int(layer.du),
                        "dv": int(layer.dv), "vth": int(layer.vth), "bias_exp": int(layer.bias_exp),
                        "num_message_bits": int(layer.num_message_bits)}
                       for layer in self.network.layers],
        }
        if self.payload_dead_zone:  # absent by default: a plan without one is written as before
            head["payload_dead_zone"] = int(self.payload_dead_zone)
        return head

    def save(self, path: str | Path) -> Path:
        """Write the plan to ``path`` (a ``.safetensors`` file), atomically; returns the path."""
        from safetensors.numpy import save_file

        path = Path(path)
        tensors = {}
        for l, layer in enumerate(self.network.layers):
            tensors[f"layers.{l}.weight"] = np.ascontiguousarray(layer.weight, dtype=np.int32)
            tensors[f"layers.{l}.bias_mant"] = np.ascontiguousarray(layer.bias_mant, dtype=np.int32)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(self.to_dict())})
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "DeploymentPlan":
        """Read a plan written by :meth:`save`; :class:`PlanFormatError` names what is wrong."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise PlanFormatError(f"deployment plan {path} does not exist")
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = (f.metadata() or {}).get(METADATA_KEY)
                arrays = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise PlanFormatError(f"{path} is not a deployment plan (not a readable safetensors "
                                  f"file: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                                  ) from None
        if meta is None:
            raise PlanFormatError(f"{path} is a safetensors file but not a deployment plan "
                                  f"(no {METADATA_KEY!r} metadata)")
        try:
            head = json.loads(meta)
        except json.JSONDecodeError:
            raise PlanFormatError(f"{path}: the plan metadata is not valid JSON") from None
        if head.get("format") != PLAN_FORMAT:
            raise PlanFormatError(f"{path}: format {head.get('format')!r} is not {PLAN_FORMAT!r}")
        dead_zone = bool(head.get("payload_dead_zone", 0))
        if head.get("version") != (PLAN_VERSION_DEAD_ZONE if dead_zone else PLAN_VERSION):
            raise PlanFormatError(f"{path}: plan format version {head.get('version')!r}; this "
                                  f"stft-neuro reads version {PLAN_VERSION} (and "
                                  f"{PLAN_VERSION_DEAD_ZONE} for a plan with a payload dead zone; "
                                  "re-export the plan)")
        try:
            layers = []
            for l, spec in enumerate(head["layers"]):
                layers.append(FixedPointLayer(
                    name=str(spec["name"]), weight=arrays[f"layers.{l}.weight"].astype(np.int64),
                    weight_exp=int(spec["weight_exp"]), du=int(spec["du"]), dv=int(spec["dv"]),
                    vth=int(spec["vth"]), bias_mant=arrays[f"layers.{l}.bias_mant"].astype(np.int64),
                    bias_exp=int(spec["bias_exp"]), num_message_bits=int(spec["num_message_bits"])))
            plan = cls(network=FixedPointNetwork(tuple(layers)), input_scale=float(head["input_scale"]),
                       threshold_scales=tuple(head["threshold_scales"]),
                       num_steps=int(head["num_steps"]), dt=float(head["dt"]),
                       payload_dead_zone=int(head.get("payload_dead_zone", 0)))
        except KeyError as exc:
            raise PlanFormatError(f"{path}: the plan lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, PlanFormatError):
                raise PlanFormatError(f"{path}: {exc}") from None
            raise PlanFormatError(f"{path}: malformed plan ({exc})") from None
        if list(plan.sizes) != list(head.get("sizes", plan.sizes)):
            raise PlanFormatError(f"{path}: layer shapes {plan.sizes} disagree with the recorded "
                                  f"sizes {tuple(head['sizes'])}")
        return plan


def apply_dead_zone(payloads: Tensor, k: int) -> Tensor:
    """Integer payloads with ``|q| <= k`` set to 0 (a new tensor; ``k = 0``: unchanged values)."""
    return payloads.masked_fill(payloads.abs() <= int(k), 0) if k else payloads.clone()


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------

def _as_tensor(x: Tensor | np.ndarray) -> Tensor:
    return x.detach() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


def _fmt(v: Tensor) -> str:
    f = float(v)
    return str(int(f)) if math.isfinite(f) and f == int(f) else repr(f)


def _all_integral(t: Tensor) -> bool:
    """Whether every value of the float tensor ``t`` is an integer. On CPU through numpy: a
    backend checks every step's payload (B x n_in values), and torch's ``round`` of that size
    wakes its intra-op thread pool, which on a machine busy with Lava's process models costs
    milliseconds per call (``bench/bench_bridge.py``: 2.2 ms of a 23 ms step at B = 64)."""
    if t.device.type == "cpu":
        a = t.numpy()
        return bool(np.array_equal(a, np.rint(a)))
    return torch.equal(t, torch.round(t))


def _check_integers(x: Tensor | np.ndarray, what: str, width: int, width_name: str,
                    lo: int | None, hi: int | None, range_text: str) -> None:
    t = _as_tensor(x)
    if t.dim() not in (2, 3) or t.shape[-1] != width:
        raise ChipInputError(f"{what}: expected shape (B, {width}) or (T, B, {width}) for {width} "
                             f"{width_name}, got {tuple(t.shape)}")
    if t.numel() == 0:
        return
    if t.dtype == torch.bool:
        t = t.to(torch.int64)
    # Fast path (two passes: backends check every payload): NaN or inf fail the range test.
    mn, mx = torch.aminmax(t)
    in_range = bool(mn >= (lo if lo is not None else -math.inf)) and bool(mx <= (hi if hi is not None else math.inf))
    if in_range and (not t.is_floating_point() or _all_integral(t)):
        return
    if t.is_floating_point():
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            idx = tuple(int(i) for i in (~finite).nonzero()[0])
            raise ChipInputError(f"{what}: {int((~finite).sum())} values are NaN or infinite "
                                 f"(first at index {idx})")
        frac = t != torch.round(t)
        if bool(frac.any()):
            idx = tuple(int(i) for i in frac.nonzero()[0])
            raise ChipInputError(f"{what}: values must be integers (Loihi units), got "
                                 f"{_fmt(t[idx])} at index {idx}")
    if lo is None:
        return
    bad = (t < lo) | (t > hi)
    idx = tuple(int(i) for i in bad.nonzero()[0])
    raise ChipInputError(f"{what}: {int(bad.sum())} values outside {range_text} "
                         f"(first: {_fmt(t[idx])} at index {idx})")


def _validate(plan: DeploymentPlan) -> None:
    """Structural checks: a plan that passes runs on every backend (design rules are separate)."""
    layers = plan.network.layers
    if not layers:
        raise PlanFormatError("plan: the network has no layers")
    if len(plan.threshold_scales) != len(layers):
        raise PlanFormatError(f"plan: {len(plan.threshold_scales)} threshold scales for "
                              f"{len(layers)} layers")
    for name, value in (("input_scale", plan.input_scale), ("dt", plan.dt),
                        *((f"threshold_scales[{l}]", k) for l, k in enumerate(plan.threshold_scales))):
        if not (math.isfinite(value) and value > 0):
            raise PlanFormatError(f"plan: {name} must be a positive finite number, got {value!r}")
    lo, hi = plan.payload_range if 1 < int(layers[0].num_message_bits) <= C.INPUT_BITS_MAX else (0, 0)
    if not 0 <= plan.payload_dead_zone <= max(-lo, hi):
        raise PlanFormatError(f"plan: payload_dead_zone must lie in [0, {max(-lo, hi)}] (the largest "
                              f"|payload|), got {plan.payload_dead_zone}")
    if int(plan.num_steps) < 1:
        raise PlanFormatError(f"plan: num_steps must be >= 1, got {plan.num_steps}")
    bits0 = int(layers[0].num_message_bits)
    if not 1 < bits0 <= C.INPUT_BITS_MAX:
        raise PlanFormatError(f"plan: layer 0 ({layers[0].name}) must take graded payloads of 2.."
                              f"{C.INPUT_BITS_MAX} bits, has num_message_bits={bits0}")
    n_prev = None
    for l, layer in enumerate(layers):
        where = f"plan: layer {l} ({layer.name})"
        w = np.asarray(layer.weight)
        b = np.asarray(layer.bias_mant)
        if w.ndim != 2 or (n_prev is not None and w.shape[1] != n_prev):
            raise PlanFormatError(f"{where}: weight shape {w.shape} does not take the previous "
                                  f"layer's {n_prev} outputs")
        if b.shape != (w.shape[0],):
            raise PlanFormatError(f"{where}: bias_mant shape {b.shape}, expected ({w.shape[0]},)")
        if l > 0 and int(layer.num_message_bits) != 0:
            raise PlanFormatError(f"{where}: only layer 0 takes graded payloads")
        for name, arr, lo, hi in (("weight", w, C.WEIGHT_MIN_MIXED, C.WEIGHT_MAX_UNSIGNED),
                                  ("bias_mant", b, C.BIAS_MANT_MIN, C.BIAS_MANT_MAX)):
            if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < lo or arr.max() > hi):
                raise PlanFormatError(f"{where}: {name} must be integers in [{lo}, {hi}]")
        for name, value, lo, hi in (("weight_exp", layer.weight_exp, C.WEIGHT_EXP_MIN, C.WEIGHT_EXP_MAX),
                                    ("du", layer.du, 0, C.DECAY_MAX), ("dv", layer.dv, 0, C.DECAY_MAX),
                                    ("vth", layer.vth, 0, C.VTH_MAX),
                                    ("bias_exp", layer.bias_exp, C.BIAS_EXP_MIN, C.BIAS_EXP_MAX)):
            if int(value) != value or not lo <= int(value) <= hi:
                raise PlanFormatError(f"{where}: {name} = {value} outside [{lo}, {hi}]")
        n_prev = w.shape[0]
