"""QAT deploy mode: the torch spiking branch computes exactly what the integer backends compute.

The chain under test: float parameters -> deploy mode (straight-through quantization inside the
forward pass) == ``to_fixed_point()`` run by the reference simulator, on every spike of every step,
for random networks, inputs and (closed-loop) dynamic thresholds. Lava itself is compared with the
reference simulator in test_lava_equivalence.py and, through this model, below.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stft_neuro.config import SpikingConfig
from stft_neuro.hw_targets.loihi2 import constants as C
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


def assert_same_spikes(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x.float(), y.float())


@settings(max_examples=15, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), dynamic=st.booleans(),
       hidden=st.lists(st.integers(1, 24), min_size=1, max_size=3).map(tuple),
       gain=st.floats(0.5, 8.0), du=st.floats(0.0, 1.0), dv=st.floats(0.0, 1.0),
       bits=st.integers(2, 8))
def test_deploy_mode_equals_reference_simulator(seed, dynamic, hidden, gain, du, dv, bits):
    branch, (a, v, n) = make_branch(seed, hidden, gain, dynamic_threshold=dynamic, du=du, dv=dv,
                                    input_bits=bits)
    with torch.no_grad():
        out, rec = branch(a, v, n)
        network, _ = branch.chip.to_fixed_point()
        out_ref, rec_ref = branch(a, v, n, backend=ReferenceSimulator(network))
    assert_same_spikes(rec.spikes, rec_ref.spikes)
    assert torch.equal(out, out_ref.float())
    if dynamic:
        assert torch.equal(rec.theta, rec_ref.theta)
        vth = torch.tensor([layer.vth for layer in network.layers], dtype=rec.theta.dtype)
        assert bool(((rec.theta + vth) >= 0).all() and ((rec.theta + vth) <= C.VTH_MAX).all())
        assert torch.equal(rec.theta, rec.theta.round())  # integer mantissa offsets


def test_deploy_mode_spikes_and_learns():
    branch, (a, v, n) = make_branch(1)
    branch.train()
    out, rec = branch(a, v, n)
    assert sum(float(s.detach().sum()) for s in rec.spikes) > 0
    out.sum().backward()
    for w in branch.chip.weights:
        assert w.grad is not None and float(w.grad.abs().sum()) > 0


def test_export_does_not_change_the_model():
    branch, _ = make_branch(2)
    before = {k: t.clone() for k, t in branch.state_dict().items()}
    network, report = branch.chip.to_fixed_point()
    after = branch.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(network.layers) == 3 and report.layers[0].weights_saturated == 0


@pytest.mark.lava
def test_deploy_mode_equals_lava_closed_loop():
    """The model's closed loop (dynamic thresholds) driven through Lava fixed_pt, step by step."""
    pytest.importorskip("lava.magma")
    from stft_neuro.sim.lava_runner import LavaRunner

    branch, (a, v, n) = make_branch(3, hidden=(10, 6))
    a, v, n = a[:1], v[:1], n[:1]
    with torch.no_grad():
        _, rec = branch(a, v, n)
        network, _ = branch.chip.to_fixed_point()
        _, rec_lava = branch(a, v, n, backend=LavaRunner(network))
    assert sum(float(s.sum()) for s in rec.spikes) > 0
    assert_same_spikes(rec.spikes, rec_lava.spikes)
