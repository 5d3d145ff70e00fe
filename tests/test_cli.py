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


def test_doctor_json_without_lava_run(capsys):
    code, out, _ = run_cli(capsys, "doctor", "--json", "--no-lava-run")
    report = json.loads(out)
    assert code == 0 and report["healthy"] is True
    assert report["versions"]["torch"].startswith("2.13.0")
    assert report["lava_import"]["ok"] is True
