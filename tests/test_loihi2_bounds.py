"""The worst-case bounds of a fixed-point layer (``network.py``), pinned against independent computations.

- payload ranges: against the values of ``b``-bit two's-complement bit patterns;
- the Dense worst case: brute force over *every* input vector of small random layers, with the
  weights Lava's own ``clip_weights`` / ``truncate_weights`` make of them (``lava.utils.weightutils``,
  numpy only: no Lava process runs) and the weight exponent as Lava's ``np.left_shift`` /
  ``np.right_shift``; at the real size (512 -> 256 -> 256 -> 128, quantized from trained-like
  weights) the maximising and minimising input of every neuron is built and run through the torch
  Dense (``arithmetic.dense``), and random inputs never go beyond;
- the sustained ``|u|`` bound: Lava's u update iterated to its fixed point under the worst input;
- every consumer reads the one definition (plan, design rules, quantization report, kernels).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from stft_neuro import config as config_mod
from stft_neuro.hw_targets.loihi2 import arithmetic as A
from stft_neuro.hw_targets.loihi2 import constants as C
from stft_neuro.hw_targets.loihi2 import quantize as Q
from stft_neuro.hw_targets.loihi2 import rules as R
from stft_neuro.hw_targets.loihi2.network import FixedPointLayer, FixedPointNetwork, PayloadRange
from stft_neuro.hw_targets.loihi2.plan import DeploymentPlan
from stft_neuro.sim import dense_kernels as D

lava_weightutils = pytest.importorskip("lava.utils.weightutils")

BRUTE = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def lava_weights(w: np.ndarray) -> np.ndarray:
    """What Lava's fixed_pt Dense makes of ``w`` (``dense/models.py`` l.80-90), by Lava's own code."""
    mode = lava_weightutils.determine_sign_mode(w)
    w = lava_weightutils.clip_weights(w.astype(np.int32), mode, num_bits=8)
    return lava_weightutils.truncate_weights(w, mode, 8).astype(np.int64)


def lava_shift(a: np.ndarray, e: int) -> np.ndarray:
    """Lava Dense's weight exponent (``dense/models.py`` l.103-107)."""
    return np.left_shift(a, e) if e > 0 else np.right_shift(a, -e)


def layer(w: np.ndarray, weight_exp: int = 0, bits: int = 0, du: int = 0) -> FixedPointLayer:
    return FixedPointLayer(name="l", weight=w, weight_exp=weight_exp, du=du, dv=0, vth=1,
                           bias_mant=np.zeros(w.shape[0], dtype=np.int64), bias_exp=0,
                           num_message_bits=bits)


@settings(max_examples=30, deadline=None)
@given(bits=st.integers(0, C.MESSAGE_BITS_MAX))
def test_payload_range_is_the_b_bit_twos_complement_range(bits):
    got = PayloadRange.for_message_bits(bits)
    if bits == 0:
        assert got == (0, 1) and got.binary and got.abs_max == 1
        return
    # every b-bit pattern read as two's complement (sign bit b-1), without the formula
    values = [p - (1 << bits) if p >> (bits - 1) else p for p in (0, (1 << (bits - 1)) - 1,
                                                                  1 << (bits - 1), (1 << bits) - 1)]
    assert got == (min(values), max(values)) and not got.binary
    assert got.abs_max == -min(values)
    if bits == 8:
        assert got == (np.iinfo(np.int8).min, np.iinfo(np.int8).max)


@BRUTE
@given(n_in=st.integers(1, 5), n_out=st.integers(1, 4), bits=st.integers(0, 3),
       weight_exp=st.integers(C.WEIGHT_EXP_MIN, C.WEIGHT_EXP_MAX),
       mode=st.sampled_from(["mixed", "mixed", "excitatory", "inhibitory"]), seed=st.integers(0, 2 ** 32 - 1))
