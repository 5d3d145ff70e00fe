"""Sparse messages into the chip: the plan's payload dead zone (``DeploymentPlan.payload_dead_zone``).

The host sends a payload whose integer ``|q| <= k`` as 0 (not at all). ``k = 0`` is today's plan,
unchanged (same header, same payloads). With ``k > 0`` every backend refuses payloads inside the
dead zone with the same message, and the ladder holds at the real size (512 -> 256 -> 256 -> 128,
T = 10, dynamic thresholds, the host's closed loop): torch deploy mode == reference simulator ==
Lava ``fixed_pt``, with hypothesis cases at both extremes of the dead zone (none dropped; most
dropped), each asserting that it reached its regime.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from stft_neuro.config import SpikingConfig
from stft_neuro.hw_targets.errors import ChipInputError, PlanFormatError
from stft_neuro.hw_targets.loihi2.plan import PLAN_VERSION, DeploymentPlan, apply_dead_zone
from stft_neuro.model.host import SpikingBranch
from stft_neuro.sim.reference import ReferenceSimulator

from test_lava_equivalence import payloads, quantized_plan, thetas

FULL = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LAVA = settings(max_examples=2, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def _with_dead_zone(plan: DeploymentPlan, k: int) -> DeploymentPlan:
    return dataclasses.replace(plan, payload_dead_zone=k)


# ---------------------------------------------------------------------------------- the plan field

def test_default_plan_is_unchanged(tmp_path):
    plan = quantized_plan(0, 4)
    assert plan.payload_dead_zone == 0
    head = plan.to_dict()
    assert "payload_dead_zone" not in head and head["version"] == PLAN_VERSION == 1
    x = torch.randn(4, 3, plan.n_in, dtype=torch.float64) / plan.input_scale * 0.05
    lo, hi = plan.payload_range
    assert torch.equal(plan.encode_input(x), torch.round(x / plan.input_scale).clamp(lo, hi))
    assert DeploymentPlan.load(plan.save(tmp_path / "p.safetensors")).payload_dead_zone == 0


@given(k=st.integers(1, 128), seed=st.integers(0, 1000))
@settings(max_examples=30, deadline=None)
def test_encode_input_drops_exactly_the_dead_zone(k, seed):
    plan = _with_dead_zone(quantized_plan(1, 4), k)
    g = torch.Generator().manual_seed(seed)
    cur = (torch.randn(3, 2, plan.n_in, generator=g, dtype=torch.float64) * 40 * plan.input_scale
           ).requires_grad_(True)
    got = plan.encode_input(cur)
    full = _with_dead_zone(plan, 0).encode_input(cur).detach()
    assert torch.equal(got.detach(), torch.where(full.abs() <= k, torch.zeros_like(full), full))
    assert torch.equal(apply_dead_zone(full, k), got.detach())
    plan.check_payload(got)                           # what the host sends is legal
    got.sum().backward()                              # straight through, dead zone included
    assert torch.allclose(cur.grad, torch.full_like(cur, 1.0 / plan.input_scale))


def test_saved_dead_zone_round_trips_and_old_readers_refuse_it(tmp_path):
    plan = _with_dead_zone(quantized_plan(2, 4), 5)
    p = plan.save(tmp_path / "p.safetensors")
    back = DeploymentPlan.load(p)
    assert back.payload_dead_zone == 5 and back.to_dict() == plan.to_dict()
    assert plan.to_dict()["version"] == 2
    # a version-1 header with a dead zone (or version 2 without one) is refused
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file
    with safe_open(str(p), framework="numpy") as f:
        meta = f.metadata()
    head = json.loads(meta["stft_neuro.plan"])
    head["version"] = 1
    save_file(load_file(str(p)), str(tmp_path / "bad.safetensors"),
              metadata={"stft_neuro.plan": json.dumps(head)})
    with pytest.raises(PlanFormatError, match="reads version 1"):
        DeploymentPlan.load(tmp_path / "bad.safetensors")


def test_dead_zone_survives_the_nir_file(tmp_path):
    """The interchange file carries the dead zone: plan -> NIR -> plan is the same plan."""
    import nir
    from stft_neuro.converters.nir_out import plan_from_nir, plan_to_nir
    plan = _with_dead_zone(quantized_plan(2, 4), 5)
    nir.write(str(tmp_path / "p.nir"), plan_to_nir(plan))
    back = plan_from_nir(nir.read(str(tmp_path / "p.nir")))
    assert back.payload_dead_zone == 5 and back.to_dict() == plan.to_dict()


def test_config_key_sets_the_chips_dead_zone():
    br = SpikingBranch(24, 20, SpikingConfig(input_dim=16, hidden=(12, 8), num_steps=4, payload_dead_zone=3))
    assert br.chip.payload_dead_zone == 3


@pytest.mark.parametrize("k", [-1, 129, 1.5])
def test_bad_dead_zone_is_refused(k):
    with pytest.raises(PlanFormatError, match="payload_dead_zone"):
        _with_dead_zone(quantized_plan(0, 4), k)


def test_every_backend_refuses_payloads_inside_the_dead_zone_alike():
    """The reference simulator and the torch deploy mode, step by step (Lava: below)."""
    branch = _branch(0, 3)
    chip = branch.chip
    state = chip.reset(2)
    plan = chip.plan
    assert plan.payload_dead_zone == 3
    x = apply_dead_zone(payloads(0, plan, 1, 2)[0], 3)
    x[1, 7] = -2.0
    errors = []
    ref = ReferenceSimulator(plan)
    for backend, st_ in ((ref, ref.reset(2)), (chip, state)):
        with pytest.raises(ChipInputError) as info:
            backend.step(x.float(), None, st_)
        errors.append(str(info.value))
    assert errors[0] == errors[1] and "dead zone |q| <= 3" in errors[0] and "-2 at index (1, 7)" in errors[0]


# ---------------------------------------------------------------------------------- full size

def _branch(seed: int, k: int) -> SpikingBranch:
    """The real-size spiking branch (512 -> 256 -> 256 -> 128, T = 10, dynamic thresholds),
    calibrated on random features, in deploy mode, with dead zone ``k``."""
    torch.manual_seed(seed)
    branch = SpikingBranch(24, 20, SpikingConfig()).eval()
    audio, visual = torch.randn(6, 8, 24) * 2, torch.randn(6, 8, 20) * 2
    with torch.no_grad():
        branch.calibrate_input(audio, visual, torch.full((6,), 8))
        branch.cue_info.fill_(1.0)
    branch.chip.payload_dead_zone = k
    branch.set_deploy(True)
    return branch


def _case(seed: int, regime: str, B: int = 4):
    """A real-size closed-loop case: branch, features, and the dead zone of the regime.

    ``none``: k = 0 and payloads of |q| = 1 occur (k = 1 would drop some, so the boundary is
    live); ``most``: k = the 75th percentile of the nonzero |q|, so that most payloads are dropped
    but not all."""
    branch = _branch(seed, 0)
    g = torch.Generator().manual_seed(seed + 7)
    S = 8
    audio = torch.randn(B, S, 24, generator=g) * 2
    visual = torch.randn(B, S, 20, generator=g) * 2
    lengths = torch.randint(1, S + 1, (B,), generator=g)
    with torch.no_grad():
        plan0, _ = branch.deployment_plan()
        q = plan0.encode_input(branch.encode(audio, visual, lengths)[0])
    nz = q[q != 0].abs()
    k = 0 if regime == "none" else int(torch.quantile(nz.double(), 0.75))
    branch.chip.payload_dead_zone = k
    return branch, audio, visual, lengths, q, k


def _assert_regime(q: torch.Tensor, k: int, regime: str, spikes) -> None:
    sent = int(((q != 0) & (q.abs() > k)).sum())
    nonzero = int((q != 0).sum())
    if regime == "none":
        assert k == 0 and int((q.abs() == 1).sum()) > 0 and sent == nonzero
    else:
        assert 0 < sent < 0.5 * nonzero, (sent, nonzero, k)
    assert int(spikes[0].sum()) > 0, "layer 1 never spiked: the case does not reach its regime"


@pytest.mark.parametrize("regime", ["none", "most"])
@FULL
@given(seed=st.integers(0, 10 ** 6))
def test_deploy_mode_equals_reference_with_a_dead_zone_at_full_size(seed, regime):
    branch, audio, visual, lengths, q, k = _case(seed, regime)
    with torch.no_grad():
        plan, _ = branch.deployment_plan()
        assert plan.payload_dead_zone == k
        x, g = branch.encode(audio, visual, lengths)
        want = branch.drive(x, g, ReferenceSimulator(plan))
        got = branch.drive(x, g, branch.chip)
    _assert_regime(q, k, regime, want.spikes)
    for l in range(plan.num_layers):
        assert torch.equal(got.spikes[l].double(), want.spikes[l].double()), f"layer {l} differs"
    assert torch.equal(got.theta.double(), want.theta.double())


@pytest.mark.lava
@pytest.mark.parametrize("regime", ["none", "most"])
@LAVA
@given(seed=st.integers(0, 10 ** 6))
def test_lava_session_closed_loop_equals_reference_with_a_dead_zone_at_full_size(seed, regime):
    from stft_neuro.sim.lava_session import LavaSession

    branch, audio, visual, lengths, q, k = _case(seed, regime)
    with torch.no_grad():
        plan, _ = branch.deployment_plan()
        x, g = branch.encode(audio, visual, lengths)
        want = branch.drive(x, g, ReferenceSimulator(plan))
        with LavaSession(plan, x.shape[1]) as lava:
            got = branch.drive(x, g, lava)
    _assert_regime(q, k, regime, want.spikes)
    for l in range(plan.num_layers):
        assert torch.equal(got.spikes[l], want.spikes[l]), f"layer {l}: Lava differs"
    assert torch.equal(got.theta, want.theta)


@pytest.mark.lava
@pytest.mark.parametrize("k", [0, 96])
@LAVA
@given(seed=st.integers(0, 10 ** 6))
def test_lava_session_equals_reference_with_dead_zoned_payloads(seed, k):
    """Random payloads over the whole range: k = 0 drops none, k = 96 drops most (|q| <= 96 of a
    uniform 8-bit range: about 75 %); every layer must still spike."""
    from test_lava_equivalence import compare, observe

    T = 10
    plan = _with_dead_zone(quantized_plan(seed, T), k)
    raw = payloads(seed, plan, T, 2)
    x = apply_dead_zone(raw, k)
    th = thetas(seed, plan, T, 2)
    dropped = int(((raw != 0) & (x == 0)).sum())
    nonzero = int((raw != 0).sum())
    if k == 0:   # none dropped, and payloads at the boundary (|q| = 1) are there to be sent
        assert dropped == 0 and int((raw.abs() == 1).sum()) > 0
    else:
        assert 0.5 * nonzero < dropped < nonzero
    assert {"spikes_l0", "spikes_l1", "spikes_l2"} <= observe(plan, x, th)
    compare(plan, x, th)  # Lava fixed_pt (LavaSession, B = 2) == reference, spikes and states


# ---------------------------------------------------------------------------------- report, NIR

def test_report_counts_the_dead_zone_from_what_ran(tmp_path):
    from stft_neuro.hw_targets.loihi2.weights import lava_effective_weights
    from stft_neuro.report.cli import report_run_folder
    from stft_neuro.report.records import write_run_folder

    T, B = 10, 3
    base = quantized_plan(4, T)
    raw = payloads(4, base, T, B)
    th = thetas(4, base, T, B)
    reps = {}
    for k in (0, 40):
        plan = _with_dead_zone(base, k)
        x = apply_dead_zone(raw, k)
        sp, _ = ReferenceSimulator(plan).run(x, th)
        run = write_run_folder(tmp_path / f"k{k}", plan, [s.transpose(0, 1).numpy() for s in sp],
                               x.transpose(0, 1).numpy(), th.transpose(0, 1).numpy(), {"backend": "reference"})
        reps[k], _ = report_run_folder(run)
        fan = (lava_effective_weights(plan.network.layers[0].weight) != 0).sum(0)
        want = float(((x != 0).numpy().astype(np.int64) @ fan).sum()) / B
        name = plan.network.layers[0].name
        assert reps[k]["layers"][name]["synaptic_events"] == pytest.approx(want)
        assert reps[k]["messages"]["host_to_chip"]["payloads"] == float((x != 0).sum()) / B
        assert reps[k]["messages"]["host_to_chip"]["payload_dead_zone"] == k
    assert reps[40]["energy"]["chip"] < reps[0]["energy"]["chip"]
    from stft_neuro.report.build import format_table
    assert "dead zone |q| <= 40 sent as 0" in format_table(reps[40])
    assert "dead zone" not in format_table(reps[0])
    ann = reps[0]["energy"]["ann_all_on_host"]
    assert ann["chip_over_spiking_branch_as_ann"] == pytest.approx(reps[0]["energy"]["chip"]
                                                                   / ann["spiking_branch_as_ann"])


def test_nir_export_carries_the_dead_zone_as_metadata():
    from stft_neuro.converters.nir_out import plan_to_nir
    g = plan_to_nir(_with_dead_zone(quantized_plan(0, 4), 7))
    assert json.loads(g.metadata["stft_neuro.plan"])["payload_dead_zone"] == 7
    g0 = plan_to_nir(quantized_plan(0, 4))
    assert "payload_dead_zone" not in json.loads(g0.metadata["stft_neuro.plan"])


@pytest.mark.lava
def test_lava_session_refuses_payloads_inside_the_dead_zone_before_it_starts():
    from stft_neuro.sim.lava_session import LavaSession

    plan = _with_dead_zone(quantized_plan(0, 4), 3)
    x = apply_dead_zone(payloads(0, plan, 4, 2), 3)
    x[2, 1, 7] = -2.0
    lava = LavaSession(plan, 2)
    with pytest.raises(ChipInputError) as lava_err:
        lava.run(x)
    with pytest.raises(ChipInputError) as ref_err:
        ReferenceSimulator(plan).run(x)
    assert str(lava_err.value) == str(ref_err.value) and "dead zone" in str(ref_err.value)
    assert lava._net is None  # nothing was built
