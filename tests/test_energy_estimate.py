"""The differentiable chip-energy estimate (``hw_targets/loihi2/energy.py``) against the report.

The report counts a run from its records (numpy, replayed through the reference simulator:
``stft_neuro/report/counts.py``) and prices the counts (``report/energy.py``); the estimate computes
the same energy in torch from the tensors a training forward pass has. They are separate code
paths; these tests require equal values (to float rounding) on real runs, including a tiny trained
run deployed through ``stft-neuro simulate`` on the reference simulator, whose estimate is
taken from the torch deploy-mode forward pass (the training path), not from the records.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from stft_neuro.hw_targets.loihi2.energy import (CHIP_CONSTANTS, chip_energy, chip_energy_uj,
                                                 chip_weights, dest_cores_of, nonzero_surrogate)
from stft_neuro.hw_targets.loihi2.weights import lava_effective_weights
from stft_neuro.report import energy as E
from stft_neuro.report.counts import count_plan_run
from stft_neuro.sim.reference import ReferenceSimulator

sys.path.insert(0, str(Path(__file__).parent))
from test_reference_sim import plan_of, random_inputs, random_network  # noqa: E402


def _plan_weights(plan) -> list[torch.Tensor]:
    return [torch.as_tensor(lava_effective_weights(layer.weight)).double() for layer in plan.network.layers]


def _report_chip_pj(plan, spikes_tb, payloads_tb, theta_tb, consts=None) -> float:
    """The report's chip energy (pJ per sample) of a run given as (T, B, ...) tensors."""
    counts = count_plan_run(plan, [s.transpose(0, 1).numpy().astype(bool) for s in spikes_tb],
                            payloads_tb.transpose(0, 1).numpy(),
                            None if theta_tb is None else theta_tb.transpose(0, 1).numpy())
    return E.estimate(counts, None, consts)["chip"]


def test_constants_are_the_reports():
    for k, (value, unit, source) in CHIP_CONSTANTS.items():
        c = E.CONSTANTS[k]
        assert (c.value, c.unit, c.source) == (value, unit, source)
    assert E.CONSTANTS["loihi_synop_pj"].value == 23.6 and "Davies" in E.CONSTANTS["loihi_synop_pj"].source


def test_nonzero_surrogate_is_exact_forward_and_pushes_toward_zero():
    x = torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0, 40.0], requires_grad=True)
    y = nonzero_surrogate(x, 2.0)
    assert y.tolist() == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    y.sum().backward()
    g = x.grad
    assert g[2] == 0 and (g[:2] < 0).all() and (g[3:5] > 0).all()  # descent moves |x| toward 0
    assert 0 <= g[5] < g[4]                                          # far from zero: weaker push


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), dynamic=st.booleans(), silent=st.booleans())
def test_estimate_equals_report_on_random_plans(seed, dynamic, silent):
    """Random networks within Loihi's limits (some zero weights, every sign mode), payloads over
    the whole range (or all zero), with and without thresholds modulation."""
    net = random_network(seed)
    plan = plan_of(net, 6)
    x, th = random_inputs(net, seed, 6, 5, theta=dynamic)
    if silent:
        x = x * 0
    spikes, _ = ReferenceSimulator(plan).run(x, th)
    want = _report_chip_pj(plan, spikes, x, th)
    got = chip_energy(x, spikes, _plan_weights(plan), plan=plan, theta=th)
    assert float(got.total_uj) * 1e6 == pytest.approx(want, rel=1e-12, abs=1e-9)
    # the same with active updates given (as a caller that kept the states would), and an upper bound
    assert float(chip_energy_uj(x, spikes, _plan_weights(plan), plan=plan,
                                active_updates=got.active_updates)) * 1e6 == pytest.approx(want, rel=1e-12)
    assert float(chip_energy_uj(x, spikes, _plan_weights(plan), plan=plan, active_updates="all")) \
        * 1e6 >= want - 1e-6


