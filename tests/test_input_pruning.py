"""Pruning layer 1 (``spiking.input_weight_density``, issue #17): the chip's synaptic events are
nonzero payloads x nonzero fan-out, and layer 1 takes the host's dense graded payloads, so its
fan-out is the energy lever the dead zone leaves. QAT keeps the largest ``|w|`` and holds the rest
at exactly 0; the zeros are ordinary plan weights, so every backend runs them (Lava ``fixed_pt`` ==
reference at the real size, pruned and dead-zoned), and the report counts the fan-out left, which
the training-time estimate equals.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from test_cli import TINY, _sets  # noqa: E402
from test_lava_equivalence import compare, observe, payloads  # noqa: E402

from stft_neuro import config as config_mod  # noqa: E402
from stft_neuro.checkpoint import load_run  # noqa: E402
from stft_neuro.cli import main  # noqa: E402
from stft_neuro.hw_targets.loihi2 import quantize as Q  # noqa: E402
from stft_neuro.hw_targets.loihi2.plan import apply_dead_zone  # noqa: E402
from stft_neuro.model.spiking import ChipNetwork  # noqa: E402

FULL = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LAVA = settings(max_examples=2, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def _real_chip(seed: int) -> ChipNetwork:
    """The chip ``data.sizes=real`` selects (512 -> 128), with heavy-tailed trained-like weights."""
    spk = config_mod.load(overrides=["data.sizes=real"]).spiking
    torch.manual_seed(seed)
    chip = ChipNetwork((spk.input_dim, *spk.hidden), spk.du, spk.dv, spk.threshold, spk.surrogate_slope,
                       spk.input_bits, spk.num_steps)
    with torch.no_grad():
        w = torch.distributions.StudentT(3.0).sample(chip.weights[0].shape) * 2.5 / spk.input_dim ** 0.5
        chip.weights[0].copy_(w)
    return chip


@FULL
@given(seed=st.integers(0, 10 ** 6), density=st.sampled_from([0.02, 0.1, 0.37, 1.0]))
def test_pruning_keeps_the_largest_weights_and_their_gradient_only(seed, density):
    chip = _real_chip(seed)
    w0 = chip.weights[0].detach().clone()
    pruned = chip.prune_input_weights(density)
    w = chip.weights[0].detach().clone()
    keep = round(density * w.numel())
    assert pruned == w.numel() - keep and int((w != 0).sum()) == keep
    assert torch.equal(w[w != 0], w0[w != 0])  # the kept weights are untouched
    if keep < w.numel():  # every kept weight is at least as large as every pruned one
        assert float(w0[w != 0].abs().min()) >= float(w0[w == 0].abs().max())
    chip.weights[0].grad = None
    (chip.weights[0] * torch.randn_like(w0)).sum().backward()
    g = chip.weights[0].grad
    assert bool((g[w == 0] == 0).all()) and int((g[w != 0] != 0).sum()) == keep
    # Adam from here (as QAT builds it), with L2 weight decay: the pruned weights stay exactly 0
    opt = torch.optim.Adam(chip.parameters(), lr=0.1, weight_decay=1e-3)
    for _ in range(3):
        opt.zero_grad()
        (chip.weights[0] ** 3).sum().backward()
        opt.step()
    after = chip.weights[0].detach()
    assert bool((after[w == 0] == 0).all()) and not torch.equal(after, w)  # trained, and the zeros stayed


@pytest.mark.parametrize("density", [0.0, -0.5, 1.5])
def test_a_density_outside_0_1_is_one_line(density, capsys):
    code = main(["train", "--out", "/nonexistent/never", *_sets(*TINY, f"spiking.input_weight_density={density}")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "spiking.input_weight_density must lie in (0, 1]" in err
    assert "\n" not in err and "Traceback" not in err


@pytest.mark.lava
@LAVA
@given(seed=st.integers(0, 10 ** 6))
def test_lava_equals_reference_for_the_pruned_dead_zoned_saliency_chip_at_full_size(seed):
    """The real-size saliency chip pruned to 10 % of its weights, with a payload dead zone of 24,
    driven as its host drives it (10 bins of graded payloads at both ends of their range, then the
    zero drain step): layer 1 spikes, most weights and many payloads are zero, Lava == reference."""
    chip = _real_chip(seed)
    chip.prune_input_weights(0.1)
    spk = config_mod.load(overrides=["data.sizes=real"]).spiking
    floats = [Q.FloatLayer(name="lif1", weight=chip.weights[0].detach().double().numpy(),
                           bias=np.random.default_rng(seed).normal(0, 0.02, spk.hidden[0]),
                           du=spk.du, dv=spk.dv, threshold=spk.threshold)]
    T = spk.num_steps
    plan, _ = Q.plan_from_float(floats, input_scale=1.0 / 60, input_bits=spk.input_bits, num_steps=T,
                                payload_dead_zone=24)
    assert float((plan.network.layers[0].weight == 0).mean()) >= 0.899  # pruned zeros survive quantization
    raw = payloads(seed, plan, T, 2, extremes=True)
    raw[T - 1] = 0.0  # the drain step
    x = apply_dead_zone(raw, plan.payload_dead_zone)
    assert 0 < int(((raw != 0) & (x == 0)).sum()) < int((raw != 0).sum())  # the dead zone dropped some
    found = observe(plan, x, None)
    assert {"spikes_l0", "payload_min", "payload_max"} <= found, found
    compare(plan, x)


@pytest.fixture(scope="module")
def qat_runs(tmp_path_factory):
    """A float run, then QAT from it as is and with layer 1 pruned to a quarter (and a dead zone)."""
    root = tmp_path_factory.mktemp("pruning")
    base, full, pruned = root / "float", root / "qat_full", root / "qat_pruned"
    sets = [*TINY, "data.train_per_class=6", "train.threads=1", "data.root=none"]
    assert main(["train", "--json", "--out", str(base), *_sets(*sets)]) == 0
    qat = ["train", "--json", "--qat", "--from", str(base)]
    assert main([*qat, "--out", str(full), *_sets("train.epochs=2", "train.threads=1")]) == 0
    assert main([*qat, "--out", str(pruned), *_sets("train.epochs=2", "train.threads=1",
                                                    "spiking.input_weight_density=0.25",
                                                    "spiking.payload_dead_zone=2")]) == 0
    return base, full, pruned


def test_qat_prunes_layer_1_and_the_zeros_stay(qat_runs):
    base, full, pruned = qat_runs
    w_float = load_run(base)[0].spiking.chip.weights[0].detach()
    model, cfg, meta = load_run(pruned)
    assert cfg.spiking.input_weight_density == 0.25
    w = model.spiking.chip.weights[0].detach()
    keep = round(0.25 * w.numel())
    assert meta["metrics"]["pruned_input_weights"] == w.numel() - keep
    assert 0 < int((w != 0).sum()) <= keep
    # the pruned positions are the float run's smallest weights, and they are still exactly 0
    smallest = w_float.abs().flatten().argsort(descending=True, stable=True)[keep:]
    assert bool((w.flatten()[smallest] == 0).all())
    assert meta["metrics"]["float"] == json.loads((full / "metrics.json").read_text())["float"]  # float: unpruned
    plan, _ = model.spiking.deployment_plan()
    assert int((plan.network.layers[0].weight != 0).sum()) <= keep
    # the unpruned QAT run has far more synapses in layer 1
    full_plan, _ = load_run(full)[0].spiking.deployment_plan()
    assert int((full_plan.network.layers[0].weight != 0).sum()) > 2 * keep


def test_report_counts_the_pruned_fan_out_and_the_training_estimate_equals_it(qat_runs, tmp_path):
    """The report of a pruned run's reference simulation counts layer 1's synaptic events from the
    fan-out left, and ``SpikingBranch.chip_energy`` (the QAT estimate) equals its chip energy."""
    from stft_neuro.data import load_benchmark
    from stft_neuro.hw_targets.loihi2.weights import lava_effective_weights
    from stft_neuro.report.cli import report_run_folder

    _, full, pruned = qat_runs
    reports = {}
    for name, run in (("full", full), ("pruned", pruned)):
        sim = tmp_path / name
        assert main(["simulate", "--json", "--checkpoint", str(run), "--backend", "reference", "--out", str(sim)]) == 0
        reports[name], _ = report_run_folder(sim)
    rep = reports["pruned"]
    model, cfg, _ = load_run(pruned)
    plan, _ = model.spiking.deployment_plan()
    fan = (lava_effective_weights(plan.network.layers[0].weight) != 0).sum(0)
    with np.load(tmp_path / "pruned" / "records.npz") as z:
        idx, split = z["sample_index"], z["split_name"]
        pay = z["payloads"]
    first = next(iter(rep["layers"]))
    events = float(((pay != 0) * fan).sum()) / len(idx)
    assert rep["layers"][first]["synaptic_events"] == pytest.approx(events, rel=1e-12)
    assert events < reports["full"]["layers"][first]["synaptic_events"]
    bench = load_benchmark(cfg.data)
    model.eval()
    a, v, n = (torch.as_tensor(np.stack([getattr(bench.splits[s], k)[i] for s, i in zip(split, idx)]))
               for k in ("audio", "visual", "lengths"))
    with torch.no_grad():
        est = model.spiking.chip_energy(model(a, v, n)["record"])
    assert float(est.total_uj) * 1e6 == pytest.approx(rep["energy"]["chip"], rel=1e-9)


@pytest.mark.lava
def test_lava_hybrid_records_of_a_pruned_run_equal_the_reference_hybrids(qat_runs, tmp_path):
    """The closed loop on Lava ``fixed_pt`` (a persistent session) of the pruned, dead-zoned QAT run:
    every record equal to the reference simulator's (spikes of every layer, payloads, predictions)."""
    pruned = qat_runs[2]
    recs = {}
    for backend in ("reference", "lava"):
        sim = tmp_path / backend
        assert main(["simulate", "--json", "--checkpoint", str(pruned), "--backend", backend,
                     "--out", str(sim)]) == 0
        with np.load(sim / "records.npz") as z:
            recs[backend] = {k: z[k] for k in z.files}
    ref, lava = recs["reference"], recs["lava"]
    assert sorted(ref) == sorted(lava)
    assert all(int(ref[k].sum()) > 0 for k in ref if k.startswith("spikes_"))  # every layer spiked
    assert int((ref["payloads"] == 0).sum()) > 0  # the dead zone and the zero drain step sent nothing
    for k in ref:
        assert np.array_equal(ref[k], lava[k]), f"{k} differs"


