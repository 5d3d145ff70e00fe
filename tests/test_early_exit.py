"""Early exit in the hybrid loop (issue 17, part 3).

- The closed loop with a stop rule, at the STFT's real size (512 -> 256 -> 256 -> 128, T = 10,
  dynamic thresholds): samples of one batch stopping at every step 1..T give, for the steps they
  ran, exactly the full run's spikes, thetas and payloads (zeros after), on the reference
  simulator and the torch chip in deploy mode (hypothesis schedules), and on the Lava session
  (the finished samples drop out of its batch) equal to the reference's.
- ``simulate --early-exit`` end to end on a tiny trained run: reference == Lava records; the
  calibrated rule is stored with the run; the report counts what the records say ran, checked
  against counts of the samples' truncated records made without ``steps_run``; off, the records
  have no ``steps_run``; bad options are one line, a non-zero exit and no output.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stft_neuro.cli import main
from stft_neuro.closed_loop import StopAfter, closed_loop
from stft_neuro.config import SpikingConfig
from stft_neuro.model.host import SpikingBranch
from stft_neuro.sim.reference import ReferenceSimulator
from stft_neuro.simulate.early_exit import ExitRule, choose_rule, exit_steps, judged_steps

from test_cli import TINY, _sets



@pytest.fixture(scope="module")
def real_branch():
    """A real-size branch in deploy mode, its plan, and encoded input of B = 14 samples."""
    torch.manual_seed(0)
    cfg = SpikingConfig()
    br = SpikingBranch(24, 20, cfg).eval()
    B, S = 14, 6
    a, v = torch.randn(B, S, 24) * 2, torch.randn(B, S, 20) * 2
    n = torch.randint(1, S + 1, (B,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        br.calibrate_input(a, v, n)
        br.cue_info.fill_(1.0)          # thresholds move visibly with the spikes
        br.set_deploy(True)
        plan, _ = br.deployment_plan()
        x, g = br.encode(a, v, n)
        full = closed_loop(br, ReferenceSimulator(plan), x, g)
    for l, s in enumerate(full.spikes):
        assert int(s.sum()) > 0, f"layer {l} never spiked: the case does not reach its regime"
    assert int(full.theta.unique().numel()) > plan.num_layers, "thresholds do not move"
    return br, plan, x, g, full


def _check_truncated(rec, full, steps) -> None:
    """``rec`` (early exit) is ``full`` for the steps each sample ran and zeros after."""
    assert torch.equal(rec.steps, torch.as_tensor(steps))
    T = full.spikes[0].shape[0]
    ran = torch.arange(T)[:, None] < torch.as_tensor(steps)[None, :]           # (T, B)
    for l, (got, want) in enumerate(zip(rec.spikes, full.spikes)):
        assert torch.equal(got.float(), want.float() * ran[..., None]), f"layer {l}"
    assert torch.equal(rec.theta, full.theta * ran[..., None]), "thetas"
    assert torch.equal(rec.sent, full.sent * ran[..., None]), "payloads"


def _every_step_schedule(T: int, B: int, extra: list[int]) -> torch.Tensor:
    """Steps per sample: 1..T each once, then ``extra`` (B - T values)."""
    return torch.tensor(list(range(1, T + 1)) + extra[:B - T])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extra=st.lists(st.integers(1, 10), min_size=4, max_size=4), seed=st.integers(0, 2**16))
def test_samples_exiting_at_every_step_equal_the_full_run(real_branch, extra, seed):
    br, plan, x, g, full = real_branch
    T, B = plan.num_steps, int(x.shape[1])
    steps = _every_step_schedule(T, B, extra)
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(seed))
    steps = steps[perm]                                     # exits anywhere in the batch
    assert set(steps.tolist()) == set(range(1, T + 1))      # the regime: an exit at every step
    with torch.no_grad():
        for backend in (ReferenceSimulator(plan), br.chip):
            _check_truncated(closed_loop(br, backend, x, g, stop=StopAfter(steps)), full, steps)


@pytest.mark.lava
def test_lava_session_drops_finished_samples_like_the_reference(real_branch):
    from stft_neuro.sim.lava_session import LavaSession

    br, plan, x, g, full = real_branch
    T, B = plan.num_steps, int(x.shape[1])
    steps = _every_step_schedule(T, B, [10, 3, 1, 7])[torch.randperm(B, generator=torch.Generator().manual_seed(3))]
    with torch.no_grad():
        want = closed_loop(br, ReferenceSimulator(plan), x, g, stop=StopAfter(steps))
        with LavaSession(plan, B) as lava:
            got = closed_loop(br, lava, x, g, stop=StopAfter(steps))
            assert lava.timing.sample_steps == int(steps.sum())   # the host exchanged only the steps run
            # every sample stops after step 2: the sequence ends early; the next one is whole
            short = closed_loop(br, lava, x, g, stop=StopAfter(torch.full((B,), 2)))
            again = closed_loop(br, lava, x, g)
            assert lava.timing.builds == 1
    _check_truncated(got, full, steps)
    for l in range(plan.num_layers):
        assert torch.equal(got.spikes[l], want.spikes[l]), f"layer {l}: Lava differs from the reference"
        assert torch.equal(again.spikes[l], full.spikes[l]), f"layer {l}: state leaked after an early end"
    assert torch.equal(got.theta, want.theta)
    _check_truncated(short, full, torch.full((B,), 2))


def test_offline_rule_and_its_calibration():
    # predictions (T, N) and margins by hand: sample 0 confident at step 2, sample 1 stable from
    # step 2 (patience 2 -> stops after step 4), sample 2 never
    preds = np.array([[0, 1, 2], [0, 1, 3], [5, 1, 2], [5, 1, 3], [5, 1, 2]])
    margins = np.array([[0.0, 0.0, 0.0], [0.9, 0.1, 0.1], [0.1, 0.1, 0.1], [0.1, 0.1, 0.1], [0.1, 0.1, 0.1]])
    rule = ExitRule(min_steps=2, patience=2, margin=0.5)
    assert exit_steps(rule, preds, margins).tolist() == [2, 4, 5]
    assert exit_steps(ExitRule(min_steps=1), preds, margins).tolist() == [5, 5, 5]
    assert judged_steps(np.array([2, 4, 5]), 2, 5).tolist() == [1, 3, 3]
    labels = np.array([5, 1, 2])
    chosen, fig = choose_rule(preds, margins, labels, np.array([1, 2]), min_steps=2, max_hm_drop=0.0)
    assert fig["hm"] >= fig["hm_full"] and fig["steps_mean"] < 5
    with pytest.raises(Exception, match="min_steps"):
        ExitRule(min_steps=0)


# ------------------------------------------------------------------------------------------------
# simulate --early-exit, end to end

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ee")
    run = root / "run"
    assert main(["train", "--json", "--out", str(run), *_sets(*TINY)]) == 0
    return run


def _sim(out, run, *args):
    assert main(["simulate", "--json", "--checkpoint", str(run), "--out", str(out), *args]) == 0
    with np.load(out / "records.npz") as z:
        rec = {k: z[k] for k in z.files}
    return rec, json.loads((out / "results.json").read_text())


def _median_margin(run, steps: int) -> float:
    """The median validation margin after ``steps`` steps (the run's model and stored plan)."""
    from stft_neuro.checkpoint import load_run
    from stft_neuro.data import load_benchmark
    from stft_neuro.hw_targets.loihi2.plan import DeploymentPlan
    from stft_neuro.run_plan import set_plan
    from stft_neuro.simulate.early_exit import validation_predictions
    model, cfg, meta = load_run(run)
    plan = DeploymentPlan.load(run / "plan.safetensors")
    set_plan(model, plan, str(run))
    model.spiking.set_deploy(True)
    _, margins, _ = validation_predictions(model.eval(), load_benchmark(cfg.data), plan,
                                           float(meta["progress"]["best_bias"]))
    return float(np.median(margins[steps - 1]))


def _truncated_counts(rec, plan):
    """Counts of every sample's records cut at its steps_run, grouped by steps, added up: the
    report's definitions without its early-exit path."""
    from stft_neuro.report.counts import count_plan_run
    steps, L = rec["steps_run"], plan.num_layers
    total = None
    for s in np.unique(steps):
        idx = np.nonzero(steps == s)[0]
        c = count_plan_run(plan, [rec[f"spikes_{l + 1}"][idx, :s] for l in range(L)], rec["payloads"][idx, :s],
                           rec["theta"][idx, :s])
        keys = ("spikes", "synaptic_events", "active_updates", "inactive_updates", "dense_ops")
        got = {k: c.total(k) for k in keys}
        got["theta_messages"] = int(c.theta_messages.sum())
        got["payload_messages"] = int(c.payload_messages.sum())
        total = got if total is None else {k: total[k] + got[k] for k in got}
    return total


@pytest.mark.lava
def test_simulate_early_exit_reference_equals_lava_and_the_report_counts_the_steps_run(tmp_path, tiny_run, capsys):
    from stft_neuro.hw_targets.loihi2.plan import DeploymentPlan
    from stft_neuro.report.cli import report_run_folder
    from stft_neuro.report.counts import count_plan_run

    run = tiny_run
    off, res_off = _sim(tmp_path / "off", run, "--backend", "reference")
    assert "steps_run" not in off and res_off["early_exit"] is None      # off: the records as before
    # the run's rule, calibrated on stage-1 validation and stored with the run (HM may drop 100)
    ref, res = _sim(tmp_path / "ref", run, "--backend", "reference", "--early-exit", "--early-exit-max-drop", "100")
    stored = ExitRule.load(run / "early_exit.json")
    assert stored.calibration["max_hm_drop"] == 100 and res["early_exit"]["rule"] == stored.to_dict()
    T = res["num_steps"]
    assert ref["steps_run"].max() < T, "a rule allowed to lose all HM must stop early"
    # a hand-made rule file with exits from step 1 on, at the median validation margin after
    # step L + 1: several exit steps in one batch
    rule = tmp_path / "rule.json"
    ExitRule(min_steps=1, margin=_median_margin(run, 3)).save(rule)
    for name in ("ref1", "lava1"):
        backend = "reference" if name == "ref1" else "lava"
        rec, res1 = _sim(tmp_path / name, run, "--backend", backend, "--early-exit", str(rule), "--batch", "7")
        if name == "ref1":
            want = rec
            assert len(np.unique(rec["steps_run"])) >= 2 and rec["steps_run"].min() < T, \
                "the case does not reach early exits at several steps"
        else:
            for k in ("spikes_1", "spikes_2", "theta", "payloads", "pred", "steps_run"):
                assert np.array_equal(rec[k], want[k]), f"--backend lava: {k} differs from the reference"
    # a sample's records up to its exit are the full run's (the loop recomputes nothing)
    ran = np.arange(T)[None, :] < want["steps_run"][:, None]
    for k in ("spikes_1", "spikes_2", "theta", "payloads"):
        assert np.array_equal(want[k], off[k] * ran[..., None].astype(off[k].dtype)), k
    # the report counts only the steps that ran
    plan = DeploymentPlan.load(tmp_path / "ref1" / "plan.safetensors")
    rep, _ = report_run_folder(tmp_path / "ref1")
    oracle = _truncated_counts(want, plan)
    N = len(want["labels"])
    counted = count_plan_run(plan, [want["spikes_1"], want["spikes_2"]], want["payloads"], want["theta"],
                             steps_run=want["steps_run"])
    for k in ("spikes", "synaptic_events", "active_updates", "inactive_updates", "dense_ops"):
        assert counted.total(k) == oracle[k], k
    assert int(counted.theta_messages.sum()) == oracle["theta_messages"] == 2 * int(want["steps_run"].sum())
    assert rep["steps_run"]["sample_steps"] == int(want["steps_run"].sum())
    assert rep["messages"]["host_to_chip"]["theta"] * N == pytest.approx(oracle["theta_messages"])
    assert sum(l["active_updates"] + l["inactive_updates"] for l in rep["layers"].values()) * N == \
        pytest.approx(oracle["active_updates"] + oracle["inactive_updates"])
    full_rep, _ = report_run_folder(tmp_path / "off")
    assert rep["energy"]["chip"] < full_rep["energy"]["chip"]
    assert rep["host"]["components"]["early_exit"]["flops"] > 0


def _one_line_error(capsys, argv) -> str:
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc != 0 and err and "\n" not in err and "Traceback" not in err, (rc, err)
    return err


def test_bad_early_exit_options_are_one_line_and_leave_no_output(tmp_path, tiny_run, capsys):
    run, out = tiny_run, tmp_path / "out"
    base = ["simulate", "--checkpoint", str(run), "--backend", "reference", "--out", str(out)]
    bad_rule = tmp_path / "bad.json"
    bad_rule.write_text(json.dumps({"format": "stft-neuro/early-exit", "version": 1, "min_steps": 0}))
    other = tmp_path / "other.json"
    ExitRule(min_steps=1, margin=0.1, calibration={"plan_sha256": "0" * 64}).save(other)
    for args, match in [(["--early-exit-max-drop", "1"], "give --early-exit too"),
                        (["--early-exit", "--early-exit-max-drop", "-1"], ">= 0"),
                        (["--early-exit", "--early-exit-max-drop", "nan"], ">= 0"),
                        (["--early-exit", str(other), "--early-exit-max-drop", "1"], "already calibrated"),
                        (["--early-exit", str(tmp_path / "missing.json")], "no such early-exit rule"),
                        (["--early-exit", str(bad_rule)], "min_steps must be"),
                        (["--early-exit", str(other)], "another deployment plan")]:
        err = _one_line_error(capsys, base + args)
        assert match in err, (args, err)
        assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_the_bundle_carries_the_runs_rule_and_runs_it_without_the_checkpoint(tmp_path, tiny_run, capsys):
    """``export`` copies the run's rule when it was calibrated for the bundle's plan (not one made
    for another plan); ``simulate --bundle --host onnx --early-exit`` without the checkpoint runs
    it and stops every sample where the checkpoint's run stops it; a bundle without one is one line."""
    import shutil
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "early_exit.json").unlink(missing_ok=True)
    ExitRule(min_steps=1, margin=0.1, calibration={"plan_sha256": "0" * 64}).save(run / "early_exit.json")
    assert main(["export", "--json", "--checkpoint", str(run), "--target", "onnx", "--out", str(tmp_path / "b0")]) == 0
    assert not (tmp_path / "b0" / "early_exit.json").exists(), "a rule made for another plan was copied"
    assert json.loads((tmp_path / "b0" / "manifest.json").read_text())["early_exit"] is None
    alone = ["simulate", "--bundle", str(tmp_path / "b0"), "--host", "onnx", "--backend", "reference",
             "--early-exit", "--out", str(tmp_path / "none")]
    assert "carries none" in _one_line_error(capsys, alone)
    assert not (tmp_path / "none").exists()

    (run / "early_exit.json").unlink()
    want, res = _sim(tmp_path / "ckpt", run, "--backend", "reference", "--early-exit", "--early-exit-max-drop", "100")
    T = res["num_steps"]
    assert want["steps_run"].min() < T, "a rule allowed to lose all HM must stop early"
    assert main(["export", "--json", "--checkpoint", str(run), "--target", "onnx", "--out", str(tmp_path / "b1")]) == 0
    manifest = json.loads((tmp_path / "b1" / "manifest.json").read_text())
    assert manifest["early_exit"]["calibration"] == ExitRule.load(run / "early_exit.json").calibration
    assert "early_exit.json" in manifest["files"]
    shutil.rmtree(run)   # the bundle runs alone: no checkpoint anywhere
    alone[2], alone[-1] = str(tmp_path / "b1"), str(tmp_path / "alone")
    capsys.readouterr()
    assert main(alone + ["--json"]) == 0
    with np.load(tmp_path / "alone" / "records.npz") as z:
        got = {k: z[k] for k in z.files}
    res_alone = json.loads((tmp_path / "alone" / "results.json").read_text())
    assert res_alone["early_exit"]["rule"] == res["early_exit"]["rule"]
    assert np.array_equal(got["steps_run"], want["steps_run"])
    assert np.array_equal(got["pred"], want["pred"])
