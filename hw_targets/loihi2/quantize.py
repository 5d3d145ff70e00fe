"""The one quantizer: float Dense + LIF layers -> Loihi 2's fixed-point units and the deployment plan.

Every integer (weights, ``weight_exp``, bias mantissa/exponent, decays, thresholds, input and
threshold scales) is computed here, once, in float64, from the float parameters
(:func:`quantize_network`, :func:`plan_from_float`). Quantization-aware training does not quantize
again: it wraps this result with straight-through gradients (:func:`qat_layers`).

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
- ``netx_compatible=True`` (``plan_from_float``, ``quantize_network``, ``quantize_layer``; off by
  default, and then nothing above changes) quantizes for lava-dl's netx HDF5
  (``converters/netx_out.py``), which can carry neither exponent: netx fixes ``bias_exp = 6``
  (``lava/lib/dl/netx/hdf5.py`` l.158) and re-derives ``weight_exp <= 0`` from the integer weights so
  that the Dense output is exactly ``W_file @ s`` with integer ``W_file`` of at most 8 bits
  (``lava/lib/dl/netx/utils.py`` l.124-151). So ``weight_exp`` is 0, or -1 for mixed signs (even
  weights at exponent -1 are the odd integers ``[-128, 127]`` that netx does keep): an exponent
  ``e < 0`` is folded into ``k`` down to that (the same ``S``; weights rounded before the sum
  instead of after it, i.e. ``|e|`` (mixed: ``|e| - 1``) fewer weight bits, and with a 16-bit
  dendrite many small weights become 0); an exponent ``e > 0`` becomes 0 with the same ``k`` (``S``,
  ``vth`` and the bias ``2**e`` times coarser). The bias is ``round(S * b_f / 64) << 6``: a
  resolution of 64 v-LSBs, i.e. one threshold-mantissa unit, and at most ``4095 << 6`` (more
  saturates, counted in ``bias_saturated``). For trained-like weights at the STFT size
  (512 -> 256 -> 256 -> 128, 8-bit input; ``tests/test_netx_export.py``) that is exponent -4 -> -1 in
  layer 0 (~5-bit weights, most of them 0) and 2**3-2**4 times coarser thresholds and biases in
  layers 1 and 2.

All functions are pure: they return new objects and never modify their arguments.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from stft_neuro.hw_targets.errors import DesignRuleError
from stft_neuro.hw_targets.loihi2 import constants as C
from stft_neuro.hw_targets.loihi2.arithmetic import LayerArith
from stft_neuro.hw_targets.loihi2.network import FixedPointLayer, FixedPointNetwork, PayloadRange
from stft_neuro.hw_targets.loihi2.plan import DEFAULT_DT_S, DeploymentPlan
from stft_neuro.hw_targets.loihi2.ste import straight_through
from stft_neuro.hw_targets.loihi2.weights import (effective_bias, lava_effective_weights, weight_range,
                                                  weight_sign_mode)

#: The bias exponent lava-dl's netx gives every CUBA neuron (``lava/lib/dl/netx/hdf5.py`` l.158).
NETX_BIAS_EXP: int = 6


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
    a_out_bound: int              # largest possible |Dense output| (FixedPointLayer.dense_output_abs_max)
    a_out_fits: bool              # dense_output_range within A_OUT_BITS (Loihi 2's 16-bit dendrite)


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
    return float(max_abs_input) / PayloadRange.for_message_bits(input_bits).hi if max_abs_input > 0 else 1.0


def choose_layer_scales(max_abs_weight: float, threshold: float, in_scale: float,
                        sign_mode: str = "mixed", threshold_headroom_bits: int = 2,
                        max_row_abs_sum: float = 0.0, n_in: int = 0, payload_max: int = 1
                        ) -> LayerScales:
    """Pick ``k`` and ``weight_exp`` for a layer (rules in the module docstring).

    ``max_row_abs_sum`` (largest ``sum_i |W_f[j, i]|``), ``n_in`` and ``payload_max`` (largest
    ``|payload|``) give the exponent an envelope of the Dense output *before* the weights are
    rounded: the exponent is also small enough that
    ``(k * max_row_abs_sum + n_in) * payload_max * 2**weight_exp`` (``+ n_in``: rounding adds at
    most one per weight) fits the 16-bit synaptic input, so no input can wrap ``u`` in one step.
    This is a sufficient condition, not the bound: it treats every input as ``+-payload_max``
    (binary spikes as +-1) and so is up to ~2x above the exact worst case of the rounded layer,
    ``FixedPointLayer.dense_output_range``, which is what the quantization report and the design
    rules use (a test shows the envelope is never below it). It is kept as it is because the
    exponent it selects is part of every plan (changing it would change deployed networks).
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
        if k <= 0:  # the weights' rounding alone (one LSB each) can overflow the synaptic input
            raise DesignRuleError(
                f"a layer of fan-in {n_in} fed payloads up to {payload_max} cannot be quantized: even at "
                f"weight_exp {exp} the rounding of its weights alone may exceed Loihi's 16-bit synaptic "
                f"input (|a_out| <= {C.A_OUT_MAX}); use fewer inputs per neuron or fewer payload bits")
    s = k * 2.0 ** (C.ACT_SHIFT + exp) / in_scale
    return LayerScales(weight_scale=k, weight_exp=exp, state_scale=s,
                       threshold_scale=s / 2 ** C.VTH_SHIFT, in_scale=in_scale,
                       sign_mode=sign_mode)


