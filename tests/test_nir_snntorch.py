"""snnTorch 1.0 -> NIR file -> ``stft-neuro run-nir`` == snnTorch's own simulation, spike for spike.

Networks of ``Leaky``, ``Synaptic`` and ``RLeaky`` with per-neuron ``beta``/``alpha``/``threshold``
tensors, ``reset_mechanism="zero"`` and ``reset_delay=False`` (the membrane is zeroed in the step
that spikes: what the exported reset-to-zero LIF describes), exported with
``export_to_nir(..., ignore_dims=[0])`` and written with ``nir.write``. Inputs and weights are
scaled so that every layer spikes (asserted), and the comparison is at lag 0.
"""
from __future__ import annotations

import multiprocessing
import warnings

import nir
import numpy as np
import pytest
import torch

snn = pytest.importorskip("snntorch")
from snntorch import utils as snn_utils  # noqa: E402
from snntorch.export_nir import export_to_nir  # noqa: E402

from stft_neuro.cli import main  # noqa: E402
from stft_neuro.converters.nir_in import read_nir  # noqa: E402
from stft_neuro.converters.nir_lava import LavaFloatRunner, lower  # noqa: E402
from stft_neuro.converters.nir_torch import TorchSimulator  # noqa: E402

SIZES = (8, 16, 12, 10)


def _leaky(n, g):
    return snn.Leaky(beta=torch.rand(n, generator=g) * 0.5 + 0.45,
                     threshold=torch.rand(n, generator=g) * 0.5 + 0.5,
                     reset_mechanism="zero", reset_delay=False, init_hidden=True)


def _synaptic(n, g):
    return snn.Synaptic(alpha=torch.rand(n, generator=g) * 0.5 + 0.3,
                        beta=torch.rand(n, generator=g) * 0.5 + 0.4,
                        threshold=torch.rand(n, generator=g) * 0.5 + 0.5,
                        reset_mechanism="zero", reset_delay=False, init_hidden=True)


def _rleaky(n, g):
    return snn.RLeaky(beta=torch.rand(n, generator=g) * 0.5 + 0.4,
                      threshold=torch.rand(n, generator=g) * 0.5 + 0.5, linear_features=n,
                      reset_mechanism="zero", reset_delay=False, init_hidden=True)


KINDS = {"leaky": (_leaky, _leaky, _leaky), "synaptic": (_synaptic, _synaptic, _synaptic),
         "rleaky": (_rleaky, _leaky, _rleaky), "mixed": (_leaky, _synaptic, _rleaky)}


class Net(torch.nn.Module):
    """Linear -> neuron, three times; ``forward`` returns the last layer's spikes and keeps every
    layer's in ``self.spikes`` (nirtorch's tracer needs a tensor output)."""

    def __init__(self, kinds, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.fcs = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(SIZES, SIZES[1:]))
        self.lifs = torch.nn.ModuleList(make(n, g) for make, n in zip(kinds, SIZES[1:]))
        with torch.no_grad():
            for fc in self.fcs[1:]:
                fc.weight.mul_(3.0)  # binary spikes in: larger weights so deeper layers spike

    def forward(self, x):
        spikes = []
        for fc, lif in zip(self.fcs, self.lifs):
            x = lif(fc(x))
            spikes.append(x)
        self.spikes = spikes
        return x


def snntorch_case(kind: str, seed: int = 0, B: int = 4, T: int = 40):
    """(net, input (B, T, 8), per-layer reference spikes [(B, T, n)], nir graph)."""
    net = Net(KINDS[kind], seed).eval()
    g = torch.Generator().manual_seed(seed + 100)
    x = torch.rand(B, T, SIZES[0], generator=g) * 2.0
    snn_utils.reset(net)
    with torch.no_grad():
        steps = [(net(x[:, t]), net.spikes)[1] for t in range(T)]
    ref = [torch.stack([s[l] for s in steps], dim=1) for l in range(3)]
    graph = export_to_nir(net, torch.zeros(1, SIZES[0]), ignore_dims=[0])
    return net, x, ref, graph


