"""The command line as a user meets it: help, version, one-line errors with non-zero exits."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from stft_neuro import __version__
from stft_neuro.cli import main


def run_cli(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse exits for --help, --version and usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, fragment, status=1):
    assert code == status
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("stft-neuro: error:") and fragment in lines[0], lines[0]
    assert "Traceback" not in err


def test_console_script_help_and_version():
    exe = [sys.executable, "-m", "stft_neuro.cli"]
    out = subprocess.run([*exe, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("doctor", "data", "train", "eval", "demo"):
        assert command in out
    out = subprocess.run([*exe, "--version"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"stft-neuro {__version__}"


def test_unknown_option_is_one_line(capsys):
    code, _, err = run_cli(capsys, "train", "--frobnicate")
    assert_one_line_error(code, err, "unrecognized arguments: --frobnicate", status=2)


def test_unknown_config_key_is_one_line(capsys):
    code, _, err = run_cli(capsys, "data", "--set", "data.nosuch=1")
    assert_one_line_error(code, err, "unknown key data.nosuch")


@pytest.mark.parametrize("make", ["missing", "file", "empty_dir", "bad_json", "bad_weights"])
def test_eval_rejects_what_is_not_a_checkpoint(capsys, tmp_path, make):
    path = tmp_path / "run"
    if make == "file":
        path.write_text("hello")
    elif make == "empty_dir":
        path.mkdir()
    elif make in ("bad_json", "bad_weights"):
        path.mkdir()
        (path / "config.json").write_text("{}" if make == "bad_weights" else "{not json")
        (path / "meta.json").write_text(json.dumps({"format": "stft-neuro-run/1", "audio_dim": 4,
                                                    "visual_dim": 4}))
        (path / "model.safetensors").write_bytes(b"\x00garbage")
    code, _, err = run_cli(capsys, "eval", "--checkpoint", str(path))
    assert_one_line_error(code, err, str(path))


@pytest.mark.lava
def test_doctor_json_without_lava_run(capsys):
    code, out, _ = run_cli(capsys, "doctor", "--json", "--no-lava-run")
    report = json.loads(out)
    assert code == 0 and report["healthy"] is True
    assert report["versions"]["torch"].startswith("2.13.0")
    assert report["lava_import"]["ok"] is True


TINY = ["data.train_per_class=3", "data.eval_per_class=2", "data.max_seconds=4", "data.audio_dim=24",
        "data.visual_dim=20", "spiking.input_dim=16", "spiking.hidden=12,8", "spiking.num_steps=4",
        "transformer.dim=16", "transformer.heads=2", "transformer.num_latents=2", "fusion.width=16",
        "fusion.ranks=3,5", "fusion.embed_dim=8", "train.epochs=2", "train.batch_size=32",
        # the recipe's sparse deployment off (issue #17): at these widths (16 inputs) a dead zone of
        # 64 silences the chip, and the tests built on TINY need it driven
        "spiking.payload_dead_zone=0", "spiking.input_weight_density=1"]
#: TINY with the recipe's own deployment knobs (the demo's)
TINY_RECIPE = [o for o in TINY if not o.startswith(("spiking.payload_dead_zone", "spiking.input_weight_density"))]


def _sets(*overrides):
    return [arg for o in overrides for arg in ("--set", o)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", "--json", "--out", str(run), *_sets(*TINY)]) == 0
    return run


def test_train_writes_a_complete_run(tiny_run):
    for name in ("config.json", "meta.json", "model.safetensors", "metrics.json"):
        assert (tiny_run / name).is_file(), name
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert set(metrics["stage2_test"]) == {"S", "U", "HM", "ZSL", "bias"}
    assert json.loads((tiny_run / "config.json").read_text())["spiking"]["hidden"] == [12, 8]


def test_eval_reproduces_training_metrics(capsys, tiny_run):
    code, out, _ = run_cli(capsys, "eval", "--checkpoint", str(tiny_run), "--json")
    assert code == 0
    trained = json.loads((tiny_run / "metrics.json").read_text())["stage2_test"]
    assert json.loads(out)["stage2_test"] == pytest.approx(trained)


def test_eval_rejects_features_of_another_width(capsys, tiny_run):
    code, _, err = run_cli(capsys, "eval", "--checkpoint", str(tiny_run), "--set", "data.audio_dim=32")
    assert_one_line_error(code, err, "audio features of width 24")


def test_resume_after_interruption_continues_exactly(tmp_path):
    from stft_neuro import config
    from stft_neuro.data import load_benchmark
    from stft_neuro.train import Trainer

    cfg = config.load(overrides=[*TINY, "train.epochs=3"])
    bench = load_benchmark(cfg.data)

    def interrupt_after_first_epoch(row):
        if row["stage"] == 1 and row["epoch"] == 1:
            raise KeyboardInterrupt

    run = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, bench, run, on_epoch=interrupt_after_first_epoch).run()
    assert main(["train", "--json", "--resume", str(run)]) == 0
    straight = tmp_path / "straight"
    Trainer(cfg, bench, straight).run()
    a = json.loads((run / "meta.json").read_text())["progress"]["history"]
    b = json.loads((straight / "meta.json").read_text())["progress"]["history"]
    assert [r["loss_total"] for r in a] == [r["loss_total"] for r in b]
    assert json.loads((run / "metrics.json").read_text()) == json.loads((straight / "metrics.json").read_text())


def test_qat_then_reference_backend_gives_identical_metrics(capsys, tmp_path, tiny_run):
    qat = tmp_path / "qat"
    code, out, _ = run_cli(capsys, "train", "--qat", "--from", str(tiny_run), "--out", str(qat), "--json",
                           "--set", "train.epochs=1")
    assert code == 0
    result = json.loads(out)
    assert {"float", "ptq", "qat", "quantization"} <= set(result)
    outs = []
    for backend in ("torch", "reference"):
        code, out, _ = run_cli(capsys, "eval", "--checkpoint", str(qat), "--backend", backend, "--json")
        assert code == 0
        outs.append(json.loads(out)["stage2_test"])
    assert outs[0] == outs[1] == pytest.approx(result["qat"])
    code, out, _ = run_cli(capsys, "resources", "--checkpoint", str(qat), "--json")
    report = json.loads(out)
    assert code == 0 and report["design_rules"]["passed"] and report["totals"]["cores_used"] >= 2


def test_qat_needs_from(capsys):
    code, _, err = run_cli(capsys, "train", "--qat")
    assert_one_line_error(code, err, "--qat and --from RUN go together")


@pytest.mark.parametrize("overrides, fragment", [
    (["data.root=/nonexistent/UCF"], "/nonexistent/UCF does not exist"),
    (["data.source=tcaf", "data.root={root}"], "allow it with --set data.allow_pickle=true"),
    (["data.source=avca", "data.root={root}"], "no feature folder"),
])
def test_bad_data_is_one_line(capsys, tmp_path, overrides, fragment):
    root = tmp_path / "UCF"
    root.mkdir()
    code, _, err = run_cli(capsys, "data", *_sets(*(o.format(root=root) for o in overrides)))
    assert_one_line_error(code, err, fragment)


@pytest.mark.lava  # the demo starts with doctor, which runs Lava
def test_demo_runs_to_its_end_on_a_tiny_config(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "demo", "--out", str(tmp_path / "demo"), *_sets(*TINY_RECIPE))
    assert code == 0
    for heading in ("stft-neuro doctor", "benchmark", "training STFT", "stage 2 test",
                    "spiking branch on Loihi 2", "design rules: pass", "the deployment bundle",
                    "spiking.nir"):
        assert heading in out, heading
    from stft_neuro.export.bundle import load_bundle
    plan = load_bundle(tmp_path / "demo" / "bundle").plan
    assert plan.num_layers == 2
    # issue #17: the recipe deploys sparse, and the demo ends with the chip beside the ANN on the host
    assert plan.payload_dead_zone == 64
    import json
    e = json.loads((tmp_path / "demo" / "report.json").read_text())["energy"]
    ratio = e["ann_all_on_host"]["chip_over_spiking_branch_as_ann"]
    assert f"({ratio:.2f}x)" in out and "energy per sample (estimates): chip" in out
    assert (tmp_path / "demo" / "loihi_vs_ann.png").is_file()
