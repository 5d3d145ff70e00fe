"""Any graph in fixed point (``converters/nir_fixed.py``): snnTorch ``Leaky``, ``Synaptic`` with
per-neuron alpha/beta/threshold, ``RLeaky`` (recurrence) and a Sinabs-style CNN, each written by its
own tool (snnTorch's ``export_to_nir``; the CNN with ``nir`` nodes as Sinabs writes them, Sinabs not
being installed): the layer-by-layer reference == the step-by-step definition == Lava fixed_pt,
every spike of every layer, with cases that assert they reached the regimes they claim."""
from __future__ import annotations

import multiprocessing

import nir
import numpy as np
import pytest
import snntorch as snn
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from snntorch.export_nir import export_to_nir

from stft_neuro.cli import main
from stft_neuro.converters import nir_fixed as F
from stft_neuro.converters.nir_in import read_nir
from stft_neuro.converters.nir_lava import LavaMappingError, lower
from stft_neuro.hw_targets.loihi2 import quantize as Q

from test_nir_graphs import sinabs_graph

CASES = settings(max_examples=12, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _pick(g, n, vals):
    return torch.tensor(vals, dtype=torch.float32)[torch.randint(len(vals), (n,), generator=g)]


def snn_net(kind: str, sizes=(64, 128, 96, 10), seed=0, betas=(0.7, 0.9), alphas=(0.5, 0.8),
            thresholds=(0.5, 1.0), gain=3.0) -> nir.NIRGraph:
    """An snnTorch network Linear -> neuron per layer with per-neuron parameters drawn from small
    sets (heterogeneous time constants and thresholds), exported by snnTorch."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mods = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        lin = torch.nn.Linear(a, b)
        if i:
            with torch.no_grad():
                lin.weight.mul_(gain)
        mods.append(lin)
        kw = dict(threshold=_pick(g, b, thresholds), reset_mechanism="zero", reset_delay=False,
                  init_hidden=True)
        if kind == "synaptic":
            mods.append(snn.Synaptic(alpha=_pick(g, b, alphas), beta=_pick(g, b, betas), **kw))
        elif kind == "rleaky":
            mods.append(snn.RLeaky(beta=_pick(g, b, betas), linear_features=b, **kw))
        else:
            mods.append(snn.Leaky(beta=_pick(g, b, betas), **kw))
    return export_to_nir(torch.nn.Sequential(*mods), torch.zeros(1, sizes[0]), ignore_dims=[0])


def fixed_case(tmp_path, graph, x, input_bits=8):
    """(fixed-point graph, report, Lava-step payloads (S, B, n_in), lowered plan)."""
    nir.write(tmp_path / "g.nir", graph)
    gr, dt, _ = read_nir(tmp_path / "g.nir")
    lp = lower(gr, dt)
    x = np.asarray(x, np.float64).reshape(x.shape[0], x.shape[1], -1)
    scale = Q.input_scale_for(float(np.percentile(np.abs(x), 99.9)), input_bits)
    fg, rep = F.quantize_graph(lp, scale, input_bits)
    lo, hi = 2 ** (input_bits - 1) * -1, 2 ** (input_bits - 1) - 1
    pay = torch.from_numpy(np.clip(np.round(x / scale), lo, hi))
    pay = torch.cat([pay, torch.zeros(x.shape[0], lp.max_depth, x.shape[2], dtype=pay.dtype)], 1)
    return fg, rep, pay.transpose(0, 1).contiguous(), lp


def assert_same(a, b, what):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: layer {k}: {int((a[k] != b[k]).sum())} spikes differ"


@pytest.mark.parametrize("kind", ["leaky", "synaptic", "rleaky"])
def test_reference_equals_definition_at_realistic_size(tmp_path, kind):
    """64 -> 128 -> 96 -> 10, B = 8, T = 60: every layer spikes, several profiles per layer."""
    x = torch.rand(8, 60, 64, generator=torch.Generator().manual_seed(1)).numpy() * 2
    fg, rep, pay, _ = fixed_case(tmp_path, snn_net(kind), x)
    ref, dfn = F.run_reference(fg, pay), F.run_definition(fg, pay)
    assert_same(ref, dfn, kind)
    for name, s in ref.items():
        assert s.sum() > 0, f"layer {name} never spikes: the test would prove nothing"
    assert all(q.profiles > 1 for q in rep), [q.profiles for q in rep]
    if kind == "synaptic":
        assert fg.bias_inputs, "Linear biases into CubaLIF currents go through constant sources"
    if kind == "rleaky":
        rec = [p for p in fg.projections if not p.src.startswith(("bias:", "input"))
               and fg.population(p.src).layer == fg.population(p.dst).layer]
        assert rec, "RLeaky must give recurrent projections"


REACHED: set[str] = set()


@CASES
@given(seed=st.integers(0, 10 ** 6), kind=st.sampled_from(["leaky", "synaptic", "rleaky"]),
       gain=st.sampled_from([1.0, 4.0, 40.0]), n_beta=st.integers(1, 2), bits=st.integers(2, 8))
def test_reference_equals_definition_hypothesis(tmp_path_factory, seed, kind, gain, n_beta, bits):
    tmp = tmp_path_factory.mktemp("h")
    betas = (0.6, 0.95)[:n_beta]  # x 2 alphas x 2 thresholds: at most 8 profiles
    g = snn_net(kind, sizes=(24, 40, 16), seed=seed, betas=betas, gain=gain)
    x = torch.randn(3, 30, 24, generator=torch.Generator().manual_seed(seed)).numpy() * gain
    fg, rep, pay, _ = fixed_case(tmp, g, x, bits)
    ref, dfn = F.run_reference(fg, pay), F.run_definition(fg, pay)
    assert_same(ref, dfn, kind)
    if all(s.sum() > 0 for s in ref.values()):
        REACHED.add("every layer spikes")
    if any(bool((s[5:30].mean(0) == 1).any()) for s in ref.values()):  # input steps 5..29
        REACHED.add("a neuron spikes at every step (saturated rate)")
    if sum(q.weights_saturated for q in rep) or sum(q.weights_zeroed for q in rep):
        REACHED.add("quantization saturated or zeroed weights")


def test_hypothesis_cases_reached_their_regimes():
    """Runs after the hypothesis test (file order): the cases must have reached every regime."""
    assert REACHED >= {"every layer spikes", "a neuron spikes at every step (saturated rate)",
                       "quantization saturated or zeroed weights"}, REACHED


def test_cnn_reference_equals_definition(tmp_path):
    x = np.random.default_rng(0).random((3, 12, 2, 8, 8)) * 2
    g = sinabs_graph(0)
    nir.write(tmp_path / "c.nir", g)
    gr, dt, _ = read_nir(tmp_path / "c.nir")
    lp = lower(gr, dt)
    fg, rep = F.quantize_graph(lp, Q.input_scale_for(2.0, 8), 8)
    pay = torch.from_numpy(np.clip(np.round(x.reshape(3, 12, -1) / Q.input_scale_for(2.0, 8)), -128, 127))
    pay = torch.cat([pay, torch.zeros(3, lp.max_depth, 128, dtype=pay.dtype)], 1).transpose(0, 1)
    ref, dfn = F.run_reference(fg, pay), F.run_definition(fg, pay)
    assert_same(ref, dfn, "cnn")
    assert all(s.sum() > 0 for s in ref.values())


def test_too_many_profiles_refused_in_one_line(tmp_path, capsys):
    """Random per-neuron betas on 40 neurons: 40 profiles > MAX_PROFILES_PER_LAYER."""
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 40), snn.Leaky(
        beta=torch.rand(40, generator=g) * 0.5 + 0.45, threshold=torch.ones(40),
        reset_mechanism="zero", reset_delay=False, init_hidden=True))
    nir.write(tmp_path / "r.nir", export_to_nir(net, torch.zeros(1, 8), ignore_dims=[0]))
    np.save(tmp_path / "x.npy", np.ones((5, 8)))
    out = tmp_path / "o" / "y.npy"
    out.parent.mkdir()
    rc = main(["run-nir", str(tmp_path / "r.nir"), "--input", str(tmp_path / "x.npy"), "--out",
               str(out), "--backend", "reference"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and not out.exists()
    assert "node '1'" in err[0] and "40 distinct (du, dv, vth) profiles" in err[0]
    assert f"max_profiles_per_layer allows {F.MAX_PROFILES_PER_LAYER}" in err[0]


@pytest.mark.lava
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["synaptic", "rleaky", "cnn"])
def test_lava_fixed_pt_equals_reference(tmp_path, kind):
    """Lava's bit-accurate LIF/Sparse models: every spike of every layer equals the reference."""
    if kind == "cnn":
        g, x = sinabs_graph(2), np.random.default_rng(2).random((2, 10, 2, 8, 8)) * 2
    else:
        g = snn_net(kind, sizes=(32, 48, 10), seed=3)
        x = torch.rand(3, 25, 32, generator=torch.Generator().manual_seed(3)).numpy() * 2
    fg, _, pay, _ = fixed_case(tmp_path, g, x)
    ref = F.run_reference(fg, pay)
    lava = F.LavaFixedRunner(fg).run(pay)
    assert_same(ref, lava, f"lava {kind}")
    assert all(s.sum() > 0 for s in ref.values())
    assert multiprocessing.active_children() == []
