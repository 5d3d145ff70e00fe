"""``stft-neuro simulate``: identical records across backends, ONNX host == torch host, the record
format, one-line errors on bad input, and no leftovers when a Lava-backed run is interrupted.

A tiny trained run (tests/test_cli.py's TINY: 16 -> 12 -> 8, T = 4, dynamic thresholds) and its
ONNX bundle keep this fast; the real-size bit-exactness of the Lava bridge is tests/test_lava_session.py.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stft_neuro.cli import main
from stft_neuro.hw_targets.loihi2.plan import DeploymentPlan

from test_cli import TINY, _sets
from test_lava_session import _shm

RECORD_KEYS = {"spikes_1", "spikes_2", "theta", "payloads", "labels", "pred", "sample_index", "split_name"}
#: The keys a backend can change: the spikes it computes, and through the closed loop the thetas
#: and the predictions. The others (payloads, labels, sample_index, split_name) are the host's or
#: the data's whatever the backend, so they are checked against the data and the model instead.
BACKEND_KEYS = {"spikes_1", "spikes_2", "theta", "pred"}


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    run, bundle = root / "run", root / "bundle"
    assert main(["train", "--json", "--out", str(run), *_sets(*TINY)]) == 0
    assert main(["export", "--json", "--checkpoint", str(run), "--target", "onnx", "--out", str(bundle)]) == 0
    return run, bundle


def _simulate(tmp_path, bundle, *args) -> tuple[dict, dict]:
    out = tmp_path / ("sim_" + "_".join(a.strip("-") for a in args))
    assert main(["simulate", "--json", "--bundle", str(bundle), "--out", str(out), *args]) == 0
    with np.load(out / "records.npz") as z:
        rec = {k: z[k] for k in z.files}
    return rec, json.loads((out / "results.json").read_text())


def _oracle(run, rec) -> None:
    """The records of a run checked against what they must be, computed here without simulate's
    loop: the labels and features from the benchmark itself, the payloads by the run's model and
    stored plan, the thetas written out step by step from the recorded spikes, and the spikes by
    the reference simulator run open-loop on the recorded payloads and thetas."""
    import torch

    from stft_neuro.checkpoint import load_run
    from stft_neuro.data import load_benchmark
    from stft_neuro.sim.reference import ReferenceSimulator
    model, cfg, _ = load_run(run)
    plan = DeploymentPlan.load(run / "plan.safetensors")
    model.spiking.chip.input_scale.fill_(plan.input_scale)
    bench = load_benchmark(cfg.data)
    picks = list(zip(rec["split_name"].tolist(), rec["sample_index"].tolist()))
    assert rec["labels"].tolist() == [int(bench.splits[s].labels[i]) for s, i in picks]
    a = torch.as_tensor(np.stack([bench.splits[s].audio[i] for s, i in picks]))
    v = torch.as_tensor(np.stack([bench.splits[s].visual[i] for s, i in picks]))
    n = torch.as_tensor(np.array([bench.splits[s].lengths[i] for s, i in picks]))
    with torch.no_grad():
        x, g = model.spiking.encode(a, v, n)
        payloads = plan.encode_input(x)                                             # (T, N, n_in)
        assert np.array_equal(rec["payloads"], payloads.numpy().astype(np.int16).transpose(1, 0, 2))
        spikes = [torch.as_tensor(rec[f"spikes_{l}"].transpose(1, 0, 2).astype(np.float32)) for l in (1, 2)]
        br = model.spiking
        theta = [plan.theta_to_chip(br.initial_cue(g))]
        theta += [plan.theta_to_chip(br.threshold_cue(tuple(s[t - 1] for s in spikes), g))
                  for t in range(1, payloads.shape[0])]
        theta = torch.stack(theta)
        assert np.array_equal(rec["theta"], theta.numpy().astype(np.int32).transpose(1, 0, 2))
        open_loop, _ = ReferenceSimulator(plan).run(payloads, theta)
    for l, s in enumerate(open_loop, start=1):
        assert np.array_equal(rec[f"spikes_{l}"], s.numpy().transpose(1, 0, 2) > 0.5), f"spikes_{l}"


@pytest.mark.lava
def test_backends_give_identical_records_and_onnx_host_the_same_predictions(tmp_path, tiny_bundle, capsys):
    run, bundle = tiny_bundle
    ref, res = _simulate(tmp_path, bundle, "--backend", "reference")
    # the record format (a contract with `stft-neuro report`)
    assert set(ref) == RECORD_KEYS
    N, T = ref["labels"].shape[0], res["num_steps"]
    assert N == res["samples"] > 0 and T == 4
    assert ref["spikes_1"].shape == (N, T, 12) and ref["spikes_1"].dtype == bool
    assert ref["spikes_2"].shape == (N, T, 8) and ref["spikes_2"].dtype == bool
    assert ref["theta"].shape == (N, T, 2) and ref["theta"].dtype == np.int32
    assert ref["payloads"].shape == (N, T, 16) and ref["payloads"].dtype == np.int16
    assert ref["pred"].shape == ref["sample_index"].shape == ref["split_name"].shape == (N,)
    assert set(ref["split_name"]) == {"stage_2_test_seen", "stage_2_test_unseen"}
    # the regime: every layer spikes, thresholds move, payloads are not all zero
    assert ref["spikes_1"].any() and ref["spikes_2"].any()
    assert len(np.unique(ref["theta"])) > 2 and np.abs(ref["payloads"]).max() > 0
    assert set(res["metrics"]) == {"S", "U", "HM", "ZSL", "bias"}
    assert res["bundle"]["manifest_sha256"] and res["timings"]["samples_per_s"] > 0
    plan_run = DeploymentPlan.load(tmp_path / "sim_backend_reference" / "plan.safetensors")
    assert plan_run.to_dict() == DeploymentPlan.load(bundle / "plan.safetensors").to_dict()
    _oracle(run, ref)

    for backend in ("torch", "lava"):
        other, res_o = _simulate(tmp_path, bundle, "--backend", backend, "--batch", "32")
        for key in BACKEND_KEYS:
            assert np.array_equal(other[key], ref[key]), f"--backend {backend}: {key} differs"
        _oracle(run, other)
        assert res_o["metrics"] == res["metrics"]
    _, res_l = _simulate(tmp_path, bundle, "--backend", "lava", "--batch", "8", "--samples", "7")
    # 14 samples in batches of 8: one build, one in-place reset, the last batch padded
    assert res_l["timings"]["lava"]["builds"] == 1 and res_l["timings"]["lava"]["resets"] == 1

    # with the checkpoint, the ONNX host's rounding is compared with the torch host's. Measured
    # here: none rounds differently, so every record is the torch host's (the run is seeded)
    onnx, res_x = _simulate(tmp_path, bundle, "--backend", "reference", "--host", "onnx",
                            "--checkpoint", str(run))
    rounding = res_x["onnx_vs_torch_rounding"]
    assert rounding == {"payload_mismatches": 0, "payloads": ref["payloads"].size,
                        "theta_mismatches": 0, "thetas": ref["theta"].size}, rounding
    for key in RECORD_KEYS:
        assert np.array_equal(onnx[key], ref[key]), f"--host onnx: {key} differs"


def test_the_rounding_counter_counts_what_differs(tiny_bundle):
    """``onnx_vs_torch_rounding`` is counted by driving the torch host through the one closed loop
    with the ONNX loop's spikes replayed: a record whose payload and theta differ from what the
    torch host sends in exactly one place each (injected) is counted as one mismatch each."""
    import torch

    from stft_neuro.checkpoint import load_run
    from stft_neuro.closed_loop import SpikeRecord
    from stft_neuro.sim.reference import ReferenceSimulator
    from stft_neuro.simulate.run import count_rounding
    run, _ = tiny_bundle
    model, _, _ = load_run(run)
    plan = DeploymentPlan.load(run / "plan.safetensors")
    model.spiking.chip.input_scale.fill_(plan.input_scale)
    g = torch.Generator().manual_seed(3)
    a, v = torch.randn(5, 6, model.audio_dim, generator=g), torch.randn(5, 6, model.visual_dim, generator=g)
    n = torch.tensor([6, 3, 5, 1, 6])
    with torch.no_grad():
        x, cue = model.spiking.encode(a, v, n)
        rec = model.spiking.drive(x, cue, ReferenceSimulator(plan))
        clean = count_rounding(model, plan, a, v, n, rec)
        sent, theta = rec.sent.clone(), rec.theta.clone()
        sent[1, 2, 3] += 1
        theta[2, 4, 1] -= 1
        bad = count_rounding(model, plan, a, v, n, SpikeRecord(spikes=rec.spikes, theta=theta, sent=sent))
    total = {"payloads": sent.numel(), "thetas": theta.numel()}
    assert clean == {"payload_mismatches": 0, "theta_mismatches": 0, **total}
    assert bad == {"payload_mismatches": 1, "theta_mismatches": 1, **total}


def test_a_bundle_runs_without_the_training_checkpoint(tmp_path, tiny_bundle, capsys):
    """``--target onnx|all`` carries the class embeddings, b, widths and data config: with the
    training run moved away, ``--host onnx`` gives the records and metrics of the run with it;
    what still needs the run (``--host torch``) says so in one line."""
    run, bundle = tiny_bundle
    with_run, res_with = _simulate(tmp_path, bundle, "--backend", "reference", "--host", "onnx",
                                   "--checkpoint", str(run))
    moved = tmp_path / "run-elsewhere"
    shutil.copytree(run, moved)
    shutil.rmtree(run)
    try:
        alone, res_alone = _simulate(tmp_path, bundle, "--backend", "reference", "--host", "onnx")
        assert res_alone["checkpoint"] is None and "manifest.json" in res_alone["bias_source"]
        assert res_alone["metrics"] == res_with["metrics"]
        assert alone["spikes_1"].any() and alone["spikes_2"].any()
        for key in RECORD_KEYS:
            assert np.array_equal(alone[key], with_run[key]), f"{key} differs without the checkpoint"
        err = _one_line_error(capsys, ["simulate", "--bundle", str(bundle), "--backend", "reference",
                                       "--out", str(tmp_path / "x")])
        assert "--host onnx" in err and "--checkpoint" in err and not (tmp_path / "x").exists()
    finally:
        shutil.copytree(moved, run)


def _one_line_error(capsys, argv) -> str:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code not in (0, None), argv
    assert len(err.splitlines()) == 1 and "error" in err, err
    return err


def test_bad_input_is_one_line_and_leaves_no_output(tmp_path, tiny_bundle, capsys):
    run, bundle = tiny_bundle
    out = tmp_path / "out"
    base = ["simulate", "--backend", "reference", "--out", str(out)]
    assert "split" in _one_line_error(capsys, [*base, "--bundle", str(bundle), "--split", "stage_9_nope"])
    wrong = tmp_path / "wrong"
    shutil.copytree(bundle, wrong)
    (wrong / "host_cue.onnx").unlink()
    assert "missing" in _one_line_error(capsys, [*base, "--bundle", str(wrong)])
    shutil.rmtree(wrong)
    shutil.copytree(bundle, wrong)
    with open(wrong / "plan.safetensors", "r+b") as f:
        f.seek(-3, 2)
        f.write(b"\x00\x01\x02")
    assert "corrupted" in _one_line_error(capsys, [*base, "--bundle", str(wrong)])
    shutil.rmtree(wrong)
    shutil.copytree(bundle, wrong)
    manifest = json.loads((wrong / "manifest.json").read_text())
    manifest["version"] = 99
    (wrong / "manifest.json").write_text(json.dumps(manifest))
    assert "version" in _one_line_error(capsys, [*base, "--bundle", str(wrong)])
    assert "width" in _one_line_error(capsys, [*base, "--bundle", str(bundle), "--checkpoint", str(run),
                                               "--set", "data.audio_dim=30"])
    assert "--bundle" in _one_line_error(capsys, ["simulate", "--backend", "reference", "--host",
                                                      "onnx", "--checkpoint", str(run), "--out", str(out)])
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


@pytest.mark.slow
@pytest.mark.lava
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_lava_simulate_leaves_nothing_behind(tmp_path, tiny_bundle, sig):
    """Interrupt a Lava-backed simulate midway (batch 1: one Lava sequence per sample, ~20 s in
    all); it must exit 130 with one line, and leave no process, no /dev/shm segment, no output."""
    _, bundle = tiny_bundle
    out = tmp_path / "sim"
    shm0 = _shm()
    # batch 1 over 10 samples per class (510 Lava sequences): long enough to be interrupted midway
    # on an idle machine too
    proc = subprocess.Popen([sys.executable, "-m", "stft_neuro.cli", "simulate", "--bundle", str(bundle),
                             "--backend", "lava", "--batch", "1", "--set", "data.eval_per_class=10",
                             "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kids: set[int] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:   # midway: Lava running, output pending
        if list(tmp_path.glob(".sim.partial-*")):
            kids = _descendants(proc.pid)
            if len(kids) >= 3:
                break
        time.sleep(0.2)
    assert proc.poll() is None and len(kids) >= 3, "the run did not reach its Lava loop"
    time.sleep(0.5)
    kids |= _descendants(proc.pid)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "stft-neuro: interrupted", err
    for _ in range(50):   # the resource tracker exits when its parent's pipe closes
        alive = {p for p in kids if _alive(p)}
        if not alive:
            break
        time.sleep(0.1)
    assert alive == set(), f"processes left behind: {alive}"
    assert _shm() - shm0 == set(), "shared memory left in /dev/shm"
    assert not out.exists() and not list(tmp_path.glob(".sim.partial-*")), "partial output left"


def _descendants(pid: int) -> set[int]:
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