def test_dense_worst_case_is_the_brute_force_extreme(n_in, n_out, bits, weight_exp, mode, seed):
    """Over every input vector in the payload range (up to 8**5 of them), the extremes of Lava's
    Dense equal ``accumulation_range`` / ``dense_output_range`` exactly: the bound is attained."""
    rng = np.random.default_rng(seed)
    lo, hi = {"mixed": (-300, 300), "excitatory": (0, 300), "inhibitory": (-300, 0)}[mode]
    w = rng.integers(lo, hi + 1, (n_out, n_in))           # odd values and beyond 8 bits included
    assume(w.any())
    w_lava = lava_weights(w)
    p = PayloadRange.for_message_bits(bits)
    inputs = np.array(list(itertools.product(range(p.lo, p.hi + 1), repeat=n_in)))  # (K, n_in)
    acc = inputs @ w_lava.T                                                       # (K, n_out)
    lay = layer(w, weight_exp, bits)
    assert lay.accumulation_range == (int(acc.min()), int(acc.max()))
    a = lava_shift(acc, weight_exp)
    assert lay.dense_output_range == (int(a.min()), int(a.max()))
    assert lay.dense_output_abs_max == int(np.abs(a).max())
    # the regime: the worst case is not all zeros, and the old symmetric formula
    # (sum |W| * payload_abs_max) is not below it
    assert lay.accumulation_range != (0, 0)
    assert int(np.abs(w_lava).sum(axis=1).max()) * p.abs_max >= max(-int(acc.min()), int(acc.max()))


