"""The import layering (issue 7, item 6) is checked by import-linter, and the check can fail."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parent.parent / "tools" / "check_layers.py"


def _check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    proc = _check()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_a_hardware_target_importing_a_simulator_breaks_the_contract():
    proc = _check("--inject", "stft_neuro.hw_targets.loihi2.plan:stft_neuro.sim.reference")
    assert proc.returncode != 0
    assert "stft_neuro.hw_targets is not allowed to import stft_neuro.sim" in proc.stdout


def test_the_model_importing_lava_breaks_the_contract():
    proc = _check("--inject", "stft_neuro.model.spiking:lava.magma")
    assert proc.returncode != 0 and "lava" in proc.stdout
