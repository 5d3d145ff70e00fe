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


def _left(segments: list[str]) -> list[str]:
    """Which of a runtime's shared-memory segments still exist (its own names: other processes
    on the machine may run Lava at the same time, so a before/after listing would blame them)."""
    assert segments, "the runtime listed no segments: nothing would be checked"
    return [n for n in segments if Path("/dev/shm", n).exists()]


def test_batch_in_one_network_equals_reference_with_dynamic_thetas():
    from stft_neuro.sim.lava_session import LavaSession, SessionState

    T, B = 8, 5
    plan = quantized_plan(3, T)
    ref = ReferenceSimulator(plan)
    x, th = payloads(3, plan, T, B), thetas(3, plan, T, B)
    want, _ = ref.run(x, th)
    _assert_all_layers_spike(want)
    with LavaSession(plan, B) as lava:
        got, state = lava.run(x, th)                       # sequence 1: run
        segments = lava._runtime.segments
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
    assert _left(segments) == [], "Lava shared memory left in /dev/shm"


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
    lava = LavaSession(plan, B, step_timeout_s=30)
    try:
        state = lava.reset(B)
        segments = lava._runtime.segments
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
    assert _left(segments) == [], "Lava shared memory left in /dev/shm"


# ------------------------------------------------------------------ signals: nothing left behind

_CHILD = r"""
import json, os, sys, time
from pathlib import Path
from test_lava_equivalence import payloads, quantized_plan, thetas
from stft_neuro.sim.lava_session import LavaSession

T, B = 10, 4
plan = quantized_plan(1, T)
x, th = payloads(1, plan, T, B), thetas(1, plan, T, B)
with LavaSession(plan, B) as lava:
    state = lava.reset(B)
    rt = lava._net["anchor"].runtime
    infra = rt._messaging_infrastructure
    info = {"pid": os.getpid(), "actors": [a.pid for a in infra.actors],
            "shm": lava._runtime.segments}
    steps = 0
    while True:                      # step until a signal ends it
        for t in range(T):
            _, state = lava.step(x[t], th[t], state)
            steps += 1
            if steps == 3:
                Path(sys.argv[1]).write_text(json.dumps(info))
        state = lava.reset(B)
"""


def _session_members(sid: int) -> set[int]:
    """Live (not zombie) processes of the session ``sid``: the child and everything it forked,
    wherever they were re-parented."""
    alive = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
                alive.add(int(d.name))
    return alive


@pytest.mark.parametrize("how", ["sigint-group", "sigterm", "sigterm-group"])
def test_a_signal_mid_run_leaves_no_lava_process_or_shared_memory(tmp_path, how):
    """A process running a LavaSession is stopped mid-step by Ctrl-C (SIGINT to its whole process
    group, Lava's process models included), by ``kill`` (SIGTERM to it alone) or by SIGTERM to the
    group. In each case it ends with an error exit, through KeyboardInterrupt (so its ``finally``
    blocks ran), and leaves no process of its session and none of its shared-memory segments."""
    import json
    import subprocess
    import sys

    info_file = tmp_path / "info.json"
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(info_file)],
                            cwd=Path(__file__).parent, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not info_file.exists():
            assert proc.poll() is None, f"child died early: {proc.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, "child never started stepping"
            time.sleep(0.1)
        time.sleep(0.3)
        info = json.loads(info_file.read_text())
        assert info["actors"] and info["shm"], info
        assert _session_members(proc.pid) >= set(info["actors"]), "the process models run"
        if how == "sigint-group":
            os.killpg(proc.pid, signal.SIGINT)
        elif how == "sigterm":
            os.kill(proc.pid, signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in err, err[-2000:]
    deadline = time.monotonic() + 10
    while _session_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _session_members(proc.pid) == set(), "Lava processes left behind"
    left = [n for n in info["shm"] if Path("/dev/shm", n).exists()]
    assert left == [], f"shared memory left behind: {left[:4]}"


def test_closing_mid_sequence_drains_more_steps_than_lavas_buffers_hold():
    """An abandoned sequence (an ordinary error in the host after 2 of 80 steps) is drained step by
    step before the runtime stops: 78 owed steps on two injectors, more than Lava's 50-step
    channels hold, must neither block nor leave anything behind, and the next session still works."""
    from stft_neuro.sim.lava_session import LavaSession

    T, B = 80, 2
    plan = quantized_plan(2, T)
    x, th = payloads(2, plan, T, B), thetas(2, plan, T, B)
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="host failed"):
        with LavaSession(plan, B, step_timeout_s=30) as lava:
            state = lava.reset(B)
            segments = lava._runtime.segments
            for t in range(2):
                _, state = lava.step(x[t], th[t], state)
            raise ValueError("host failed")           # the fault: an ordinary host error
    assert time.monotonic() - t0 < 60
    assert _children() == set(), "Lava process models left running"
    assert _left(segments) == [], "Lava shared memory left in /dev/shm"
    want, _ = ReferenceSimulator(plan).run(x[:4], th[:4])
    with LavaSession(plan, B) as lava:
        got, _ = lava.run(x[:4], th[:4])
    for l in range(plan.num_layers):
        assert torch.equal(got[l], want[l])
