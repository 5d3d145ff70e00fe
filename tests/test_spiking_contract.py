"""The spiking branch's per-timestep contract: stepping the chip module from outside, through the
contract, gives exactly the spikes and outputs of the model's own forward pass."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from stft_neuro.config import SpikingConfig
from stft_neuro.model.host import SpikingBranch, bin_matrix
from stft_neuro.model.spiking import ChipNetwork
from stft_neuro.contract import run_by_steps


def _inputs(seed: int = 0, batch: int = 5, seconds: int = 7, dim: int = 12):
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(batch, seconds, dim, generator=g)
    visual = torch.randn(batch, seconds, dim, generator=g)
    lengths = torch.randint(1, seconds + 1, (batch,), generator=g)
    return audio, visual, lengths


def _branch(**overrides) -> SpikingBranch:
    torch.manual_seed(0)
    cfg = dataclasses.replace(SpikingConfig(input_dim=16, hidden=(20, 12, 8), num_steps=6, threshold=0.5),
                              **overrides)
    branch = SpikingBranch(12, 12, cfg).eval()
    with torch.no_grad():  # make the network active enough that every layer spikes
        for w in branch.chip.weights:
            w.mul_(3.0)
    return branch


class OutsideDriver:
    """Steps the chip through the contract only, as a simulator backend would be driven."""

    def __init__(self, chip: ChipNetwork) -> None:
        self.chip = chip
        self.calls = 0

    @property
    def sizes(self):
        return self.chip.sizes

    @property
    def plan(self):
        return self.chip.plan

    def reset(self, batch):
        return self.chip.reset(batch)

    def step(self, x_t, theta_t, state):
        self.calls += 1
        return self.chip.step(x_t, theta_t, state)

    def run(self, x, theta=None, state=None):
        return run_by_steps(self, x, theta, state)


@pytest.mark.parametrize("dynamic", [True, False])
def test_stepping_through_contract_equals_forward(dynamic):
    branch = _branch(dynamic_threshold=dynamic)
    audio, visual, lengths = _inputs()
    with torch.no_grad():
        out, record = branch(audio, visual, lengths)
        driver = OutsideDriver(branch.chip)
        out2, record2 = branch(audio, visual, lengths, backend=driver)
    assert driver.calls == branch.cfg.num_steps
    assert sum(float(s.sum()) for s in record.spikes) > 0, "the test network must spike"
    for a, b in zip(record.spikes, record2.spikes):
        assert torch.equal(a, b)
    assert torch.equal(out, out2)
    if dynamic:
        assert torch.equal(record.theta, record2.theta)


def test_run_is_chunk_invariant_with_state_handover():
    branch = _branch()
    audio, visual, lengths = _inputs(1)
    chip = branch.chip
    with torch.no_grad():
        x, _ = branch.encode(audio, visual, lengths)
        theta = torch.rand(x.shape[0], x.shape[1], chip.num_layers) * 0.3
        full, _ = chip.run(x, theta)
        first, state = chip.run(x[:2], theta[:2])
        second, _ = chip.run(x[2:], theta[2:], state)
    for f, a, b in zip(full, first, second):
        assert torch.equal(f, torch.cat([a, b]))


def test_dense_delays_one_step_per_layer():
    """Layer l cannot respond before step l: each Dense adds one step, as in Lava."""
    chip = ChipNetwork((4, 6, 6, 6), du=0.0, dv=0.0, threshold=0.1, surrogate_slope=5.0)
    with torch.no_grad():
        for w in chip.weights:
            w.fill_(1.0)
        x = torch.zeros(5, 1, 4)
        x[0] = 1.0  # one input pulse at step 0
        spikes, _ = chip.run(x)
    first_spike = [int(torch.nonzero(s.sum((1, 2)))[0]) for s in spikes]
    assert first_spike == [1, 2, 3]


def test_threshold_modulation_suppresses_spikes():
    branch = _branch(dynamic_threshold=False)
    audio, visual, lengths = _inputs(2)
    chip = branch.chip
    with torch.no_grad():
        x, _ = branch.encode(audio, visual, lengths)
        base, _ = chip.run(x)
        high, _ = chip.run(x, torch.full((x.shape[0], x.shape[1], chip.num_layers), 1e6))
    assert sum(float(s.sum()) for s in base) > 0
    assert sum(float(s.sum()) for s in high) == 0


def test_surrogate_gradient_reaches_every_weight():
    branch = _branch()
    branch.train()
    audio, visual, lengths = _inputs(3)
    out, _ = branch(audio, visual, lengths)
    out.sum().backward()
    for name, p in branch.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(float(w.grad.abs().sum()) > 0 for w in branch.chip.weights)


def test_bins_cover_each_sample_exactly():
    lengths = torch.tensor([1, 3, 10, 7])
    m = bin_matrix(lengths, seconds=10, steps=4)  # (B, T, S)
    assert torch.allclose(m.sum(-1), torch.ones(4, 4))
    for b, n in enumerate(lengths.tolist()):
        assert float(m[b, :, n:].sum()) == 0.0  # never reads padding
        assert bool((m[b, :, :n].sum(0) > 0).all())  # every valid second is read
