"""QAT deploy mode: the torch spiking branch computes exactly what the integer backends compute.

The chain under test: float parameters -> one quantizer -> deployment plan; deploy mode runs that
plan's integers under straight-through gradients; the reference simulator runs the same plan; the
host converts with the plan of whichever backend it drives. Every spike of every step must agree,
at the model's real size (512 -> 256, 256, 128, T = 10), with dynamic thresholds. Lava is compared
with the reference simulator in test_lava_equivalence.py.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stft_neuro.config import SpikingConfig
from stft_neuro.hw_targets.errors import ChipInputError
from stft_neuro.hw_targets.loihi2 import constants as C
from stft_neuro.hw_targets.loihi2 import quantize as Q
from stft_neuro.hw_targets.loihi2.plan import DeploymentPlan
from stft_neuro.hw_targets.loihi2.weights import weight_range, weight_sign_mode
from stft_neuro.model.host import SpikingBranch
from stft_neuro.sim.reference import ReferenceSimulator


def make_branch(seed: int, hidden=(20, 12, 8), gain=3.0, **overrides) -> tuple[SpikingBranch, tuple]:
    torch.manual_seed(seed)
    cfg = dataclasses.replace(SpikingConfig(input_dim=16, hidden=hidden, num_steps=6, threshold=0.5),
                              **overrides)
    branch = SpikingBranch(12, 12, cfg).eval()
    with torch.no_grad():
        for w in branch.chip.weights:
            w.mul_(gain)
        for b in branch.chip.biases:
            b.normal_(0.0, 0.05)
    g = torch.Generator().manual_seed(seed)
    inputs = (torch.randn(4, 7, 12, generator=g), torch.randn(4, 7, 12, generator=g),
              torch.randint(1, 8, (4,), generator=g))
    branch.calibrate_input(*inputs)
    branch.set_deploy(True)
    return branch, inputs


def full_size_branch(seed: int, trained_like: bool = True) -> tuple[SpikingBranch, tuple]:
    """The default spiking branch (512 -> 256, 256, 128, T = 10, dynamic thresholds), 64 + 64
    features, with weights shaped like trained ones: heavy-tailed (Student t, 3 dof), a few large
    outliers per layer, and nonzero biases, scaled so that every layer fires at a few percent."""
    torch.manual_seed(seed)
    cfg = SpikingConfig()
    branch = SpikingBranch(64, 64, cfg).eval()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for w, b in zip(branch.chip.weights, branch.chip.biases):
            n_out, n_in = w.shape
            if trained_like:
                t = rng.standard_t(3, size=(n_out, n_in)) * 2.2 * cfg.threshold / n_in ** 0.5
                t[rng.integers(0, n_out, 4), rng.integers(0, n_in, 4)] *= 6.0  # outliers
                w.copy_(torch.as_tensor(t, dtype=torch.float32))
                b.copy_(torch.as_tensor(rng.normal(0.0, 0.02, n_out), dtype=torch.float32))
            else:
                w.mul_(3.0)
    g = torch.Generator().manual_seed(seed)
    inputs = (torch.randn(16, 8, 64, generator=g), torch.randn(16, 8, 64, generator=g),
              torch.randint(2, 9, (16,), generator=g))
    branch.calibrate_input(*inputs)
    branch.set_deploy(True)
    return branch, inputs


def assert_same_spikes(a, b):
    assert len(a) == len(b)
    for l, (x, y) in enumerate(zip(a, b)):
        assert torch.equal(x.float(), y.float()), f"layer {l}: {int((x.float() != y.float()).sum())} spikes differ"


def test_regression_one_quantizer_at_full_size():
    """Finding 1 of issue 7: with weights x3, seed 5 and the default size, the float32 quantizer of
    deploy mode and the float64 one of the export differed in one weight, and deploy mode and the
    reference simulator then differed by 3 / 33 / 52 spikes. There is now one quantizer."""
    torch.manual_seed(5)
    branch = SpikingBranch(64, 64, SpikingConfig()).eval()
    with torch.no_grad():
        for w in branch.chip.weights:
            w.mul_(3)
    g = torch.Generator().manual_seed(5)
    a, v = torch.randn(64, 8, 64, generator=g), torch.randn(64, 8, 64, generator=g)
    n = torch.randint(2, 9, (64,), generator=g)
    branch.calibrate_input(a, v, n)
    branch.set_deploy(True)
    plan, report = branch.deployment_plan()
    # The regime: this network has a weight where float32 and float64 rounding of w * k disagree.
    differs = 0
    for w, info in zip(branch.chip.weights, report.layers):
        k, mode = info.scales.weight_scale, weight_sign_mode(w.detach().double().numpy())
        lo, hi, step = weight_range(mode)
        r32 = (torch.round(w.detach() * k / step) * step).clamp(lo, hi)
        r64 = (torch.round(w.detach().double() * k / step) * step).clamp(lo, hi)
        differs += int((r32.double() != r64).sum())
    assert differs >= 1, "the regression case must contain a float32/float64 rounding boundary"
    with torch.no_grad():
        out, rec = branch(a, v, n)
        out_ref, rec_ref = branch(a, v, n, backend=ReferenceSimulator(plan))
    assert all(float(s.sum()) > 0 for s in rec.spikes), "every layer must spike"
    assert_same_spikes(rec.spikes, rec_ref.spikes)
    assert torch.equal(rec.theta, rec_ref.theta)
    assert torch.equal(out, out_ref.float())


@pytest.mark.parametrize("seed", range(20))
def test_deploy_mode_equals_reference_at_full_size(seed, tmp_path):
    """20 seeds at the real size, trained-like weights, dynamic thresholds; the plan saved and
    reloaded runs identically."""
    branch, (a, v, n) = full_size_branch(seed)
    plan, _ = branch.deployment_plan()
    with torch.no_grad():
        out, rec = branch(a, v, n)
        out_ref, rec_ref = branch(a, v, n, backend=ReferenceSimulator(plan))
        reloaded = DeploymentPlan.load(plan.save(tmp_path / "plan.safetensors"))
        out_re, rec_re = branch(a, v, n, backend=ReferenceSimulator(reloaded))
    rates = [float(s.mean()) for s in rec.spikes]
    assert all(0.002 < r < 0.6 for r in rates), f"every layer must spike, not saturate: {rates}"
    assert float(rec.theta.abs().sum()) > 0, "dynamic thresholds must be active"
    assert_same_spikes(rec.spikes, rec_ref.spikes)
    assert_same_spikes(rec.spikes, rec_re.spikes)
    assert torch.equal(rec.theta, rec_ref.theta) and torch.equal(rec.theta, rec_re.theta)
    assert torch.equal(out, out_ref.float()) and torch.equal(out, out_re.float())


@settings(max_examples=15, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), dynamic=st.booleans(),
       hidden=st.lists(st.integers(1, 24), min_size=1, max_size=3).map(tuple),
       gain=st.floats(0.5, 8.0), du=st.floats(0.0, 1.0), dv=st.floats(0.0, 1.0),
       bits=st.integers(2, 8))
def test_deploy_mode_equals_reference_simulator_small(seed, dynamic, hidden, gain, du, dv, bits):
    branch, (a, v, n) = make_branch(seed, hidden, gain, dynamic_threshold=dynamic, du=du, dv=dv,
                                    input_bits=bits)
    with torch.no_grad():
        out, rec = branch(a, v, n)
        plan, _ = branch.deployment_plan()
        out_ref, rec_ref = branch(a, v, n, backend=ReferenceSimulator(plan))
    assert_same_spikes(rec.spikes, rec_ref.spikes)
    assert torch.equal(out, out_ref.float())
    if dynamic:
        assert torch.equal(rec.theta, rec_ref.theta)
        vth = torch.tensor(plan.vth, dtype=rec.theta.dtype)
        assert bool(((rec.theta + vth) >= 0).all() and ((rec.theta + vth) <= C.VTH_MAX).all())
        assert torch.equal(rec.theta, rec.theta.round())  # integer mantissa offsets


def test_regression_host_converts_with_the_backends_plan():
    """Finding 2 of issue 7: the host converted thetas with the torch chip's cache, whatever backend
    ran. After a training step that changes the chip's weights, a reference simulator built from the
    new plan gets exactly deploy mode's thetas and spikes, and one built from the old plan gets
    exactly what deploy mode did before the step."""
    branch, (a, v, n) = full_size_branch(7)
    old_plan, _ = branch.deployment_plan()
    with torch.no_grad():
        _, rec_before = branch(a, v, n)
    branch.train()
    opt = torch.optim.SGD(branch.chip.parameters(), lr=5.0)
    out, _ = branch(a, v, n)
    out.pow(2).sum().backward()
    opt.step()
    branch.eval()
    new_plan, _ = branch.deployment_plan()
    changed = sum(int((o.weight != nw.weight).sum()) for o, nw in zip(old_plan.network.layers,
                                                                      new_plan.network.layers))
    assert changed > 0 and old_plan.threshold_scales != new_plan.threshold_scales
    with torch.no_grad():
        _, rec = branch(a, v, n)
        _, rec_new = branch(a, v, n, backend=ReferenceSimulator(new_plan))
        _, rec_old = branch(a, v, n, backend=ReferenceSimulator(old_plan))
    assert not torch.equal(rec.theta, rec_before.theta), "the step must change what is sent"
    assert torch.equal(rec.theta, rec_new.theta)
    assert_same_spikes(rec.spikes, rec_new.spikes)
    assert torch.equal(rec_before.theta, rec_old.theta)
    assert_same_spikes(rec_before.spikes, rec_old.spikes)


def _bad_inputs(plan: DeploymentPlan, B: int = 2):
    """(what, x_t, theta_t, pieces): bad inputs, and what a refusal must name, from the case itself
    (the port, the offending value, its index, the layer): an oracle independent of the one
    checking function that every backend calls."""
    x = torch.zeros(B, plan.n_in)
    th = torch.zeros(B, plan.num_layers)
    lo, hi = plan.theta_range[0]
    layer0 = plan.network.layers[0].name
    cases = [("payload 200 on an 8-bit port", x.clone().index_fill_(1, torch.tensor([5]), 200.0), th,
              ("payload", "200", "(0, 5)")),
             ("payload 0.5", x.clone().index_fill_(1, torch.tensor([3]), 0.5), th,
              ("payload", "integer", "0.5", "(0, 3)")),
             ("payload NaN", x.clone().index_fill_(1, torch.tensor([1]), float("nan")), th,
              ("payload", "NaN", "(0, 1)")),
             ("payload too narrow", torch.zeros(B, plan.n_in - 1), th,
              ("payload", f"({B}, {plan.n_in - 1})")),
             ("theta above the 17-bit threshold", x, th.clone().index_fill_(1, torch.tensor([0]), hi + 1.0),
              ("theta", f"layer 0 ({layer0})", str(int(hi) + 1), "(0, 0)")),
             ("theta below zero threshold", x, th.clone().index_fill_(1, torch.tensor([0]), lo - 1.0),
              ("theta", f"layer 0 ({layer0})", str(int(lo) - 1), "(0, 0)")),
             ("theta 0.25", x, th.clone().index_fill_(1, torch.tensor([0]), 0.25),
              ("theta", "integer", "0.25", "(0, 0)")),
             ("theta inf", x, th.clone().index_fill_(1, torch.tensor([0]), float("inf")),
              ("theta", "inf", "(0, 0)")),
             ("theta of the wrong width", x, torch.zeros(B, plan.num_layers + 1),
              ("theta", f"({B}, {plan.num_layers + 1})"))]
    return cases


def _backend(name: str, branch: SpikingBranch, plan: DeploymentPlan):
    if name == "torch deploy":
        return branch.chip
    if name == "reference":
        return ReferenceSimulator(plan)
    from stft_neuro.sim.lava_session import LavaSession
    return LavaSession(plan, 2)


@pytest.mark.parametrize("name", ["torch deploy", "reference",
                                  pytest.param("lava", marks=pytest.mark.lava)])
def test_regression_backends_validate_the_same_way(name):
    """Finding 3 of issue 7: the reference simulator cast payloads to int8 unchecked (200 wrapped,
    0.5 became 0) and nobody checked theta. Now every backend (torch chip, reference simulator,
    Lava session) refuses each bad input with one line that names the port, the offending value
    and where it is; and the good input passes (the checks are not vacuous)."""
    branch, _ = make_branch(1)
    plan, _ = branch.deployment_plan()
    backend = _backend(name, branch, plan)
    try:
        for what, x_t, th_t, pieces in _bad_inputs(plan):
            state = backend.reset(x_t.shape[0])
            with pytest.raises(ChipInputError) as info:
                backend.step(x_t, th_t, state)
            msg = str(info.value)
            assert "\n" not in msg, f"{name}, {what}: {msg!r}"
            assert msg.startswith(pieces[0] + ":"), f"{name}, {what}: {msg!r}"
            for piece in pieces[1:]:
                assert piece in msg, f"{name}, {what}: {piece!r} not in {msg!r}"
        x_ok = torch.full((2, plan.n_in), float(plan.payload_range[1]))
        th_ok = torch.tensor([[float(r[1]) for r in plan.theta_range]] * 2)
        spikes, _ = backend.step(x_ok, th_ok, backend.reset(2))
        assert [tuple(s.shape) for s in spikes] == [(2, n) for n in plan.network.sizes[1:]]
    finally:
        if name == "lava":
            backend.close()


def test_deploy_mode_spikes_and_learns():
    branch, (a, v, n) = make_branch(1)
    branch.train()
    out, rec = branch(a, v, n)
    assert sum(float(s.detach().sum()) for s in rec.spikes) > 0
    out.sum().backward()
    for w in branch.chip.weights:
        assert w.grad is not None and float(w.grad.abs().sum()) > 0
    assert branch.encoder.weight.grad is not None and float(branch.encoder.weight.grad.abs().sum()) > 0


def test_deployment_plan_does_not_change_the_model():
    branch, _ = make_branch(2)
    before = {k: t.clone() for k, t in branch.state_dict().items()}
    plan, report = branch.deployment_plan()
    after = branch.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert plan.num_layers == 3 and report.layers[0].weights_saturated == 0
    assert plan.num_steps == branch.cfg.num_steps and plan.input_bits == branch.cfg.input_bits


def test_weights_deploy_mode_runs_are_the_plans():
    """Deploy mode's forward values are the plan's integers (no second quantization)."""
    branch, _ = make_branch(3)
    branch.chip.reset(1)
    plan, layers, _ = branch.chip._sequence
    for lay, fixed in zip(layers, plan.network.layers):
        assert np.array_equal(lay.weight.detach().double().numpy(), fixed.weight.astype(np.float64))


@pytest.mark.lava
def test_deploy_mode_equals_lava_closed_loop():
    """The model's closed loop (dynamic thresholds) driven through Lava fixed_pt, step by step."""
    branch, (a, v, n) = make_branch(3, hidden=(10, 6))
    a, v, n = a[:1], v[:1], n[:1]
    with torch.no_grad():
        _, rec = branch(a, v, n)
        from stft_neuro.sim.lava_session import LavaSession
        with LavaSession(branch.deployment_plan()[0], 1) as lava:
            _, rec_lava = branch(a, v, n, backend=lava)
    assert sum(float(s.sum()) for s in rec.spikes) > 0
    assert_same_spikes(rec.spikes, rec_lava.spikes)
    assert torch.equal(rec.theta, rec_lava.theta)
