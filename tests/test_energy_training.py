"""Energy-aware training (``spiking.energy_budget_uj``): the trainer's estimate is the report's
count on the deployed run, and a budget held by the multiplier lowers the chip's energy."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_cli import TINY, _sets  # noqa: E402

from stft_neuro.cli import main  # noqa: E402
from stft_neuro.train import EnergyBudget  # noqa: E402

# more samples and epochs than TINY so that the budget has steps to act on
SETS = [*TINY, "data.train_per_class=8", "train.epochs=4", "train.threads=1", "data.root=none"]


def _history(run: Path) -> list[dict]:
    return json.loads((run / "meta.json").read_text())["progress"]["history"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A float run, then QAT from it without and with a tight budget (the exact deploy-mode
    estimate: the payload scale is fixed by calibration, so shrinking currents saves payloads)."""
    root = tmp_path_factory.mktemp("energy_train")
    base, free, held = root / "float", root / "qat_free", root / "qat_held"
    assert main(["train", "--json", "--out", str(base), *_sets(*SETS)]) == 0
    assert "loss_energy_uj" not in _history(base)[0]  # no budget: no energy term
    qat = ["train", "--json", "--qat", "--from", str(base)]
    assert main([*qat, "--out", str(free), *_sets("train.epochs=4", "train.threads=1", "train.lr=0.005")]) == 0
    assert main([*qat, "--out", str(held), *_sets("train.epochs=4", "train.threads=1", "train.lr=0.005",
                                                  "spiking.energy_budget_uj=0.001",
                                                  "spiking.energy_multiplier_lr=0.5")]) == 0
    return free, held


def test_multiplier_follows_the_budget() -> None:
    b = EnergyBudget(budget_uj=2.0, lr=0.5)
    b.update(4.0)   # twice the budget: excess 1
    assert b.multiplier == pytest.approx(0.5)
    b.update(1.0)   # half the budget: -0.5
    assert b.multiplier == pytest.approx(0.25)
    b.update(0.0)
    assert b.multiplier == 0.0  # never negative
    assert float(EnergyBudget(2.0, 0.5, 3.0).term(torch.tensor(4.0))) == pytest.approx(3.0)


def test_a_budget_lowers_the_chip_energy_and_is_recorded(runs) -> None:
    free, held = runs
    h = _history(held)
    assert all(r["loss_energy_multiplier"] > 0 for r in h)  # over budget throughout: it rises
    assert h[-1]["loss_energy_multiplier"] > h[0]["loss_energy_multiplier"]
    assert h[-1]["loss_energy_uj"] < h[0]["loss_energy_uj"]
    # the same QAT without the budget: the held run's chip spends less on the test split
    from stft_neuro.checkpoint import load_run
    from stft_neuro.data import load_benchmark
    energies = []
    for run in (free, held):
        model, cfg, _ = load_run(run)
        sp = load_benchmark(cfg.data).splits["stage_2_test_unseen"]
        model.eval()
        with torch.no_grad():
            out = model(*(torch.as_tensor(t) for t in (sp.audio, sp.visual, sp.lengths)))
            energies.append(float(model.spiking.chip_energy(out["record"]).total_uj))
    assert energies[1] < 0.9 * energies[0], energies


def test_trainer_estimate_in_deploy_mode_is_the_reports_count(runs, tmp_path) -> None:
    """``SpikingBranch.chip_energy`` in deploy mode (the QAT path) on the samples ``simulate`` ran
    on the reference simulator equals the report's chip energy of those records."""
    from stft_neuro.checkpoint import load_run
    from stft_neuro.data import load_benchmark
    from stft_neuro.report.cli import report_run_folder

    run = runs[1]  # a QAT run: simulate runs its own plan
    sim = tmp_path / "sim"
    assert main(["simulate", "--json", "--checkpoint", str(run), "--backend", "reference", "--out", str(sim)]) == 0
    rep, _ = report_run_folder(sim)
    with np.load(sim / "records.npz") as z:
        idx, split = z["sample_index"], z["split_name"]
    model, cfg, _ = load_run(run)  # deploy mode, calibrated: what simulate ran
    bench = load_benchmark(cfg.data)
    model.eval()
    a, v, n = (torch.as_tensor(np.stack([getattr(bench.splits[s], k)[i] for s, i in zip(split, idx)]))
               for k in ("audio", "visual", "lengths"))
    out = model(a, v, n)
    est = model.spiking.chip_energy(out["record"])
    assert rep["samples"] == len(idx) > 0
    assert float(est.total_uj) * 1e6 == pytest.approx(rep["energy"]["chip"], rel=1e-9)