def test_constant_overrides_match_the_reports(tmp_path):
    net = random_network(3)
    plan = plan_of(net, 5)
    x, th = random_inputs(net, 3, 5, 3)
    spikes, _ = ReferenceSimulator(plan).run(x, th)
    toml = tmp_path / "c.toml"
    toml.write_text("[constants]\nloihi_synop_pj = 7.5\nhops_ns_per_spike_message = 2\n")
    want = _report_chip_pj(plan, spikes, x, th, E.load_constants(toml))
    got = chip_energy_uj(x, spikes, _plan_weights(plan), plan=plan, theta=th,
                         constants={"loihi_synop_pj": 7.5, "hops_ns_per_spike_message": 2})
    assert float(got) * 1e6 == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="unknown constant"):
        chip_energy_uj(x, spikes, _plan_weights(plan), plan=plan, constants={"nope": 1.0})


def test_dest_cores_are_the_mappings():
    from stft_neuro.hw_targets.loihi2.mapping import map_network
    net = random_network(1)
    per: dict[str, int] = {}
    for a in map_network(net).allocations:
        per[a.layer] = per.get(a.layer, 0) + 1
    names = [layer.name for layer in net.layers]
    assert dest_cores_of(plan_of(net)) == tuple(per[n] for n in names[1:]) + (1,)
    assert dest_cores_of(net.sizes) == dest_cores_of(plan_of(net))  # shape only


# ---------------------------------------------------------------------------------- deployed run

