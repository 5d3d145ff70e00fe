"""`run-nir --report` on graphs written by snnTorch 1.0 against snnTorch's own run and NeuroBench 2.3.

Per layer, the spikes and synaptic events of the report equal those of snnTorch's own simulation of
the same network (counted here from snnTorch's spikes and the Linear weights), and the NeuroBench
keys equal NeuroBench's own ``Benchmark(...).run()`` on ``SNNTorchModel(net)``, except where
NeuroBench miscounts: snnTorch's ``RLeaky`` with ``reset_mechanism="zero"`` calls its recurrent
``Linear`` twice per step (``_base_zero`` evaluates ``_base_state_function`` twice), and NeuroBench
counts every call, so its ``Effective_ACs`` and ``Dense`` include the recurrent layer twice. The
report counts it once; the test checks that the difference is exactly one extra copy.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import nir
import numpy as np
import pytest
import torch

snn = pytest.importorskip("snntorch")
import neurobench  # noqa: E402,F401  (installed by `make` with --no-deps; see Makefile)
from neurobench.benchmarks import Benchmark  # noqa: E402
from neurobench.metrics.static import ConnectionSparsity, Footprint, ParameterCount  # noqa: E402
from neurobench.metrics.workload import (ActivationSparsity, MembraneUpdates,  # noqa: E402
                                         SynapticOperations)
from neurobench.models import SNNTorchModel  # noqa: E402

from stft_neuro.cli import main  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_nir_snntorch import snntorch_case  # noqa: E402


class Pair(torch.nn.Module):
    """NeuroBench's SNNTorchModel unpacks ``spk, _ = net(x_t)``: return the spikes twice."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        y = self.net(x)
        return y, y


def neurobench_figures(net, x):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(len(x))),
                                       batch_size=len(x))
    bench = Benchmark(SNNTorchModel(Pair(net)), data, [], [],
                      [[Footprint, ParameterCount, ConnectionSparsity],
                       [ActivationSparsity, SynapticOperations, MembraneUpdates]])
    return bench.run(quiet=True)


def run_report(tmp_path, g, x, extra=()):
    nir.write(tmp_path / "net.nir", g)
    np.save(tmp_path / "x.npy", x.numpy())
    rc = main(["run-nir", str(tmp_path / "net.nir"), "--input", str(tmp_path / "x.npy"),
               "--out", str(tmp_path / "y.npy"), "--report", str(tmp_path / "rep"), *extra])
    assert rc == 0
    return json.loads((tmp_path / "rep" / "report.json").read_text())


@pytest.mark.parametrize("kind", ["leaky", "synaptic", "mixed", "rleaky"])
def test_run_nir_report_matches_snntorch_and_neurobench(kind, tmp_path):
    net, x, ref, g = snntorch_case(kind, seed=2, B=4, T=30)
    rep = run_report(tmp_path, g, x)
    B = x.shape[0]
    neurons = [k for k, d in rep["layers"].items() if d.get("spiking")]
    weights = [k for k, d in rep["layers"].items() if "synaptic_events" in d]
    assert len(neurons) == 3
    # spikes per layer and step == snnTorch's own run
    for name, want in zip(neurons, ref):
        assert want.sum() > 0, "a silent layer would prove nothing"
        assert rep["layers"][name]["spikes"] == pytest.approx(float(want.sum()) / B)
        assert rep["layers"][name]["spikes_per_step"] == pytest.approx(
            (want.sum(dim=(0, 2)) / B).tolist())
    # synaptic events of each feed-forward Linear == snnTorch's inputs x nonzero fan-out
    inputs = [x] + ref[:2]
    for fc, inp in zip(net.fcs, inputs):
        fan = (fc.weight != 0).sum(0).to(torch.float64)
        want = float(((inp != 0).to(torch.float64) @ fan).sum()) / B
        match = [k for k in weights if rep["layers"][k]["fan_in"] == fc.in_features
                 and rep["layers"][k]["synapses"] == int((fc.weight != 0).sum())
                 and rep["layers"][k]["synaptic_events"] == pytest.approx(want)]
        assert match, f"no layer of the report has {want} events for {fc}"
    nb = neurobench_figures(net, x)
    assert rep["ParameterCount"] == nb["ParameterCount"]
    assert round(rep["ConnectionSparsity"], 4) == nb["ConnectionSparsity"]
    assert rep["ActivationSparsity"] == pytest.approx(nb["ActivationSparsity"], abs=1e-12)
    assert rep["MembraneUpdates"] == pytest.approx(nb["MembraneUpdates"])
    ours, theirs = rep["SynapticOperations"], nb["SynapticOperations"]
    assert ours["Effective_MACs"] == pytest.approx(theirs["Effective_MACs"])
    edges = {tuple(e) for e in g.edges}
    rec_layers = [k for k in weights if (rep["layers"][k]["source"], k) in edges
                  and (k, rep["layers"][k]["source"]) in edges]  # neuron -> w -> same neuron
    if kind in ("rleaky", "mixed"):
        # NeuroBench counts RLeaky's recurrent Linear twice per step (two calls); the chip once
        assert rec_layers
        extra_ac = sum(rep["layers"][k]["synaptic_events"] for k in rec_layers)
        extra_dense = sum(rep["layers"][k]["dense_ops"] for k in rec_layers)
        assert extra_ac > 0
        assert theirs["Effective_ACs"] == pytest.approx(ours["Effective_ACs"] + extra_ac)
        assert theirs["Dense"] == pytest.approx(ours["Dense"] + extra_dense)
    else:
        assert not rec_layers
        assert ours == pytest.approx(theirs)


def test_run_nir_report_fixed_point_counts_the_plan(tmp_path):
    """--backend reference --report counts the Loihi fixed-point run, keyed by NIR node names;
    the counted run includes the extra zero steps run-nir feeds (one per layer of Dense delay)."""
    from snntorch.export_nir import export_to_nir
    torch.manual_seed(4)
    leaky = lambda n: snn.Leaky(beta=torch.full((n,), 0.875), threshold=torch.ones(n),  # noqa: E731
                                reset_mechanism="zero", reset_delay=False, init_hidden=True)
    net = torch.nn.Sequential(torch.nn.Linear(8, 12), leaky(12), torch.nn.Linear(12, 6), leaky(6))
    with torch.no_grad():
        net[2].weight.mul_(3.0)
    g = export_to_nir(net, torch.zeros(1, 8), ignore_dims=[0])
    x = torch.rand(2, 20, 8, generator=torch.Generator().manual_seed(5)) * 2.0
    rep = run_report(tmp_path, g, x, ["--backend", "reference"])
    y = np.load(tmp_path / "y.npy")
    names = [k for k, d in rep["layers"].items() if d.get("spiking")]
    assert len(names) == 2 and set(names) <= set(g.nodes)
    assert rep["steps"] == 20 + 2
    last = rep["layers"][names[-1]]["spikes_per_step"]
    assert y.sum() > 0 and sum(last[2:22]) == pytest.approx(float(y.sum()) / 2)
    assert rep["SynapticOperations"]["Effective_MACs"] > 0   # graded first-layer payloads
    assert rep["SynapticOperations"]["Effective_ACs"] > 0    # spikes into the second layer
    assert (tmp_path / "rep" / "report.html").is_file() and (tmp_path / "rep" / "raster.png").is_file()