def _round_weights(w: np.ndarray, k: float, sign_mode: str) -> np.ndarray:
    lo, hi, step = weight_range(sign_mode)
    return np.clip(np.round(w * k / step) * step, lo, hi).astype(np.int64)


def _bias_to_int(b_int: np.ndarray, exp: int | None = None) -> tuple[np.ndarray, int, int]:
    """Scaled float bias -> (mantissa, exponent, number saturated); ``exp`` fixes the exponent."""
    mx = float(np.abs(b_int).max(initial=0.0))
    if exp is None:
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
                   weight_clip_percentile: float = 100.0, threshold_headroom_bits: int = 2,
                   netx_compatible: bool = False) -> tuple[FixedPointLayer, LayerQuantInfo]:
    """One float layer -> :class:`FixedPointLayer` plus what it cost (``netx_compatible``: see
    the module docstring)."""
    w = np.asarray(layer.weight, dtype=np.float64)
    mode = weight_sign_mode(w)
    ref = float(np.percentile(np.abs(w), weight_clip_percentile)) if w.size else 0.0
    pmax = PayloadRange.for_message_bits(num_message_bits).abs_max
    sc = choose_layer_scales(ref, layer.threshold, in_scale, mode, threshold_headroom_bits,
                             float(np.abs(w).sum(axis=1).max(initial=0.0)), w.shape[1], pmax)
    if netx_compatible:  # weight_exp 0 or -1: fold e < 0 into k, drop e > 0 (module docstring)
        e = 0 if sc.weight_exp >= 0 else max(sc.weight_exp, -1 if mode == "mixed" else 0)
        k = sc.weight_scale * 2.0 ** (min(sc.weight_exp, 0) - e)
        s = k * 2.0 ** (C.ACT_SHIFT + e) / in_scale
        sc = LayerScales(weight_scale=k, weight_exp=e, state_scale=s,
                         threshold_scale=s / 2 ** C.VTH_SHIFT, in_scale=in_scale, sign_mode=mode)
    lo, hi, _ = weight_range(mode)
    wk = w * sc.weight_scale
    w_int = _round_weights(w, sc.weight_scale, mode)
    bias_mant, bias_exp, bias_sat = _bias_to_int(np.asarray(layer.bias, np.float64) * sc.state_scale,
                                                 NETX_BIAS_EXP if netx_compatible else None)
    du, dv = decay_to_int(layer.du, layer.dv)
    vth = int(np.clip(round(layer.threshold * sc.threshold_scale), 0, C.VTH_MAX))
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
        a_out_bound=fixed.dense_output_abs_max,
        a_out_fits=C.A_OUT_MIN <= fixed.dense_output_range[0] and fixed.dense_output_range[1] <= C.A_OUT_MAX)
    return fixed, info


