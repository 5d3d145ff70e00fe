"""A float run's deployment plan is computed once, stored in the run folder (``stft_neuro/run_plan.py``)
and read by every consumer: ``export``, ``resources``, ``simulate`` and QAT run exactly the stored
plan, not a plan each recalibrated on its own (device). A run folder written before plans were
stored gets it derived once, saved and announced; a stored plan of other weights is refused in
one line. A tiny trained run (tests/test_cli.py's TINY) keeps this fast.
"""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from stft_neuro.checkpoint import load_run
from stft_neuro.cli import main
from stft_neuro.data import load_benchmark
from stft_neuro.hw_targets.loihi2.plan import DeploymentPlan
from stft_neuro.run_plan import PLAN_FILE, derive_plan, same_plan

from test_cli import TINY, _sets


@pytest.fixture(scope="module")
def float_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("plan") / "run"
    assert main(["train", "--json", "--out", str(run), *_sets(*TINY)]) == 0
    return run


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_train_stores_the_plan_derived_on_cpu(float_run):
    model, cfg, _ = load_run(float_run)
    stored = DeploymentPlan.load(float_run / PLAN_FILE)
    bench = load_benchmark(cfg.data)
    assert same_plan(stored, derive_plan(model, bench.splits["stage_2_train"]))
    assert float(model.spiking.chip.input_scale) == 0.0  # derive_plan left the model as it was


def test_a_run_trained_through_the_trainer_stores_its_plan_too(tmp_path):
    """Sweeps and benchmarks train with ``Trainer`` directly (no CLI): the run folder holds the
    same plan the CLI's training stores, and no consumer has to derive it."""
    from stft_neuro import config as config_mod
    from stft_neuro.train import Trainer
    cfg = config_mod.load(overrides=list(TINY))
    bench = load_benchmark(cfg.data)
    Trainer(cfg, bench, tmp_path / "run").run()
    model, _, _ = load_run(tmp_path / "run")
    assert same_plan(DeploymentPlan.load(tmp_path / "run" / PLAN_FILE),
                     derive_plan(model, bench.splits["stage_2_train"]))


def test_every_consumer_runs_the_stored_plan(float_run, tmp_path, capsys):
    """The stored plan with its input scale moved by one float32 step (a plan a GPU calibration
    could have produced): export's bundle, resources, simulate and QAT all use exactly it; each
    recalibrating on its own would give the other scale."""
    run = _copy(float_run, tmp_path / "run")
    model, _, _ = load_run(run)
    calibrated = DeploymentPlan.load(run / PLAN_FILE).input_scale
    moved = float(np.nextafter(np.float32(calibrated), np.float32(np.inf)))
    model.spiking.chip.input_scale.fill_(moved)
    plan = model.spiking.deployment_plan()[0]
    assert plan.input_scale == moved != calibrated
    plan.save(run / PLAN_FILE)

    bundle = tmp_path / "bundle"
    assert main(["export", "--json", "--checkpoint", str(run), "--target", "onnx", "--out", str(bundle)]) == 0
    assert same_plan(DeploymentPlan.load(bundle / "plan.safetensors"), plan)
    capsys.readouterr()
    assert main(["resources", "--json", "--checkpoint", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["quantization"]["input_scale"] == moved
    sim = tmp_path / "sim"
    assert main(["simulate", "--json", "--checkpoint", str(run), "--backend", "reference", "--samples", "3",
                 "--out", str(sim)]) == 0
    assert same_plan(DeploymentPlan.load(sim / "plan.safetensors"), plan)
    # --host torch with the bundle made from the same run: the plans agree, no refusal
    assert main(["simulate", "--json", "--bundle", str(bundle), "--checkpoint", str(run), "--backend",
                 "reference", "--samples", "3", "--out", str(tmp_path / "sim2")]) == 0
    qat = tmp_path / "qat"
    assert main(["train", "--json", "--qat", "--from", str(run), "--out", str(qat), "--set", "train.epochs=1"]) == 0
    assert float(load_run(qat)[0].spiking.chip.input_scale) == moved


def test_a_run_without_a_stored_plan_derives_it_once_and_says_so(float_run, tmp_path, caplog):
    run = _copy(float_run, tmp_path / "old")
    want = DeploymentPlan.load(run / PLAN_FILE)
    (run / PLAN_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger="stft_neuro.run_plan"):
        assert main(["simulate", "--json", "--checkpoint", str(run), "--backend", "reference", "--samples", "2",
                     "--out", str(tmp_path / "sim")]) == 0
    said = [r.getMessage() for r in caplog.records if r.name == "stft_neuro.run_plan"]
    assert len(said) == 1 and "no stored deployment plan" in said[0] and str(run / PLAN_FILE) in said[0]
    assert same_plan(DeploymentPlan.load(run / PLAN_FILE), want)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stft_neuro.run_plan"):
        assert main(["resources", "--json", "--checkpoint", str(run)]) == 0
    assert not [r for r in caplog.records if r.name == "stft_neuro.run_plan"]  # read, not derived again


def test_a_stored_plan_of_other_weights_is_refused_in_one_line(float_run, tmp_path, capsys):
    run = _copy(float_run, tmp_path / "run")
    model, _, _ = load_run(run)
    with torch.no_grad():
        model.spiking.chip.weights[0].mul_(-1.0)
    model.spiking.chip.input_scale.fill_(DeploymentPlan.load(run / PLAN_FILE).input_scale)
    model.spiking.deployment_plan()[0].save(run / PLAN_FILE)
    out = tmp_path / "bundle"
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(run), "--target", "nir", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not the deployment plan of this run's weights" in err, err
    assert str(run / PLAN_FILE) in err and not out.exists()
