"""The differentiable integer arithmetic: exact forward, straight-through backward, quantization."""
from __future__ import annotations

import copy

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stft_neuro.hw_targets.loihi2 import arithmetic as A
from stft_neuro.hw_targets.loihi2 import constants as C
from stft_neuro.hw_targets.loihi2 import quantize as Q
from stft_neuro.hw_targets.loihi2 import weights as W
from stft_neuro.hw_targets.loihi2.ste import straight_through
from stft_neuro.sim.reference import ReferenceSimulator

SETTINGS = settings(max_examples=300, deadline=None)
ints24 = st.integers(-C.UV_MAX_VAL + 1, C.UV_MAX_VAL)


def lava_decay(x: int, d: int) -> int:
    """Lava's decay written as its numpy code (lif/models.py l.149-153)."""
    p = np.int64(x) * (C.DECAY_UNITY - d)
    return int(np.sign(p) * np.right_shift(np.abs(p), C.DECAY_SHIFT))


@SETTINGS
@given(x=ints24, d=st.integers(0, C.DECAY_UNITY))
def test_decay_is_lavas_in_float32_float64_and_int64(x, d):
    want = lava_decay(x, d)
    for dt in (torch.float32, torch.float64, torch.int64):
        assert int(A.decay(torch.tensor([x], dtype=dt), d)) == want


@SETTINGS
@given(x=st.integers(-2 ** 30, 2 ** 30), e=st.integers(C.WEIGHT_EXP_MIN, C.WEIGHT_EXP_MAX))
def test_shift_floor_is_numpy_shift(x, e):
    want = int(np.left_shift(np.int64(x), e) if e >= 0 else np.right_shift(np.int64(x), -e))
    for dt in (torch.float64, torch.int64):
        assert int(A.shift_floor(torch.tensor([x], dtype=dt), e)) == want


@SETTINGS
@given(u=st.integers(-3 * C.UV_MAX_VAL + 1, 3 * C.UV_MAX_VAL))
def test_wrap_u_is_lavas(u):
    m = C.UV_MAX_VAL
    w = u - 2 * m if u > m else u
    w = u + 2 * m if w <= -m else w
    assert int(A.wrap_u(torch.tensor([float(u)], dtype=torch.float64))) == w


def test_straight_through_gradients():
    x = torch.tensor([1000.0, -1000.0], dtype=torch.float32, requires_grad=True)
    A.decay(x, 1024).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 3072 / 4096))
    x.grad = None
    A.shift_floor(x, -3).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 1 / 8))

    w = torch.tensor([0.3, 1000.7, -1e6, 1e-30], dtype=torch.float32, requires_grad=True)
    exact = torch.tensor([0.0, 254.0, -256.0, 0.0], dtype=torch.float32)  # clamped far away
    q = straight_through(w, exact, 50.0)
    assert torch.equal(q, exact)  # bit-exact even where exact and the linear value are far apart
    q.sum().backward()
    assert torch.equal(w.grad, torch.full_like(w, 50.0))


def _sigmoid_surrogate(x: torch.Tensor) -> torch.Tensor:
    sig = torch.sigmoid(x / 256.0)
    return (x > 0).to(x.dtype) + (sig - sig.detach())


def _float_layers(seed: int, sizes=(16, 12, 8)):
    rng = np.random.default_rng(seed)
    return [Q.FloatLayer(name=f"lif{l}", weight=rng.normal(0, 0.5, (sizes[l + 1], sizes[l])),
                         bias=rng.normal(0, 0.05, sizes[l + 1]), du=float(rng.uniform(0.05, 1)),
                         dv=float(rng.uniform(0, 0.9)), threshold=float(rng.uniform(0.5, 2)))
            for l in range(len(sizes) - 1)]


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10 ** 6))
def test_qat_deploy_path_equals_reference_and_has_gradients(seed):
    """The torch QAT path (the plan's integers under STE + chip_run) == ReferenceSimulator(plan)."""
    layers_f = _float_layers(seed)
    rng = np.random.default_rng(seed + 7)
    x_f = torch.tensor(rng.normal(0, 1, (10, 3, 16)), dtype=torch.float32, requires_grad=True)
    in_scale = Q.input_scale_for(float(x_f.detach().abs().max()), 8)
    plan, report = Q.plan_from_float(layers_f, in_scale, 8, num_steps=10)
    assert report.weights_saturated == 0
    params = [torch.tensor(lay.weight, dtype=torch.float32, requires_grad=True) for lay in layers_f]
    biases = [torch.tensor(lay.bias, dtype=torch.float32, requires_grad=True) for lay in layers_f]
    arith = Q.qat_layers(plan, report, params, biases)
    x_q = plan.encode_input(x_f)
    spikes, _ = A.chip_run(x_q, None, None, arith, spike_fn=_sigmoid_surrogate)
    ref_spikes, _ = ReferenceSimulator(plan).run(x_q.detach())
    for a, b in zip(spikes, ref_spikes):
        assert torch.equal(a.detach(), b)
    sum(s.sum() for s in spikes).backward()
    assert params[0].grad is not None and torch.isfinite(params[0].grad).all()
    assert x_f.grad is not None and float(x_f.grad.abs().sum()) > 0  # through the payload STE


