"""LavaSession (one Lava fixed_pt network for a batch) == the reference simulator, spike for spike.

At the STFT's real size (512 -> 256 -> 256 -> 128, a plan from the project's quantizer on
trained-like weights), with B >= 4 samples in one block-diagonal network and per-sample, per-layer
dynamic thresholds; every case asserts that every layer spikes (so zeros == zeros cannot pass).
Also: the in-place reset between sequences (smaller batch: padding), the closed loop of
``SpikingBranch.drive``, the plan's input errors, and a process model that dies mid-run.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from stft_neuro.config import SpikingConfig
from stft_neuro.hw_targets.errors import ChipInputError
from stft_neuro.model.host import SpikingBranch
from stft_neuro.sim.reference import ReferenceSimulator

from test_lava_equivalence import payloads, quantized_plan, thetas

pytestmark = pytest.mark.lava


def _assert_all_layers_spike(spikes) -> None:
    for l, s in enumerate(spikes):
        assert int(s.sum()) > 0, f"layer {l} never spiked: the case does not reach its regime"


def _children() -> set[int]:
    """PIDs of this process's live children (from /proc; psutil is not installed here), except
    multiprocessing's resource tracker: Python starts it once per process at the first shared-memory
    segment and it lives (by design) until this process exits; it is what would report a leak."""
    me, kids = str(os.getpid()), set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me and fields[0] != "Z":
                cmd = (d / "cmdline").read_bytes().decode(errors="replace")
                if "resource_tracker" not in cmd:
                    kids.add(int(d.name))
    return kids


def _shm() -> set[str]:
    return set(os.listdir("/dev/shm"))


def test_batch_in_one_network_equals_reference_with_dynamic_thetas():
    from stft_neuro.sim.lava_session import LavaSession, SessionState

    T, B = 8, 5
    plan = quantized_plan(3, T)
    ref = ReferenceSimulator(plan)
    x, th = payloads(3, plan, T, B), thetas(3, plan, T, B)
    want, _ = ref.run(x, th)
    _assert_all_layers_spike(want)
    shm0 = _shm()
    with LavaSession(plan, B) as lava:
        got, state = lava.run(x, th)                       # sequence 1: run
        for l in range(plan.num_layers):
            assert torch.equal(got[l], want[l]), f"layer {l}: Lava batch differs from the reference"
        # sequence 2, 3 samples (padded to the capacity), step by step after an in-place reset
        x2, th2 = payloads(4, plan, T, 3), thetas(4, plan, T, 3)
        want2, _ = ref.run(x2, th2)
        _assert_all_layers_spike(want2)
        state = lava.reset(3)
        assert isinstance(state, SessionState)
        for t in range(T):
            s_t, state = lava.step(x2[t], th2[t], state)
            for l in range(plan.num_layers):
                assert torch.equal(s_t[l], want2[l][t]), f"step {t} layer {l} after reset differs"
        assert lava.timing.builds == 1 and lava.timing.resets == 1   # reset in place, no rebuild
        with pytest.raises(ChipInputError, match="earlier sequence"):
            lava.reset(3)
            lava.step(x2[0], th2[0], state)               # a stale state token is refused
        # a sequence abandoned after 2 steps, then a full one: the reset must clear it all
        state = lava.reset(B)
        for t in range(2):
            _, state = lava.step(x2[t].repeat(2, 1)[:B], th2[t].repeat(2, 1)[:B], state)
        again, _ = lava.run(x, th, lava.reset(B))
        for l in range(plan.num_layers):
            assert torch.equal(again[l], want[l]), f"layer {l}: state leaked across a reset"
        assert lava.timing.builds == 1
    assert _children() == set(), "Lava process models left running"
    assert _shm() - shm0 == set(), "Lava shared memory left in /dev/shm"


def test_closed_loop_drive_through_lava_equals_reference():
    from stft_neuro.sim.lava_session import LavaSession

    torch.manual_seed(0)
    cfg = SpikingConfig()  # the real size: 512 -> 256 -> 256 -> 128, T = 10, dynamic thresholds
    branch = SpikingBranch(24, 20, cfg).eval()
    B, S = 4, 6
    audio, visual = torch.randn(B, S, 24) * 2, torch.randn(B, S, 20) * 2
    lengths = torch.tensor([6, 3, 5, 1])
    with torch.no_grad():
        branch.calibrate_input(audio, visual, lengths)
        branch.cue_info.fill_(1.0)   # make the thresholds move visibly with the spikes
        branch.set_deploy(True)
        plan, _ = branch.deployment_plan()
        x, g = branch.encode(audio, visual, lengths)
        want = branch.drive(x, g, ReferenceSimulator(plan))
        with LavaSession(plan, B) as lava:
            got = branch.drive(x, g, lava)
    _assert_all_layers_spike(want.spikes)
    assert want.theta is not None and int(want.theta.unique().numel()) > plan.num_layers, \
        "thresholds did not move: not a closed loop"
    for l in range(plan.num_layers):
        assert torch.equal(got.spikes[l], want.spikes[l]), f"closed loop: layer {l} differs"
    assert torch.equal(got.theta, want.theta), "closed loop: thetas differ"


def test_bad_input_gives_the_plans_error_before_lava_starts():
    from stft_neuro.sim.lava_session import LavaSession

    plan = quantized_plan(0, 4)
    lava = LavaSession(plan, 2)
    x = payloads(0, plan, 4, 2)
    x[1, 0, 3] = plan.payload_range[1] + 1
    with pytest.raises(ChipInputError) as lava_err:
        lava.run(x)
    with pytest.raises(ChipInputError) as ref_err:
        ReferenceSimulator(plan).run(x)
    assert str(lava_err.value) == str(ref_err.value)
    with pytest.raises(ChipInputError, match="theta"):
        lava.run(payloads(0, plan, 4, 2), torch.zeros(4, 2, plan.num_layers + 1))
    assert lava._net is None  # nothing was built


def test_a_process_model_that_dies_ends_the_run_with_one_error_and_no_leftovers():
    from stft_neuro.sim.lava_session import LavaSession, LavaSessionError

    T, B = 6, 4
    plan = quantized_plan(1, T)
    x, th = payloads(1, plan, T, B), thetas(1, plan, T, B)
    shm0 = _shm()
    lava = LavaSession(plan, B, step_timeout_s=30)
    try:
        state = lava.reset(B)
        _, state = lava.step(x[0], th[0], state)
        victim = lava._net["lifs"][1].runtime._messaging_infrastructure.actors[0]
        os.kill(victim.pid, signal.SIGKILL)   # the fault: a process model dies
        t0 = time.monotonic()
        with pytest.raises(LavaSessionError, match="died"):
            for t in range(1, T):
                _, state = lava.step(x[t], th[t], state)
        assert time.monotonic() - t0 < 20
    finally:
        lava.close(force=True)
    assert _children() == set(), "Lava process models left running"
    assert _shm() - shm0 == set(), "Lava shared memory left in /dev/shm"