def _layer_names(graph):
    return [n for n in graph.order if graph.nodes[n].kind in ("LIF", "CubaLIF")]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_torch_backend_reproduces_snntorch(kind, tmp_path):
    _, x, ref, g = snntorch_case(kind)
    path = tmp_path / "net.nir"
    nir.write(path, g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean snnTorch file has no quirks
        graph, dt, source = read_nir(path)
    assert dt == 1e-4 and source.startswith("default")
    if kind in ("rleaky", "mixed"):
        assert graph.recurrent, "RLeaky's cycle must become a recurrent edge"
    rec = TorchSimulator(graph, dt).run(x, record=True)
    names = _layer_names(graph)
    assert len(names) == 3
    for name, want in zip(names, ref):
        assert want.sum() > 0, f"layer {name} never spikes: the test would prove nothing"
        assert torch.equal(rec[name], want), f"{kind}: layer {name} differs from snnTorch"


@pytest.mark.parametrize("kind", ["mixed", "rleaky"])
def test_run_nir_cli_torch_matches_snntorch(kind, tmp_path, capsys):
    _, x, ref, g = snntorch_case(kind, seed=3)
    nir.write(tmp_path / "net.nir", g)
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "x1.npy", x[1].numpy())  # unbatched (T, n) layout
    rc = main(["run-nir", str(tmp_path / "net.nir"), "--input", str(tmp_path / "x.npy"),
               "--out", str(tmp_path / "y.npy")])
    out = capsys.readouterr().out
    assert rc == 0 and "dt = 0.0001 s (default" in out
    y = np.load(tmp_path / "y.npy")
    assert y.shape == tuple(ref[2].shape) and np.array_equal(y, ref[2].numpy())
    rc = main(["run-nir", str(tmp_path / "net.nir"), "--input", str(tmp_path / "x1.npy"),
               "--out", str(tmp_path / "y1.npy"), "--dt", "1e-4"])
    assert rc == 0 and "(--dt)" in capsys.readouterr().out
    assert np.array_equal(np.load(tmp_path / "y1.npy"), ref[2][1].numpy())


def test_dt_changes_the_simulation(tmp_path):
    """--dt is used, not ignored: a 10x larger dt changes the decays and the spikes."""
    _, x, ref, g = snntorch_case("leaky", seed=5)
    nir.write(tmp_path / "net.nir", g)
    graph, dt, _ = read_nir(tmp_path / "net.nir", dt=2e-5)
    assert dt == 2e-5
    out = TorchSimulator(graph, dt).run(x)
    assert not torch.equal(out["output"], ref[2])