def test_quantize_is_pure_and_within_limits():
    layers_f = _float_layers(3)
    before = copy.deepcopy(layers_f)
    net, report = Q.quantize_network(layers_f, 0.01, 8)
    for a, b in zip(layers_f, before):
        np.testing.assert_array_equal(a.weight, b.weight)
        np.testing.assert_array_equal(a.bias, b.bias)
    for lay, info in zip(net.layers, report.layers):
        np.testing.assert_array_equal(W.lava_effective_weights(lay.weight), lay.weight)
        assert 0 <= lay.vth <= C.VTH_MAX and 0 <= lay.du <= C.DECAY_MAX and 0 <= lay.dv <= C.DECAY_MAX
        assert C.WEIGHT_EXP_MIN <= lay.weight_exp <= C.WEIGHT_EXP_MAX
        assert C.BIAS_EXP_MIN <= lay.bias_exp <= C.BIAS_EXP_MAX
        assert np.abs(lay.bias_mant).max() <= C.BIAS_MANT_MAX + 1
        assert info.threshold_error <= 0.5 / info.scales.threshold_scale + 1e-12
    assert "lif0" in report.summary()


def test_quantization_reports_saturation():
    layers_f = _float_layers(4)
    _, report = Q.quantize_network(layers_f, 0.01, 8, weight_clip_percentile=90.0)
    assert report.weights_saturated > 0


def lava_lif_step(u, v, a, du, dv, bias, vth):
    """Lava's ``AbstractPyLifModelFixed.subthr_dynamics`` and ``PyLifModelBitAcc`` spike/reset
    (``lif/models.py`` l.145-192, l.273-280), transcribed as its numpy code; also returns which
    neurons wrapped u and saturated v."""
    d = np.int64(u) * (C.DECAY_UNITY - (du + C.DS_OFFSET))
    d = np.sign(d) * np.right_shift(np.abs(d), C.DECAY_SHIFT)
    d = d + np.left_shift(np.int64(a), C.ACT_SHIFT)
    w = np.where(d > C.UV_MAX_VAL, d - 2 * C.UV_MAX_VAL, d)
    w = np.where(w <= -C.UV_MAX_VAL, d + 2 * C.UV_MAX_VAL, w)
    dvv = np.int64(v) * (C.DECAY_UNITY - (dv + C.DM_OFFSET))
    dvv = np.sign(dvv) * np.right_shift(np.abs(dvv), C.DECAY_SHIFT)
    pre = dvv + w + bias
    v_new = np.clip(pre, -C.UV_MAX_VAL + 1, C.UV_MAX_VAL - 1)
    s = v_new > np.left_shift(np.int64(vth), C.VTH_SHIFT)
    v_new = np.where(s, 0, v_new)
    return s, w, v_new, w != d, pre != np.clip(pre, C.V_MIN, C.V_MAX)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), du=st.integers(0, C.DECAY_MAX), dv=st.integers(0, C.DECAY_MAX),
       vth=st.integers(0, C.VTH_MAX), n=st.integers(1, 40))
def test_lif_step_is_lavas_lif(seed, du, dv, vth, n):
    """The one LIF update (``arithmetic.lif_step``, which the reference simulator and the deploy
    mode both step) equals Lava's numpy code in float64, float32 and int64, on random neurons plus
    three that every example drives into the regimes: u wraps, v saturates both ways, spikes."""
    rng = np.random.default_rng(seed)
    u = rng.integers(-C.UV_MAX_VAL + 1, C.UV_MAX_VAL + 1, n)
    v = rng.integers(C.V_MIN, C.V_MAX + 1, n)
    a = rng.integers(-2 ** 17, 2 ** 17, n)
    b = rng.integers(-C.BIAS_MANT_MAX << C.BIAS_EXP_MAX, C.BIAS_MANT_MAX << C.BIAS_EXP_MAX, n)
    # wrap: u >= 0 after any decay, plus a << 6 = 2**23 + 64; saturation: v at a limit, a << 6 ~ +-2**23
    u = np.concatenate([u, [C.UV_MAX_VAL - 1, 0, 0]])
    v = np.concatenate([v, [0, C.V_MAX, C.V_MIN]])
    a = np.concatenate([a, [2 ** 17 + 1, 2 ** 17 - 1, -(2 ** 17) + 1]])
    b = np.concatenate([b, [0, 1000, -1000]])
    s_l, u_l, v_l, wrapped, saturated = lava_lif_step(u, v, a, du, dv, b, vth)
    assert wrapped[-3] and saturated[-2] and saturated[-1] and s_l[-2]      # the regimes
    for dt in (torch.float64, torch.int64, torch.float32):
        if dt == torch.float32:
            if max(np.abs(u).max(), np.abs(v).max()) > 2 ** 24:
                continue
        t = lambda x: torch.tensor(x, dtype=dt)[None]   # noqa: E731  (B=1, n)
        s, u2, v2 = A.lif_step(t(a), t(u), t(v), du=du, dv=dv, bias=torch.tensor(b, dtype=dt), vth=vth)
        assert np.array_equal(s[0].numpy().astype(bool), s_l), dt
        assert np.array_equal(u2[0].numpy().astype(np.int64), u_l), dt
        assert np.array_equal(v2[0].numpy().astype(np.int64), v_l), dt