@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A tiny trained run (tests/test_cli.py's TINY), simulated on the reference simulator."""
    from stft_neuro.cli import main
    from test_cli import TINY, _sets

    root = tmp_path_factory.mktemp("energy")
    run, sim = root / "run", root / "sim"
    assert main(["train", "--json", "--out", str(run), *_sets(*TINY)]) == 0
    assert main(["simulate", "--json", "--checkpoint", str(run), "--backend", "reference",
                 "--out", str(sim)]) == 0
    return run, sim


def test_estimate_on_the_training_forward_equals_the_report_of_the_deployed_run(deployed):
    """The report counts ``simulate``'s records (reference simulator, host closed loop); the
    estimate takes the torch deploy-mode forward pass of the same samples (the QAT path), with
    gradients. Equal, and the gradients reach the chip's weights and the host encoder."""
    from stft_neuro.checkpoint import load_run
    from stft_neuro.data import load_benchmark
    from stft_neuro.qat import calibrate
    from stft_neuro.report.cli import report_run_folder

    run, sim = deployed
    rep, _ = report_run_folder(sim)
    with np.load(sim / "records.npz") as z:
        idx, split = z["sample_index"], z["split_name"]
    model, cfg, _ = load_run(run)
    bench = load_benchmark(cfg.data)
    calibrate(model, bench.splits["stage_2_train"], torch.device("cpu"))  # as simulate does
    model.spiking.set_deploy(True)
    model.eval()
    a = torch.as_tensor(np.stack([bench.splits[s].audio[i] for s, i in zip(split, idx)]))
    v = torch.as_tensor(np.stack([bench.splits[s].visual[i] for s, i in zip(split, idx)]))
    n = torch.as_tensor(np.array([bench.splits[s].lengths[i] for s, i in zip(split, idx)]))
    br = model.spiking
    plan, qreport = br.deployment_plan()
    x, g = br.encode(a, v, n)
    rec = br.drive(x, g, br.chip)
    payloads = plan.encode_input(x)
    w = chip_weights(plan, qreport, br.chip.weights)
    est = chip_energy(payloads, rec.spikes, w, plan=plan, theta=rec.theta)
    assert rep["samples"] == len(idx) > 0
    assert float(est.total_uj.detach()) * 1e6 == pytest.approx(rep["energy"]["chip"], rel=1e-9)
    for l, name in enumerate(rep["layers"]):
        d = rep["layers"][name]
        assert float(est.synaptic_events[l]) / len(idx) == pytest.approx(d["synaptic_events"], rel=1e-12)
        assert float(est.active_updates[l]) / len(idx) == pytest.approx(d["active_updates"], rel=1e-12)
    est.total_uj.backward()
    for p in (br.chip.weights[0], br.chip.weights[1], br.encoder.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    json.dumps(est.as_dict())  # plain numbers


def test_energy_gradient_lowers_the_count(deployed):
    """A few gradient steps on the encoder against the estimate alone lower the exact count:
    the surrogate points the right way."""
    from stft_neuro.checkpoint import load_run
    from stft_neuro.data import load_benchmark
    from stft_neuro.qat import calibrate

    run, _ = deployed
    model, cfg, _ = load_run(run)
    bench = load_benchmark(cfg.data)
    calibrate(model, bench.splits["stage_2_train"], torch.device("cpu"))
    model.spiking.set_deploy(True)
    br = model.spiking
    sp = bench.splits["stage_2_train"]
    a, v, n = (torch.as_tensor(np.asarray(t[:16])) for t in (sp.audio, sp.visual, sp.lengths))
    opt = torch.optim.SGD(br.parameters(), lr=0.05)
    values = []
    for _ in range(6):
        plan, qreport = br.deployment_plan()
        x, g = br.encode(a, v, n)
        rec = br.drive(x, g, br.chip)
        e = chip_energy_uj(plan.encode_input(x), rec.spikes, chip_weights(plan, qreport, br.chip.weights),
                           plan=plan, theta=rec.theta)
        values.append(float(e.detach()))
        opt.zero_grad()
        e.backward()
        opt.step()
    assert values[-1] < values[0]


def test_float_mode_estimate_counts_and_has_gradients():
    """Float weights and float-mode spikes: the count is the definition's, computed by hand, and
    the gradients reach the float weights (surrogate of "nonzero") and the spikes."""
    g = torch.Generator().manual_seed(0)
    T, B, sizes = 3, 2, (6, 5, 4)
    x = torch.randint(-3, 4, (T, B, sizes[0]), generator=g).double().requires_grad_(True)
    w = [(torch.randn(sizes[l + 1], sizes[l], generator=g, dtype=torch.float64)
          * (torch.rand(sizes[l + 1], sizes[l], generator=g) < 0.6)).requires_grad_(True)
         for l in range(2)]
    s = [(torch.rand(T, B, n, generator=g) < 0.4).double().requires_grad_(True) for n in sizes[1:]]
    e = chip_energy(x, s, w, active_updates="all", dest_cores=(1, 1))
    ev0 = sum(int((x[t, b] != 0)[i]) * int((w[0][:, i] != 0).sum())
              for t in range(T) for b in range(B) for i in range(sizes[0]))
    ev1 = sum(int(s[0][t, b, i]) * int((w[1][:, i] != 0).sum())
              for t in range(T) for b in range(B) for i in range(sizes[1]))
    c = {k: v[0] for k, v in CHIP_CONSTANTS.items()}
    per_msg = c["loihi_spike_within_tile_pj"] + c["loihi_hop_ew_pj"]
    want = ((ev0 + ev1) * c["loihi_synop_pj"] + T * B * sum(sizes[1:]) * c["loihi_neuron_update_active_pj"]
            + float(sum(t.detach().sum() for t in s)) * per_msg) / B / 1e6
    assert e.synaptic_events.tolist() == [ev0, ev1]
    assert float(e.total_uj.detach()) == pytest.approx(want, rel=1e-12)
    e.total_uj.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (x, *w, s[0]))


def test_record_helper_is_chip_energy():
    from stft_neuro.hw_targets.loihi2.energy import chip_energy_of_record
    from stft_neuro.model.host import SpikeRecord
    net = random_network(7)
    plan = plan_of(net, 4)
    x, th = random_inputs(net, 7, 4, 3)
    spikes, _ = ReferenceSimulator(plan).run(x, th)
    a = chip_energy_of_record(SpikeRecord(spikes=spikes, theta=th), x, _plan_weights(plan), plan=plan)
    assert float(a.total_uj) == float(chip_energy_uj(x, spikes, _plan_weights(plan), plan=plan, theta=th))