def quantize_network(layers: Sequence[FloatLayer], input_scale: float, input_bits: int = 8, *,
                     weight_clip_percentile: float = 100.0, threshold_headroom_bits: int = 2,
                     netx_compatible: bool = False) -> tuple[FixedPointNetwork, QuantizationReport]:
    """Float layers -> :class:`FixedPointNetwork` + :class:`QuantizationReport`.

    Layer 0 receives the host's input quantized by ``DeploymentPlan.encode_input`` (``input_scale``,
    ``input_bits``-bit graded spikes); later layers receive binary spikes (``in_scale = 1``).
    """
    if not 1 < input_bits <= C.INPUT_BITS_MAX:
        raise ValueError(f"quantize_network: input_bits={input_bits} outside [2, {C.INPUT_BITS_MAX}]")
    fixed, infos = [], []
    for l, layer in enumerate(layers):
        f, i = quantize_layer(layer, input_scale if l == 0 else 1.0, input_bits if l == 0 else 0,
                              weight_clip_percentile=weight_clip_percentile,
                              threshold_headroom_bits=threshold_headroom_bits,
                              netx_compatible=netx_compatible)
        fixed.append(f)
        infos.append(i)
    return FixedPointNetwork(tuple(fixed)), QuantizationReport(tuple(infos), input_scale, input_bits)


# ----------------------------------------------------------------------------------------------
# The deployment plan, and the same integers under straight-through gradients (QAT)
# ----------------------------------------------------------------------------------------------

def plan_from_float(layers: Sequence[FloatLayer], input_scale: float, input_bits: int,
                    num_steps: int, dt: float = DEFAULT_DT_S, *, weight_clip_percentile: float = 100.0,
                    threshold_headroom_bits: int = 2, netx_compatible: bool = False,
                    payload_dead_zone: int = 0) -> tuple[DeploymentPlan, QuantizationReport]:
    """Float layers -> the :class:`DeploymentPlan` every backend runs, and what quantizing cost.

    The only place where integers are computed from float parameters (float64, numpy): deploy-mode
    training wraps this plan's integers with straight-through gradients (:func:`qat_layers`) instead
    of computing them a second time, so the two cannot disagree. ``netx_compatible=True`` makes
    a plan that lava-dl's netx HDF5 can carry exactly (module docstring: what it costs).
    ``payload_dead_zone``: payloads with ``|q| <= k`` are sent as 0 (``DeploymentPlan``).
    """
    network, report = quantize_network(layers, input_scale, input_bits,
                                       weight_clip_percentile=weight_clip_percentile,
                                       threshold_headroom_bits=threshold_headroom_bits,
                                       netx_compatible=netx_compatible)
    plan = DeploymentPlan(network=network, input_scale=input_scale,
                          threshold_scales=tuple(i.scales.threshold_scale for i in report.layers),
                          num_steps=num_steps, dt=dt, payload_dead_zone=payload_dead_zone)
    return plan, report


def qat_layers(plan: DeploymentPlan, report: QuantizationReport, weights: Sequence[Tensor],
               biases: Sequence[Tensor]) -> list[LayerArith]:
    """The plan's layers as :class:`LayerArith` for ``arithmetic.chip_step``, differentiable.

    ``weights[l]`` ``(n_out, n_in)`` and ``biases[l]`` ``(n_out,)`` are the float parameters the plan
    was quantized from. Forward values are the plan's integers exactly (Lava-effective weights,
    ``bias_mant << bias_exp``); gradients flow straight through with slopes ``k`` (weights) and
    ``S`` (bias), the scales of ``report``.
    """
    out = []
    for layer, info, w, b in zip(plan.network.layers, report.layers, weights, biases):
        w_eff = torch.as_tensor(lava_effective_weights(layer.weight), device=w.device).to(w.dtype)
        b_eff = torch.as_tensor(effective_bias(layer.bias_mant, layer.bias_exp), device=b.device).to(b.dtype)
        out.append(LayerArith(weight=straight_through(w, w_eff, info.scales.weight_scale),
                              weight_exp=int(layer.weight_exp), du=int(layer.du), dv=int(layer.dv),
                              vth=int(layer.vth),
                              bias=straight_through(b, b_eff, info.scales.state_scale),
                              payload_max=layer.payload.abs_max))
    return out