@FULL
@given(seed=st.integers(0, 10 ** 6), density=st.sampled_from([0.1, 0.02]))
def test_deploy_mode_equals_reference_for_the_pruned_real_size_saliency_branch(seed, density):
    """The ladder's torch rung: the real recipe's branch (saliency chip 512 -> 128, T = 11, its
    dead zone of 32), layer 1 pruned, in deploy mode (what QAT trains) == the reference simulator
    on the same plan, every spike; the case drops payloads and layer 1 spikes."""
    from stft_neuro.model.host import SpikingBranch
    from stft_neuro.sim.reference import ReferenceSimulator

    spk = config_mod.load(overrides=["data.sizes=real"]).spiking
    torch.manual_seed(seed)
    branch = SpikingBranch(24, 20, spk).eval()
    g = torch.Generator().manual_seed(seed + 7)
    audio, visual = torch.randn(4, 8, 24, generator=g) * 2, torch.randn(4, 8, 20, generator=g) * 2
    lengths = torch.randint(1, 9, (4,), generator=g)
    with torch.no_grad():
        branch.chip.weights[0].mul_(6.0)  # trained-like drive: layer 1 spikes on the bins it gets
        branch.calibrate_input(audio, visual, torch.full((4,), 8))
        branch.chip.prune_input_weights(density)
        branch.set_deploy(True)
        plan, _ = branch.deployment_plan()
        w_int = plan.network.layers[0].weight
        assert plan.payload_dead_zone == 32 and int((w_int != 0).sum()) <= round(density * w_int.size)
        x, cue = branch.encode(audio, visual, lengths)
        q = plan.encode_input(x)
        want = branch.drive(x, cue, ReferenceSimulator(plan))
        got = branch.drive(x, cue, branch.chip)
    raw = torch.round(x / float(branch.chip.input_scale)).clamp(*plan.payload_range)
    assert int(((raw != 0) & (q == 0)).sum()) > 0  # the dead zone dropped payloads
    assert int(want.spikes[0].sum()) > 0, "layer 1 never spiked: the case does not reach its regime"
    assert torch.equal(got.spikes[0].double(), want.spikes[0].double())