@settings(max_examples=100, deadline=None)
@given(a=st.integers(1, 2 ** 15 - 1), du=st.integers(63, C.DECAY_MAX), sign=st.sampled_from([1, -1]))
def test_u_sustained_bound_holds_and_is_nearly_reached(a, du, sign):
    """Lava's ``u <- sign(p) * (|p| >> 12) + (a << 6)``, ``p = u * (4095 - du)`` (``lif/models.py``
    l.145-158) under the worst input held every step, iterated to its fixed point: never beyond
    ``u_sustained_bound`` and within ``4096 / (du + 1) + 1`` of it."""
    lay = layer(np.full((1, a // 254 + 1), sign * 254), 0, 0, du)   # one neuron, binary inputs
    x = sign * lay.dense_output_abs_max                                # the worst a_out, held
    u, peak = 0, 0
    for _ in range(200 * (C.DECAY_UNITY // (du + 1) + 1)):
        p = u * (C.DECAY_UNITY - du - C.DS_OFFSET)
        nxt = int(np.sign(p)) * (abs(p) >> C.DECAY_SHIFT) + (x << C.ACT_SHIFT)
        peak = max(peak, abs(nxt))
        if nxt == u:
            break
        u = nxt
    else:
        pytest.fail("u did not settle")
    assert peak > 0 and peak <= lay.u_sustained_bound <= peak + C.DECAY_UNITY // (du + 1) + 1


def _real_size_plan(seed: int) -> DeploymentPlan:
    """A plan of the paper's spiking branch at full size (``SpikingConfig``'s ``input_dim -> hidden``,
    the largest chip the toolkit trains), quantized from heavy-tailed trained-like weights (as
    ``bench/bench_reference.py`` makes them)."""
    cfg = config_mod.Config()
    sizes = (cfg.spiking.input_dim, *cfg.spiking.hidden)
    assert sizes == (512, 256, 256, 128)
    rng = np.random.default_rng(seed)
    layers = [Q.FloatLayer(name=f"lif{l}", weight=rng.standard_t(3, (sizes[l + 1], sizes[l])) * 2.5 / sizes[l] ** 0.5,
                           bias=rng.normal(0, 0.02, sizes[l + 1]), du=0.25, dv=0.1, threshold=1.0)
              for l in range(len(sizes) - 1)]
    plan, _ = Q.plan_from_float(layers, Q.input_scale_for(4.0, cfg.spiking.input_bits),
                                cfg.spiking.input_bits, cfg.spiking.num_steps)
    return plan


@pytest.mark.parametrize("seed", [0, 1])
def test_real_size_layers_reach_their_bound_with_the_torch_dense(seed):
    """Per neuron, the input that takes ``hi`` where the weight is positive and ``lo`` where it is
    negative (and the reverse) gives the extremes; the torch Dense attains ``dense_output_range``
    exactly, and 64 random inputs stay inside it."""
    plan = _real_size_plan(seed)
    for lay in plan.network.layers:
        w = torch.tensor(lay.weight, dtype=torch.float64)                       # (n_out, n_in)
        lo, hi = lay.payload
        s_max = torch.where(w > 0, float(hi), float(lo))                         # (n_out, n_in)
        s_min = torch.where(w > 0, float(lo), float(hi))
        a_max = A.dense(s_max, w, lay.weight_exp, lay.payload.abs_max).diagonal()  # neuron j, input j
        a_min = A.dense(s_min, w, lay.weight_exp, lay.payload.abs_max).diagonal()
        assert (int(a_min.min()), int(a_max.max())) == lay.dense_output_range
        rand = torch.randint(lo, hi + 1, (64, lay.n_in), generator=torch.Generator().manual_seed(seed))
        a = A.dense(rand.double(), w, lay.weight_exp, lay.payload.abs_max)
        assert lay.dense_output_range[0] <= int(a.min()) and int(a.max()) <= lay.dense_output_range[1]
        assert C.A_OUT_MIN <= lay.dense_output_range[0] and lay.dense_output_range[1] <= C.A_OUT_MAX


def test_consumers_read_the_one_definition():
    """Plan, design rules, quantization report and Dense kernels give the layer's own bounds."""
    plan = _real_size_plan(2)
    net = plan.network
    assert plan.payload_range == net.layers[0].payload == (-128, 127)
    for l, lay in enumerate(net.layers):
        assert R.accumulation_bounds(net, l) == lay.accumulation_range
        assert R.dense_output_bounds(net, l) == lay.dense_output_range
        assert D.partial_sum_bound(lay.weight, lay.payload) >= max(-lay.accumulation_range[0],
                                                                   lay.accumulation_range[1])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10 ** 6), n_in=st.integers(2, 64), n_out=st.integers(1, 16),
       bits=st.integers(2, 8), scale=st.floats(0.01, 10.0))
def test_quantizer_envelope_is_never_below_the_exact_bound(seed, n_in, n_out, bits, scale):
    """``choose_layer_scales`` picks the exponent by an envelope computed before rounding; the
    rounded layer's exact worst case (what the report records) is never above it (but for the floor
    of a negative extreme, which ``A_OUT_MIN = -2**15`` absorbs), and fits 16 bits."""
    rng = np.random.default_rng(seed)
    w = rng.standard_t(3, (n_out, n_in)) * scale
    f = Q.FloatLayer(name="l", weight=w, bias=np.zeros(n_out), du=0.25, dv=0.1, threshold=1.0)
    for l_bits in (bits, 0):                      # the graded first layer and a binary one
        fixed, info = Q.quantize_layer(f, 0.05 if l_bits else 1.0, l_bits)
        pmax = fixed.payload.abs_max
        k = info.scales.weight_scale
        envelope = (k * float(np.abs(w).sum(axis=1).max()) + n_in) * pmax * 2.0 ** fixed.weight_exp
        assert info.a_out_bound == fixed.dense_output_abs_max > 0
        # floor (Lava's right shift) can take a negative extreme up to 1 below -envelope, never further
        assert info.a_out_bound <= math.ceil(envelope)
        assert info.a_out_fits and not any(v.rule == "dense_output_16bit"
                                           for v in R.check(FixedPointNetwork((fixed,))))


def test_a_fan_in_whose_rounding_alone_overflows_the_synaptic_input_is_refused():
    """131073 inputs of 8-bit payloads: even at the smallest weight exponent the weights' rounding
    (one LSB each) may exceed the 16-bit synaptic input, so no weight scale k > 0 exists; the
    quantizer says so instead of returning a negative scale (which flipped every weight's sign)."""
    from stft_neuro.hw_targets.errors import DesignRuleError
    from stft_neuro.hw_targets.loihi2.quantize import choose_layer_scales
    with pytest.raises(DesignRuleError, match="fan-in 131073 .* cannot be quantized"):
        choose_layer_scales(1.0, 1.0, 1.0, max_row_abs_sum=184.0, n_in=131073, payload_max=128)
    assert choose_layer_scales(1.0, 1.0, 1.0, max_row_abs_sum=184.0, n_in=131073, payload_max=2).weight_scale > 0
