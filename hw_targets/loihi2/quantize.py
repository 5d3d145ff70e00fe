"""From float Dense + LIF layers to Loihi 2's fixed-point units (:class:`FixedPointNetwork`), and the
straight-through fake-quantizers that quantization-aware training uses.

The float model is Lava's ``floating_pt`` LIF with a one-step Dense delay (see ``arithmetic.py``)::

    a[t]  = W_f @ s_prev[t-1]            (s_prev of the first layer: the host's input currents x)
    u[t]  = u[t-1] * (1 - du_f) + a[t]
    v[t]  = v[t-1] * (1 - dv_f) + u[t] + b_f
    s[t]  = v[t] > threshold_f;  v[t] = 0 where s[t]

Per layer the integer model is the float model scaled by a state scale ``S`` (integer LSBs of u and
v per float unit). With ``in_scale`` the float value of one input LSB (the host input's
quantization step for layer 0; 1 for binary spikes) and ``k`` the weight scale (integer weight
per float weight):

    W_int = k * W_f,   S = k * 2**(6 + weight_exp) / in_scale,   vth = S * threshold_f / 64,
    bias_mant << bias_exp = S * b_f,   du = 4096 * du_f - 1,   dv = 4096 * dv_f,
    theta (mantissa) = (S / 64) * theta_f (threshold units)  -> ``LayerScales.threshold_scale``.

Choices (documented here because the hardware does not dictate them):

- ``k`` maps the largest ``|W_f|`` (or its ``weight_clip_percentile``) to the largest weight of
  the sign mode (254 for mixed signs, where Lava keeps only even weights; 255 for one-signed), so
  weights use the full 8 bits and, at 100 %, none saturate.
- ``weight_exp`` is the largest exponent in ``[WEIGHT_EXP_MIN, WEIGHT_EXP_MAX]`` for which
  ``vth <= VTH_MAX >> threshold_headroom_bits`` (headroom for positive threshold modulation and
  for v overshooting the threshold) and the worst-case Dense output fits Loihi's 16-bit synaptic
  input (``A_OUT_BITS``; then no single step's input can wrap the 24-bit ``u``); a larger exponent
  means a finer threshold. For the STFT input layer (512 graded 8-bit inputs) the 16-bit bound is
  the binding one: it costs threshold resolution (vth of a few hundred instead of ~32k) but makes
  the network pass every design rule.
- Mixed-sign weights are rounded to the nearest *even* integer, so Lava's truncation of the
  lowest bit (``lava.utils.weightutils.truncate_weights``) is the identity on them.
- ``bias_exp`` is the smallest exponent whose mantissa fits 13 bits.

All functions are pure: they return new objects and never modify their arguments.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from stft_neuro.hw_targets.loihi2 import constants as C
from stft_neuro.hw_targets.loihi2.arithmetic import LayerArith
from stft_neuro.hw_targets.loihi2.weights import weight_range, weight_sign_mode
from stft_neuro.hw_targets.loihi2.network import FixedPointLayer, FixedPointNetwork


@dataclass(frozen=True)
class FloatLayer:
    """One float ``Dense -> LIF`` layer (Lava ``floating_pt`` units, per step).

    Attributes:
        name: layer name.
        weight: ``(n_out, n_in)`` float weights.
        bias: ``(n_out,)`` float bias (added to v every step).
        du, dv: decay fractions per step in ``[0, 1]`` (``u *= 1 - du``).
        threshold: spike threshold (float, > 0).
    """

    name: str
    weight: np.ndarray
    bias: np.ndarray
    du: float
    dv: float
    threshold: float


@dataclass(frozen=True)
class LayerScales:
    """How one layer's float quantities map to integers (see module docstring).

    ``weight_scale``: k, integer weight per float weight. ``state_scale``: S, integer u/v LSBs per
    float unit. ``threshold_scale``: ``S / 64``, threshold mantissa per float threshold unit (use it
    to convert the host's threshold modulation). ``in_scale``: float value of one input LSB.
    """

    weight_scale: float
    weight_exp: int
    state_scale: float
    threshold_scale: float
    in_scale: float
    sign_mode: str


@dataclass(frozen=True)
class LayerQuantInfo:
    """What quantizing one layer did: scales, saturation counts, rounding errors."""

    name: str
    scales: LayerScales
    n_weights: int
    weights_saturated: int        # weights clipped at the range of their sign mode
    weights_zeroed: int           # nonzero float weights that became 0
    max_weight_error: float       # max |W_int / k - W_f| (float weight units)
    vth: int
    threshold_error: float        # |vth / threshold_scale - threshold_f|
    bias_saturated: int
    du: int
    dv: int
    decay_error: tuple[float, float]  # |effective - float| of (du, dv) fractions
    a_out_bound: int              # largest possible |Dense output| (worst case, all inputs max)
    a_out_fits: bool              # a_out_bound within A_OUT_BITS (Loihi 2's 16-bit dendrite)


@dataclass(frozen=True)
class QuantizationReport:
    layers: tuple[LayerQuantInfo, ...]
    input_scale: float
    input_bits: int

    @property
    def weights_saturated(self) -> int:
        return sum(i.weights_saturated for i in self.layers)

    def summary(self) -> str:
        lines = [f"input: {self.input_bits}-bit graded, scale {self.input_scale:.4g}"]
        for i in self.layers:
            lines.append(
                f"{i.name}: k={i.scales.weight_scale:.4g} weight_exp={i.scales.weight_exp} "
                f"vth={i.vth} sat={i.weights_saturated}/{i.n_weights} zeroed={i.weights_zeroed} "
                f"bias_sat={i.bias_saturated} a_out_bound={i.a_out_bound}"
                f"{'' if i.a_out_fits else ' (exceeds 16 bits)'}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Scalars
# ----------------------------------------------------------------------------------------------

def decay_to_int(du: float, dv: float) -> tuple[int, int]:
    """Float decay fractions -> Lava's 12-bit ``(du, dv)`` (``du`` net of ``ds_offset``), clipped."""
    du_i = int(np.clip(round(du * C.DECAY_UNITY) - C.DS_OFFSET, 0, C.DECAY_MAX))
    dv_i = int(np.clip(round(dv * C.DECAY_UNITY) - C.DM_OFFSET, 0, C.DECAY_MAX))
    return du_i, dv_i


def decay_to_float(du: int, dv: int) -> tuple[float, float]:
    """Lava's ``(du, dv)`` -> the decay fractions they implement (up to rounding toward zero)."""
    return (du + C.DS_OFFSET) / C.DECAY_UNITY, (dv + C.DM_OFFSET) / C.DECAY_UNITY


def input_scale_for(max_abs_input: float, input_bits: int) -> float:
    """The input scale that maps ``max_abs_input`` to the largest ``input_bits``-bit payload."""
    if not 1 < input_bits <= C.INPUT_BITS_MAX:
        raise ValueError(f"input_scale_for: input_bits={input_bits} outside [2, {C.INPUT_BITS_MAX}]")
    return float(max_abs_input) / (2 ** (input_bits - 1) - 1) if max_abs_input > 0 else 1.0


def quantize_input(x: Tensor, input_scale: float, input_bits: int) -> Tensor:
    """Host input currents -> signed ``input_bits`` graded payloads (float tensor of integers).

    ``round(x / input_scale)`` clipped to ``[-(2**(b-1)), 2**(b-1) - 1]``; straight-through gradient
    ``1 / input_scale``."""
    lo, hi = -(2 ** (input_bits - 1)), 2 ** (input_bits - 1) - 1
    y = x / input_scale
    return y + (torch.round(y).clamp(lo, hi) - y).detach()


def choose_layer_scales(max_abs_weight: float, threshold: float, in_scale: float,
                        sign_mode: str = "mixed", threshold_headroom_bits: int = 2,
                        max_row_abs_sum: float = 0.0, n_in: int = 0, payload_max: int = 1
                        ) -> LayerScales:
    """Pick ``k`` and ``weight_exp`` for a layer (rules in the module docstring).

    ``max_row_abs_sum`` (largest ``sum_i |W_f[j, i]|``), ``n_in`` and ``payload_max`` bound the Dense
    output: the exponent is also small enough that the worst case,
    ``(k * max_row_abs_sum + n_in) * payload_max * 2**weight_exp`` (``+ n_in``: rounding adds at
    most one per weight), fits the 16-bit synaptic input, so no input can wrap ``u`` in one step.
    """
    if threshold <= 0:
        raise ValueError(f"choose_layer_scales: threshold must be > 0, got {threshold}")
    lo, hi, _ = weight_range(sign_mode)
    w_max = max(abs(lo), abs(hi)) if sign_mode != "mixed" else C.WEIGHT_MAX_MIXED
    k = w_max / max_abs_weight if max_abs_weight > 0 else 1.0
    vth_cap = C.VTH_MAX >> threshold_headroom_bits
    exp = C.WEIGHT_EXP_MIN
    for e in range(C.WEIGHT_EXP_MAX, C.WEIGHT_EXP_MIN - 1, -1):
        a_bound = (k * max_row_abs_sum + n_in) * payload_max * 2.0 ** e
        if k * 2.0 ** e * threshold / in_scale <= vth_cap and a_bound <= C.A_OUT_MAX:
            exp = e
            break
    else:  # even the smallest exponent overflows the threshold or the 16-bit input: fewer weight bits
        k = min(k, vth_cap * in_scale / (2.0 ** exp * threshold))
        if max_row_abs_sum > 0:
            k = min(k, (C.A_OUT_MAX / (payload_max * 2.0 ** exp) - n_in) / max_row_abs_sum)
    s = k * 2.0 ** (C.ACT_SHIFT + exp) / in_scale
    return LayerScales(weight_scale=k, weight_exp=exp, state_scale=s,
                       threshold_scale=s / 2 ** C.VTH_SHIFT, in_scale=in_scale,
                       sign_mode=sign_mode)


def _round_weights(w: np.ndarray, k: float, sign_mode: str) -> np.ndarray:
    lo, hi, step = weight_range(sign_mode)
    return np.clip(np.round(w * k / step) * step, lo, hi).astype(np.int64)


def _bias_to_int(b_int: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Scaled float bias -> (mantissa, exponent, number saturated)."""
    mx = float(np.abs(b_int).max(initial=0.0))
    exp = C.BIAS_EXP_MIN
    while exp < C.BIAS_EXP_MAX and mx / 2 ** exp > C.BIAS_MANT_MAX:
        exp += 1
    m = np.round(b_int / 2 ** exp)
    sat = int(((m < C.BIAS_MANT_MIN) | (m > C.BIAS_MANT_MAX)).sum())
    return np.clip(m, C.BIAS_MANT_MIN, C.BIAS_MANT_MAX).astype(np.int64), exp, sat


# ----------------------------------------------------------------------------------------------
# Whole network
# ----------------------------------------------------------------------------------------------

def quantize_layer(layer: FloatLayer, in_scale: float, num_message_bits: int, *,
                   weight_clip_percentile: float = 100.0, threshold_headroom_bits: int = 2
                   ) -> tuple[FixedPointLayer, LayerQuantInfo]:
    """One float layer -> :class:`FixedPointLayer` plus what it cost."""
    w = np.asarray(layer.weight, dtype=np.float64)
    mode = weight_sign_mode(w)
    ref = float(np.percentile(np.abs(w), weight_clip_percentile)) if w.size else 0.0
    pmax = 1 if num_message_bits == 0 else 2 ** (num_message_bits - 1)
    sc = choose_layer_scales(ref, layer.threshold, in_scale, mode, threshold_headroom_bits,
                             float(np.abs(w).sum(axis=1).max(initial=0.0)), w.shape[1], pmax)
    lo, hi, _ = weight_range(mode)
    wk = w * sc.weight_scale
    w_int = _round_weights(w, sc.weight_scale, mode)
    bias_mant, bias_exp, bias_sat = _bias_to_int(np.asarray(layer.bias, np.float64) * sc.state_scale)
    du, dv = decay_to_int(layer.du, layer.dv)
    vth = int(np.clip(round(layer.threshold * sc.threshold_scale), 0, C.VTH_MAX))
    acc = int(np.abs(w_int).sum(axis=1).max(initial=0)) * pmax
    a_bound = acc << sc.weight_exp if sc.weight_exp >= 0 else -((-acc) >> -sc.weight_exp)
    eff_du, eff_dv = decay_to_float(du, dv)
    fixed = FixedPointLayer(name=layer.name, weight=w_int, weight_exp=sc.weight_exp, du=du, dv=dv,
                            vth=vth, bias_mant=bias_mant, bias_exp=bias_exp,
                            num_message_bits=num_message_bits)
    info = LayerQuantInfo(
        name=layer.name, scales=sc, n_weights=int(w.size),
        weights_saturated=int(((wk < lo - 0.5) | (wk > hi + 0.5)).sum()),
        weights_zeroed=int(((w_int == 0) & (w != 0)).sum()),
        max_weight_error=float(np.abs(w_int / sc.weight_scale - w).max(initial=0.0)),
        vth=vth, threshold_error=abs(vth / sc.threshold_scale - layer.threshold),
        bias_saturated=bias_sat, du=du, dv=dv,
        decay_error=(abs(eff_du - layer.du), abs(eff_dv - layer.dv)),
        a_out_bound=a_bound, a_out_fits=a_bound <= C.A_OUT_MAX)
    return fixed, info


def quantize_network(layers: Sequence[FloatLayer], input_scale: float, input_bits: int = 8, *,
                     weight_clip_percentile: float = 100.0, threshold_headroom_bits: int = 2
                     ) -> tuple[FixedPointNetwork, QuantizationReport]:
    """Float layers -> :class:`FixedPointNetwork` + :class:`QuantizationReport`.

    Layer 0 receives the host's input quantized by :func:`quantize_input` (``input_scale``,
    ``input_bits``-bit graded spikes); later layers receive binary spikes (``in_scale = 1``).
    """
    if not 1 < input_bits <= C.INPUT_BITS_MAX:
        raise ValueError(f"quantize_network: input_bits={input_bits} outside [2, {C.INPUT_BITS_MAX}]")
    fixed, infos = [], []
    for l, layer in enumerate(layers):
        f, i = quantize_layer(layer, input_scale if l == 0 else 1.0, input_bits if l == 0 else 0,
                              weight_clip_percentile=weight_clip_percentile,
                              threshold_headroom_bits=threshold_headroom_bits)
        fixed.append(f)
        infos.append(i)
    return FixedPointNetwork(tuple(fixed)), QuantizationReport(tuple(infos), input_scale, input_bits)


# ----------------------------------------------------------------------------------------------
# Quantization-aware training (straight-through)
# ----------------------------------------------------------------------------------------------

def fake_quantize_weight(w: Tensor, scale: float | Tensor, sign_mode: str = "mixed") -> Tensor:
    """Float weights -> float tensor holding the Lava-effective integer weights ``W_int``.

    Forward: ``clip(step * round(w * scale / step), lo, hi)`` exactly as :func:`quantize_layer`
    (step 2 for mixed signs). Backward: straight through, ``dW_int/dw = scale``.
    """
    lo, hi, step = weight_range(sign_mode)
    y = w * scale
    q = (torch.round(y / step) * step).clamp(lo, hi)
    return y + (q - y).detach()


def fake_quantize_int(x: Tensor, lo: float | None = None, hi: float | None = None) -> Tensor:
    """``round(x)`` (optionally clipped), straight-through gradient 1."""
    q = torch.round(x)
    if lo is not None or hi is not None:
        q = q.clamp(lo, hi)
    return x + (q - x).detach()


def qat_layer_arith(weight: Tensor, bias: Tensor, du: float, dv: float, threshold: float,
                    in_scale: float, num_message_bits: int = 0, *,
                    threshold_headroom_bits: int = 2) -> tuple[LayerArith, LayerScales]:
    """Deploy-mode parameters of one layer for :func:`arithmetic.chip_step`, differentiable.

    ``weight`` ``(n_out, n_in)`` and ``bias`` ``(n_out,)`` are the float parameters (tensors with
    gradients). The scales are chosen from their current values (no gradient through the choice),
    exactly as :func:`quantize_layer` would, so ``chip_step`` with these parameters equals the
    ``ReferenceSimulator`` / Lava run of ``quantize_network`` of the same float layers.
    Returns ``(LayerArith, LayerScales)``; weights and bias hold integers, gradients straight-through.
    """
    w_det = weight.detach().cpu().double().numpy()
    mode = weight_sign_mode(w_det)
    pmax = 1 if num_message_bits == 0 else 2 ** (num_message_bits - 1)
    sc = choose_layer_scales(float(np.abs(w_det).max(initial=0.0)), threshold, in_scale, mode,
                             threshold_headroom_bits, float(np.abs(w_det).sum(axis=1).max(initial=0.0)),
                             w_det.shape[1], pmax)
    w_int = fake_quantize_weight(weight, sc.weight_scale, mode)
    b_scaled = bias * sc.state_scale
    _, bias_exp, _ = _bias_to_int(b_scaled.detach().cpu().double().numpy())
    b_int = fake_quantize_int(b_scaled / 2 ** bias_exp, C.BIAS_MANT_MIN, C.BIAS_MANT_MAX) * 2 ** bias_exp
    du_i, dv_i = decay_to_int(du, dv)
    vth = int(np.clip(round(threshold * sc.threshold_scale), 0, C.VTH_MAX))
    pmax = 1 if num_message_bits == 0 else 2 ** (num_message_bits - 1)
    return LayerArith(weight=w_int, weight_exp=sc.weight_exp, du=du_i, dv=dv_i, vth=vth,
                      bias=b_int, payload_max=pmax), sc