def test_float_training_with_a_budget_records_its_estimate(tmp_path) -> None:
    """Float training carries the term too (the float-mode estimate: an upper bound on neuron
    updates, batch-calibrated payloads); the run resumes with its multiplier."""
    run = tmp_path / "float_held"
    sets = _sets(*SETS, "train.epochs=2", "spiking.energy_budget_uj=0.001")
    assert main(["train", "--json", "--out", str(run), *sets]) == 0
    h = _history(run)
    assert all(r["loss_energy_uj"] > 0.001 and r["loss_energy_multiplier"] > 0 for r in h)
    progress = json.loads((run / "meta.json").read_text())["progress"]
    assert progress["energy_multiplier"] > 0  # kept for a resume


@pytest.mark.parametrize("k", [0, 5, 40])
def test_float_mode_estimate_leaves_out_the_payloads_of_the_dead_zone(k) -> None:
    """The float-mode estimate counts a payload only when the plan would send it: ``|round(x /
    scale)| > k`` with the batch-calibrated scale; every float weight is a synapse, so layer 1's
    events are those payloads x its width. The dead zone must bite (some payloads left out)."""
    from stft_neuro.config import SpikingConfig
    from stft_neuro.hw_targets.loihi2 import quantize
    from stft_neuro.model.host import SpikingBranch
    torch.manual_seed(0)
    cfg = SpikingConfig(num_steps=6, hidden=(48, 32), payload_dead_zone=k)
    br = SpikingBranch(40, 40, cfg)
    a, v = torch.randn(16, 5, 40), torch.randn(16, 5, 40)
    n = torch.randint(1, 6, (16,))
    x, g = br.encode(a, v, n)
    rec = br.drive(x, g, br.chip)
    e = br.chip_energy(rec)
    ref = float(torch.quantile(x.detach().abs().flatten().float(), 0.999))
    q = torch.round(x.detach() / quantize.input_scale_for(ref, cfg.input_bits))
    sent = int((q.abs() > k).sum())
    assert float(e.synaptic_events[0]) == sent * 48
    if k:
        assert sent < int((q != 0).sum()), "the case does not reach the dead zone"
    e.total_uj.backward()   # the estimate trains the encoder through the payloads it counts
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in br.parameters())


def test_payloads_just_outside_the_dead_zone_feel_the_energy_gradient() -> None:
    """With the plan's dead zone k the estimate counts exactly the sent payloads, and a payload
    just outside the zone gets the gradient of a payload just above zero (the surrogate measures
    the distance to the zone's edge): at k = 112 a payload of 113 would otherwise get none."""
    from stft_neuro.hw_targets.loihi2.energy import chip_energy
    k = 112
    q = torch.tensor([[[0.0, 113.0, -113.0, 127.0]]], dtype=torch.float64, requires_grad=True)  # (T, B, n_in)
    w = [torch.ones(3, 4, dtype=torch.float64)]
    spikes = [torch.zeros(1, 1, 3, dtype=torch.float64)]
    e = chip_energy(q, spikes, w, payload_dead_zone=k)
    assert float(e.synaptic_events[0]) == 3 * 3          # 3 sent payloads x fan-out 3
    e.total_uj.backward()
    g = q.grad[0, 0]
    assert float(g[1]) > 0 and float(g[2]) < 0 and abs(float(g[1])) > abs(float(g[3])) > 0
    q0 = q.detach().clone().requires_grad_(True)
    chip_energy(q0, spikes, w).total_uj.backward()       # without the zone: no gradient out there
    assert abs(float(q0.grad[0, 0, 1])) < 1e-6 * abs(float(g[1]))
