"""ReferenceSimulator == the arithmetic definition, chunk/batch invariance, integer state ranges."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stft_neuro.hw_targets.errors import ChipInputError
from stft_neuro.hw_targets.loihi2 import arithmetic as A
from stft_neuro.hw_targets.loihi2 import weights as W
from stft_neuro.hw_targets.loihi2 import constants as C
from stft_neuro.hw_targets.loihi2.network import FixedPointLayer, FixedPointNetwork
from stft_neuro.hw_targets.loihi2.plan import DeploymentPlan
from stft_neuro.contract import run_by_steps
from stft_neuro.sim.reference import ReferenceSimulator

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def random_network(seed: int, n_layers: int = 3, input_bits: int = 8, extreme: bool = False
                   ) -> FixedPointNetwork:
    """A random network within Loihi's limits; ``extreme`` drives u wrap and v saturation."""
    rng = np.random.default_rng(seed)
    sizes = [int(rng.integers(3, 24)) for _ in range(n_layers + 1)]
    layers = []
    for l in range(n_layers):
        n_in, n_out = sizes[l], sizes[l + 1]
        mode = rng.choice(["mixed", "mixed", "excitatory", "inhibitory"])
        lo, hi, step = W.weight_range(str(mode))
        w = rng.integers(lo // step, hi // step + 1, (n_out, n_in)) * step
        w = w * (rng.random((n_out, n_in)) < 0.7)  # some zeros
        # Lava's precondition: |a| << 6 within a single u wrap (|a| <= 2**18); 2**17 keeps wraps
        # and saturation reachable in the extreme case.
        pmax = 1 if l > 0 else 2 ** (input_bits - 1)
        bound = max(1, int(np.abs(w).sum(axis=1).max()) * pmax)
        e_max = min(C.WEIGHT_EXP_MAX, int(np.floor(np.log2(2 ** 17 / bound))))
        e_min = max(C.WEIGHT_EXP_MIN, e_max - 4) if extreme else C.WEIGHT_EXP_MIN
        layers.append(FixedPointLayer(
            name=f"lif{l}", weight=w,
            weight_exp=int(rng.integers(e_min, max(e_min, min(e_max, 2)) + 1)) if not extreme
            else int(rng.integers(e_min, e_max + 1)),
            du=int(rng.choice([0, 1, int(rng.integers(0, C.DECAY_MAX + 1)), C.DECAY_MAX])),
            dv=int(rng.choice([0, int(rng.integers(0, C.DECAY_MAX + 1)), C.DECAY_MAX])),
            vth=int(rng.integers(0, 2 ** 12 if not extreme else C.VTH_MAX + 1)),
            bias_mant=rng.integers(C.BIAS_MANT_MIN, C.BIAS_MANT_MAX + 1, n_out)
            * (rng.random(n_out) < 0.5),
            bias_exp=int(rng.integers(C.BIAS_EXP_MIN, C.BIAS_EXP_MAX + 1)),
            num_message_bits=input_bits if l == 0 else 0))
    return FixedPointNetwork(tuple(layers))


def plan_of(net: FixedPointNetwork, num_steps: int = 10) -> DeploymentPlan:
    """A plan around a network given in Loihi units (payload and threshold units of 1)."""
    return DeploymentPlan.of_network(net, num_steps)


def random_inputs(net: FixedPointNetwork, seed: int, T: int, B: int, theta: bool = True):
    """Payloads over the whole input range; thetas in [-200, 200] clamped to each layer's legal
    range (``vth + theta`` in ``[0, VTH_MAX]``), so layers with a small vth see theta at its limit."""
    rng = np.random.default_rng(seed + 1)
    b = net.layers[0].num_message_bits
    x = torch.tensor(rng.integers(-(2 ** (b - 1)), 2 ** (b - 1), (T, B, net.n_in)),
                     dtype=torch.float64)
    th = None
    if theta:
        th = torch.tensor(rng.integers(-200, 200, (T, B, len(net.layers))), dtype=torch.float64)
        vth = torch.tensor([float(layer.vth) for layer in net.layers], dtype=torch.float64)
        th = torch.maximum(torch.minimum(th, C.VTH_MAX - vth), -vth)
    return x, th


def assert_spikes_equal(a, b):
    assert len(a) == len(b)
    for l, (x, y) in enumerate(zip(a, b)):
        assert torch.equal(x.double().cpu(), y.double().cpu()), f"layer {l} spikes differ"


def assert_state_equal(a, b):
    for f in range(3):
        for l, (x, y) in enumerate(zip(a[f], b[f])):
            assert torch.equal(x.double().cpu(), y.double().cpu()), f"state field {f} layer {l}"


@SETTINGS
@given(seed=st.integers(0, 10 ** 6), T=st.integers(1, 12), B=st.integers(1, 5),
       n_layers=st.integers(1, 3), extreme=st.booleans(), theta=st.booleans())
def test_reference_equals_arithmetic_steps(seed, T, B, n_layers, extreme, theta):
    net = random_network(seed, n_layers, extreme=extreme)
    x, th = random_inputs(net, seed, T, B, theta)
    ref = ReferenceSimulator(plan_of(net))
    spikes, state = ref.run(x, th)
    layers = A.network_arith(net, dtype=torch.float64)
    spikes_a, state_a = A.chip_run(x, th, None, layers)
    assert_spikes_equal(spikes, spikes_a)
    assert_state_equal(state, state_a)
    # the integer (int64) path of the arithmetic agrees as well
    layers_i = A.network_arith(net, dtype=torch.int64)
    spikes_i, state_i = A.chip_run(x.long(), None if th is None else th.long(),
                                   A.zero_state(layers_i, B), layers_i)
    assert_spikes_equal(spikes, spikes_i)
    assert_state_equal(state, state_i)


@SETTINGS
@given(seed=st.integers(0, 10 ** 6), T=st.integers(2, 12), split=st.integers(1, 11),
       extreme=st.booleans())
def test_run_equals_steps_and_chunks(seed, T, split, extreme):
    split = min(split, T - 1)
    net = random_network(seed, 3, extreme=extreme)
    x, th = random_inputs(net, seed, T, 3)
    ref = ReferenceSimulator(plan_of(net))
    spikes, state = ref.run(x, th)
    spikes_s, state_s = run_by_steps(ref, x, th)
    assert_spikes_equal(spikes, spikes_s)
    assert_state_equal(state, state_s)
    s1, st1 = ref.run(x[:split], th[:split])
    s2, st2 = ref.run(x[split:], th[split:], st1)
    assert_spikes_equal(spikes, tuple(torch.cat([a, b]) for a, b in zip(s1, s2)))
    assert_state_equal(state, st2)


@SETTINGS
@given(seed=st.integers(0, 10 ** 6), B=st.integers(2, 6))
def test_batch_invariance(seed, B):
    net = random_network(seed, 2)
    x, th = random_inputs(net, seed, 8, B)
    ref = ReferenceSimulator(plan_of(net))
    spikes, state = ref.run(x, th)
    for b in range(B):
        sb, stb = ref.run(x[:, b:b + 1], th[:, b:b + 1])
        assert_spikes_equal(tuple(s[:, b:b + 1] for s in spikes), sb)
        assert_state_equal(tuple(tuple(t[b:b + 1] for t in f) for f in state), stb)


@SETTINGS
@given(seed=st.integers(0, 10 ** 6), extreme=st.booleans())
def test_states_stay_in_bit_ranges(seed, extreme):
    net = random_network(seed, 3, extreme=extreme)
    x, th = random_inputs(net, seed, 10, 4)
    ref = ReferenceSimulator(plan_of(net))
    state = ref.reset(4)
    for t in range(10):
        spikes, state = ref.step(x[t], th[t], state)
        for s in spikes:
            assert set(torch.unique(s).tolist()) <= {0.0, 1.0}
        for u, v in zip(state.u, state.v):
            assert torch.equal(u, u.round()) and torch.equal(v, v.round())
            assert u.max() <= C.UV_MAX_VAL and u.min() > -C.UV_MAX_VAL
            assert v.max() <= C.V_MAX and v.min() >= C.V_MIN


def test_run_does_not_mutate_state():
    net = random_network(3, 2)
    x, th = random_inputs(net, 3, 5, 2)
    ref = ReferenceSimulator(plan_of(net))
    _, st1 = ref.run(x, th)
    copy = tuple(tuple(t.clone() for t in f) for f in st1)
    ref.run(x, th, st1)
    assert_state_equal(st1, copy)


def test_wrong_input_width_is_a_clear_error():
    net = random_network(4, 1)
    with pytest.raises(ChipInputError, match="inputs"):
        ReferenceSimulator(plan_of(net)).run(torch.zeros(2, 1, net.n_in + 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu():
    net = random_network(5, 3)
    x, th = random_inputs(net, 5, 10, 8)
    s_cpu, st_cpu = ReferenceSimulator(plan_of(net)).run(x, th)
    s_gpu, st_gpu = ReferenceSimulator(plan_of(net), device="cuda").run(x.cuda(), th.cuda())
    assert_spikes_equal(s_cpu, s_gpu)
    assert_state_equal(st_cpu, st_gpu)