def test_float_layers_of_a_leaky_chain():
    """The fixed-point seam: an Affine -> LIF chain becomes FloatLayers (Lava float units)."""
    from stft_neuro.converters.nir_in import from_nir
    from stft_neuro.converters.nir_lava import LavaMappingError, to_float_layers
    net = torch.nn.Sequential(torch.nn.Linear(8, 6),
                              snn.Leaky(beta=torch.full((6,), 0.875), threshold=torch.ones(6),
                                        reset_mechanism="zero", init_hidden=True))
    graph, dt, _ = from_nir(export_to_nir(net, torch.zeros(1, 8), ignore_dims=[0]))
    (layer,) = to_float_layers(lower(graph, dt))
    assert layer.weight.shape == (6, 8) and layer.du == 1.0
    assert layer.dv == pytest.approx(0.125) and layer.threshold == 1.0
    np.testing.assert_allclose(layer.weight, net[0].weight.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(layer.bias, net[0].bias.detach().numpy(), rtol=1e-6)
    _, _, _, g = snntorch_case("rleaky")
    graph, dt, _ = from_nir(g)
    with pytest.raises(LavaMappingError, match="chain"):
        to_float_layers(lower(graph, dt))


# -- Lava floating_pt --------------------------------------------------------------------------

@pytest.mark.lava
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_lava_float_reproduces_snntorch(kind):
    """Measured: exact (0 differing spikes) on every layer, B = 4 in one block-diagonal network."""
    _, x, ref, g = snntorch_case(kind, B=4, T=30)
    from stft_neuro.converters.nir_in import from_nir
    graph, dt, _ = from_nir(g)
    plan = lower(graph, dt)
    assert [s.depth for s in plan.stages] == [1, 2, 3]
    rec = LavaFloatRunner(plan).run(x.numpy(), record=True)
    for name, want in zip(_layer_names(graph), ref):
        assert want.sum() > 0
        differ = int(np.sum(rec[name] != want.numpy()))
        assert differ == 0, f"{kind}: {differ} of {want.numel()} spikes of {name} differ on Lava"
    assert multiprocessing.active_children() == []


@pytest.mark.lava
def test_run_nir_cli_lava_matches_snntorch(tmp_path, capsys):
    _, x, ref, g = snntorch_case("mixed", seed=7, B=3, T=25)
    nir.write(tmp_path / "net.nir", g)
    np.save(tmp_path / "x.npy", x.numpy())
    rc = main(["run-nir", str(tmp_path / "net.nir"), "--input", str(tmp_path / "x.npy"),
               "--out", str(tmp_path / "y.npy"), "--backend", "lava"])
    out = capsys.readouterr().out
    assert rc == 0 and "3 extra zero steps" in out
    assert np.array_equal(np.load(tmp_path / "y.npy"), ref[2].numpy())
    assert multiprocessing.active_children() == []


@pytest.mark.lava
def test_lava_block_diagonal_batch_equals_separate_runs():
    """One network for the batch (block-diagonal Sparse) == one network per sample, exactly."""
    _, x, _, g = snntorch_case("mixed", seed=11, B=2, T=15)
    from stft_neuro.converters.nir_in import from_nir
    plan = lower(*from_nir(g)[:2])
    both = LavaFloatRunner(plan).run(x.numpy())["output"]
    single = np.concatenate([LavaFloatRunner(plan).run(x[b:b + 1].numpy())["output"]
                             for b in range(2)])
    assert both.sum() > 0 and np.array_equal(both, single)


@pytest.mark.lava
@pytest.mark.slow
def test_sigterm_during_a_lava_run_leaves_nothing_behind(tmp_path):
    """SIGTERM mid-run: one line, exit 130, no output file, no Lava process left."""
    import os
    import signal
    import subprocess
    import sys
    import time
    _, _, _, g = snntorch_case("mixed")
    nir.write(tmp_path / "net.nir", g)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((2, 5000, 8)))
    proc = subprocess.Popen([sys.executable, "-m", "stft_neuro.cli", "run-nir",
                             str(tmp_path / "net.nir"), "--input", str(tmp_path / "x.npy"),
                             "--out", str(tmp_path / "y.npy"), "--backend", "lava"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # wait (on a loaded machine, imports take a while) until Lava's process models are running
    deadline, children = time.time() + 120, []
    while proc.poll() is None and time.time() < deadline:
        children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True,
                                  text=True).stdout.split()
        if len(children) >= 3:
            break
        time.sleep(0.5)
    time.sleep(2)  # mid-run, not mid-start-up
    assert proc.poll() is None and children, "the run ended before it could be interrupted"
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip() == "stft-neuro: interrupted", err
    assert not (tmp_path / "y.npy").exists()

    def live(pid):  # running (not gone, not a zombie awaiting its reaper): its command line
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return None
            with open(f"/proc/{pid}/cmdline") as f:
                return f.read().replace("\0", " ")[:80]
        except OSError:
            return None

    deadline, left = time.time() + 15, {"?": "?"}  # orphans exit asynchronously
    while left and time.time() < deadline:
        time.sleep(0.5)
        left = {c: live(c) for c in children if live(c)}
    assert not left, f"processes left behind: {left}"


def test_rleaky_as_nested_subgraphs_equals_snntorch(tmp_path):
    """Older snnTorch/nirtorch wrote each RLeaky as a nested NIRGraph {input, lif, w_rec, output};
    rebuilt that way (and written to a file), the graph still reproduces snnTorch exactly."""
    _, x, ref, g = snntorch_case("rleaky", seed=13)
    nodes, edges = dict(g.nodes), list(g.edges)
    for block in ("lifs.0", "lifs.2"):  # the two RLeaky layers of the "rleaky" case
        lif, w_rec = nodes.pop(f"{block}.lif"), nodes.pop(f"{block}.w_rec")
        n = int(lif.tau.shape[0])
        nodes[block] = nir.NIRGraph(
            nodes={"input": nir.Input(input_type=np.array([n])), "lif": lif, "w_rec": w_rec,
                   "output": nir.Output(output_type=np.array([n]))},
            edges=[("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")],
            type_check=False)
        edges = [(s.replace(f"{block}.lif", block), d.replace(f"{block}.lif", block))
                 for s, d in edges if f"{block}.w_rec" not in (s, d)]
    nested = nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)
    nir.write(tmp_path / "nested.nir", nested)
    graph, dt, _ = read_nir(tmp_path / "nested.nir")
    assert {("lifs.0.lif", "lifs.0.w_rec"), ("lifs.2.lif", "lifs.2.w_rec")} <= graph.recurrent
    assert graph.nodes["lifs.0.input"].kind == "Identity"  # it was read as a nested graph
    out = TorchSimulator(graph, dt).run(x)["output"]
    assert ref[2].sum() > 0 and torch.equal(out, ref[2])
