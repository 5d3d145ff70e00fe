"""Graphs built with the nir package by hand: a Sinabs-style convolutional IF network against a
hand-written reference of the same equations, nested graphs, messy files (one warning per quirk),
and the execution semantics (recurrent edges, delays, the other node types)."""
from __future__ import annotations

import warnings

import h5py
import nir
import numpy as np
import pytest
import torch

from stft_neuro.cli import main
from stft_neuro.converters.nir_in import NIRQuirkWarning, from_nir, read_nir
from stft_neuro.converters.nir_lava import LavaFloatRunner, lower
from stft_neuro.converters.nir_torch import TorchSimulator

RNG = np.random.default_rng(0)


def sinabs_graph(seed: int = 0) -> nir.NIRGraph:
    """Input (2, 8, 8) -> Conv2d(2->4, 3x3, pad 1) -> IF -> SumPool2d(2) -> Flatten -> Affine(64->10)
    -> IF -> Output, as Sinabs writes it (IF with r = 1, v_reset = 0)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.6, (4, 2, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 4).astype(np.float32)
    w2 = rng.normal(0, 0.5, (10, 64)).astype(np.float32)
    b2 = rng.normal(0, 0.05, 10).astype(np.float32)
    nodes = {
        "input": nir.Input(input_type=np.array([2, 8, 8])),
        "conv": nir.Conv2d(input_shape=(8, 8), weight=w1, stride=1, padding=1, dilation=1,
                           groups=1, bias=b1),
        "if1": nir.IF(r=np.ones((4, 8, 8), np.float32), v_threshold=np.ones((4, 8, 8), np.float32),
                      v_reset=np.zeros((4, 8, 8), np.float32)),
        "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                              padding=np.array([0, 0])),
        "flat": nir.Flatten(input_type={"input": np.array([4, 4, 4])}, start_dim=0, end_dim=-1),
        "fc": nir.Affine(weight=w2, bias=b2),
        "if2": nir.IF(r=np.ones(10, np.float32), v_threshold=np.full(10, 1.5, np.float32),
                      v_reset=np.zeros(10, np.float32)),
        "output": nir.Output(output_type=np.array([10])),
    }
    edges = [("input", "conv"), ("conv", "if1"), ("if1", "pool"), ("pool", "flat"), ("flat", "fc"),
             ("fc", "if2"), ("if2", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def sinabs_reference(g: nir.NIRGraph, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same equations written out in numpy float64 loops: conv, IF (v += I; spike v > thr;
    v = 0), 2x2 sum pool, flatten, affine, IF. ``x`` (B, T, 2, 8, 8) -> spikes of if1 and if2."""
    n = g.nodes
    w1, b1 = n["conv"].weight.astype(np.float64), n["conv"].bias.astype(np.float64)
    w2, b2 = n["fc"].weight.astype(np.float64), n["fc"].bias.astype(np.float64)
    th2 = n["if2"].v_threshold.astype(np.float64)
    B, T = x.shape[:2]
    v1, v2 = np.zeros((B, 4, 8, 8)), np.zeros((B, 10))
    s1_all, s2_all = np.zeros((B, T, 4, 8, 8)), np.zeros((B, T, 10))
    for t in range(T):
        xp = np.pad(x[:, t], ((0, 0), (0, 0), (1, 1), (1, 1)))
        cur = np.zeros((B, 4, 8, 8))
        for o in range(4):
            for i in range(8):
                for j in range(8):
                    cur[:, o, i, j] = np.sum(xp[:, :, i:i + 3, j:j + 3] * w1[o], axis=(1, 2, 3)) + b1[o]
        v1 = v1 + cur
        s1 = (v1 > 1.0).astype(np.float64)
        v1[s1 > 0] = 0.0
        pooled = s1.reshape(B, 4, 4, 2, 4, 2).sum(axis=(3, 5))
        cur2 = pooled.reshape(B, 64) @ w2.T + b2
        v2 = v2 + cur2
        s2 = (v2 > th2).astype(np.float64)
        v2[s2 > 0] = 0.0
        s1_all[:, t], s2_all[:, t] = s1, s2
    return s1_all, s2_all


def test_sinabs_style_graph_matches_hand_written_reference(tmp_path):
    g = sinabs_graph()
    nir.write(tmp_path / "sinabs.nir", g)
    graph, dt, _ = read_nir(tmp_path / "sinabs.nir")
    x = (RNG.random((3, 12, 2, 8, 8)) < 0.3).astype(np.float64)
    s1, s2 = sinabs_reference(g, x)
    assert s1.sum() > 0 and s2.sum() > 0
    rec = TorchSimulator(graph, dt, dtype=torch.float64).run(torch.from_numpy(x), record=True)
    assert np.array_equal(rec["if1"].numpy(), s1)
    assert np.array_equal(rec["if2"].numpy(), s2)
    rec32 = TorchSimulator(graph, dt).run(torch.from_numpy(x))  # float32, as run-nir
    assert np.mean(rec32["output"].numpy() == s2) > 0.99


def test_sinabs_style_graph_through_the_cli(tmp_path, capsys):
    g = sinabs_graph(1)
    nir.write(tmp_path / "sinabs.nir", g)
    x = (RNG.random((10, 2, 8, 8)) < 0.3).astype(np.float32)  # (T, C, H, W): unbatched
    np.save(tmp_path / "x.npy", x)
    rc = main(["run-nir", str(tmp_path / "sinabs.nir"), "--input", str(tmp_path / "x.npy"),
               "--out", str(tmp_path / "y.npy"), "--json"])
    assert rc == 0
    y = np.load(tmp_path / "y.npy")
    _, s2 = sinabs_reference(g, x[None].astype(np.float64))
    assert y.shape == (10, 10) and s2.sum() > 0
    assert np.mean(y == s2[0]) > 0.99


@pytest.mark.lava
def test_sinabs_style_graph_on_lava():
    """Conv2d, SumPool2d and Flatten become one sparse matrix per connection; IF -> du=1, dv=0."""
    g = sinabs_graph(2)
    graph, dt, _ = from_nir(g)
    x = (RNG.random((2, 10, 2, 8, 8)) < 0.3).astype(np.float64)
    s1, s2 = sinabs_reference(g, x)
    assert s2.sum() > 0
    rec = LavaFloatRunner(lower(graph, dt)).run(x, record=True)
    assert np.array_equal(rec["if1"], s1) and np.array_equal(rec["if2"], s2)


def _lif(n, tau=2e-4, thr=0.5):
    return nir.LIF(tau=np.full(n, tau), r=np.ones(n), v_leak=np.zeros(n), v_threshold=np.full(n, thr),
                   v_reset=np.zeros(n))


def test_nested_graph_equals_flat_graph(tmp_path):
    w1, w2 = RNG.normal(0.5, 1, (5, 3)), RNG.normal(1.0, 1, (4, 5))
    sub = nir.NIRGraph(nodes={"in": nir.Input(input_type=np.array([5])), "lif": _lif(5),
                              "out": nir.Output(output_type=np.array([5]))},
                       edges=[("in", "lif"), ("lif", "out")], type_check=False)
    nested = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([3])),
                                 "fc1": nir.Affine(weight=w1, bias=np.zeros(5)), "block": sub,
                                 "fc2": nir.Linear(weight=w2), "lif2": _lif(4),
                                 "output": nir.Output(output_type=np.array([4]))},
                          edges=[("input", "fc1"), ("fc1", "block"), ("block", "fc2"),
                                 ("fc2", "lif2"), ("lif2", "output")], type_check=False)
    flat = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([3])),
                               "fc1": nir.Affine(weight=w1, bias=np.zeros(5)), "lif": _lif(5),
                               "fc2": nir.Linear(weight=w2), "lif2": _lif(4),
                               "output": nir.Output(output_type=np.array([4]))},
                        edges=[("input", "fc1"), ("fc1", "lif"), ("lif", "fc2"), ("fc2", "lif2"),
                               ("lif2", "output")], type_check=False)
    nir.write(tmp_path / "nested.nir", nested)
    gn, dt, _ = read_nir(tmp_path / "nested.nir")
    assert "block.lif" in gn.nodes and gn.nodes["block.in"].kind == "Identity"
    gf, _, _ = from_nir(flat)
    x = torch.from_numpy(RNG.random((2, 20, 3)) * 2)
    a, b = TorchSimulator(gn, dt).run(x), TorchSimulator(gf, dt).run(x)
    assert a["output"].sum() > 0 and torch.equal(a["output"], b["output"])


def _write_messy(path):
    """A file as sloppy tools write it: batched Input/Output types, scalar neuron parameters,
    an Affine bias given as one number, a Conv2d without input_shape, a Flatten without input_type.
    Returns the equivalent clean graph."""
    w = RNG.normal(0, 0.7, (3, 1, 3, 3))
    wf = RNG.normal(0, 0.6, (6, 3 * 4 * 4))

    def graph(messy: bool):
        lif_p = dict(tau=np.array(3e-4), r=np.array(1.0), v_leak=np.array(0.0),
                     v_threshold=np.array(0.8), v_reset=np.array(0.0))
        full = {k: np.full((6,), float(v)) for k, v in lif_p.items()}
        return nir.NIRGraph(nodes={
            "input": nir.Input(input_type=np.array([1, 1, 6, 6] if messy else [1, 6, 6])),
            "conv": nir.Conv2d(input_shape=None if messy else (6, 6), weight=w, stride=1,
                               padding=0, dilation=1, groups=1, bias=np.zeros(3)),
            "if": nir.IF(r=np.ones((3, 4, 4)), v_threshold=np.ones((3, 4, 4)),
                         v_reset=np.zeros((3, 4, 4))),
            "flat": nir.Flatten(input_type={"input": None if messy else np.array([3, 4, 4])},
                                start_dim=0),
            "fc": nir.Affine(weight=wf, bias=np.array([0.1]) if messy else np.full(6, 0.1)),
            "lif": nir.LIF(**(lif_p if messy else full)),
            "output": nir.Output(output_type=np.array([1, 6] if messy else [6]))},
            edges=[("input", "conv"), ("conv", "if"), ("if", "flat"), ("flat", "fc"), ("fc", "lif"),
                   ("lif", "output")], type_check=False)

    _write_dict(path, graph(True).to_dict())
    return graph(False)


def _write_dict(path, d):
    """nir.write's HDF5 layout, but leaving out fields that are None (which nir.write cannot
    store): how a file with missing shapes looks."""
    def rec(group, node):
        for k, v in node.items():
            if v is None or (k == "metadata" and not v):
                continue
            if isinstance(v, dict):
                rec(group.create_group(str(k)), v)
            elif isinstance(v, str):
                group.create_dataset(k, data=v, dtype=h5py.string_dtype())
            else:
                group.create_dataset(k, data=np.asarray(v) if not isinstance(v, list) else
                                     np.asarray(v, dtype=h5py.string_dtype()))
    with h5py.File(path, "w") as f:
        f.create_dataset("version", data=nir.version, dtype=h5py.string_dtype())
        rec(f.create_group("node"), d)


def test_messy_file_loads_with_one_warning_per_quirk(tmp_path):
    clean = _write_messy(tmp_path / "messy.nir")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g, dt, _ = read_nir(tmp_path / "messy.nir")
    msgs = [str(w.message) for w in caught if issubclass(w.category, NIRQuirkWarning)]
    for quirk in ("batched Input/Output type", "scalar parameters", "missing shape"):
        hits = [m for m in msgs if quirk in m]
        assert len(hits) == 1, f"{quirk}: {msgs}"
    assert len(msgs) == 3
    assert "input" in next(m for m in msgs if "batched" in m)
    assert "lif" in next(m for m in msgs if "scalar" in m)
    gc, _, _ = from_nir(clean)
    x = torch.from_numpy(RNG.random((2, 15, 1, 6, 6)) * 1.5)
    a, b = TorchSimulator(g, dt).run(x), TorchSimulator(gc, dt).run(x)
    assert b["output"].sum() > 0 and torch.equal(a["output"], b["output"])


def test_euler_unstable_parameters_warn_and_run(tmp_path):
    g = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([2])),
                            "li": nir.LI(tau=np.array([5e-5, 1e-3]), r=np.ones(2), v_leak=np.zeros(2)),
                            "output": nir.Output(output_type=np.array([2]))},
                     edges=[("input", "li"), ("li", "output")], type_check=False)
    with pytest.warns(NIRQuirkWarning, match=r"unstable.*li\.tau"):
        graph, dt, _ = from_nir(g)
    y = TorchSimulator(graph, dt).run(torch.ones(1, 4, 2))["output"][0]
    # decay 1 - dt/tau = -1 for the first neuron: v = -v + 2 oscillates 2, 0, 2, 0
    assert torch.allclose(y[:, 0], torch.tensor([2.0, 0.0, 2.0, 0.0]))


def test_recurrent_edge_carries_previous_step_and_bias_from_step_zero():
    """IF -> Affine(w, b) -> back into IF: input(t) + w * s(t-1) + b, with b present at t = 0."""
    g = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([1])),
                            "if": nir.IF(r=np.ones(1), v_threshold=np.array([0.95]),
                                         v_reset=np.zeros(1)),
                            "rec": nir.Affine(weight=np.array([[-0.5]]), bias=np.array([0.25])),
                            "output": nir.Output(output_type=np.array([1]))},
                     edges=[("input", "if"), ("if", "rec"), ("rec", "if"), ("if", "output")],
                     type_check=False)
    graph, dt, _ = from_nir(g)
    assert graph.recurrent == {("if", "rec")}
    x = torch.full((1, 6, 1), 0.5, dtype=torch.float64)
    y = TorchSimulator(graph, dt, torch.float64).run(x)["output"][0, :, 0].tolist()
    v, s, want = 0.0, 0.0, []
    for _ in range(6):
        v += 0.5 + (-0.5 * s + 0.25)
        s = float(v > 0.95)
        v = 0.0 if s else v
        want.append(s)
    assert y == want and sum(want) > 0


def test_delay_threshold_scale_and_cubali_nodes():
    g = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([3])),
                            "scale": nir.Scale(scale=np.array([1.0, 2.0, 3.0])),
                            "delay": nir.Delay(delay=np.array([0.0, 1e-4, 3e-4])),
                            "thr": nir.Threshold(threshold=np.array([0.5, 0.5, 0.5])),
                            "cli": nir.CubaLI(tau_syn=np.full(3, 2e-4), tau_mem=np.full(3, 4e-4),
                                              r=np.ones(3), v_leak=np.zeros(3)),
                            "output": nir.Output(output_type=np.array([3]))},
                     edges=[("input", "scale"), ("scale", "delay"), ("delay", "thr"),
                            ("thr", "cli"), ("cli", "output")], type_check=False)
    graph, dt, _ = from_nir(g)
    x = torch.zeros(1, 6, 3, dtype=torch.float64)
    x[0, 0] = 1.0
    rec = TorchSimulator(graph, dt, torch.float64).run(x, record=True)
    assert rec["thr"][0, :, 0].tolist() == [1, 0, 0, 0, 0, 0]
    assert rec["thr"][0, :, 1].tolist() == [0, 1, 0, 0, 0, 0]
    assert rec["thr"][0, :, 2].tolist() == [0, 0, 0, 1, 0, 0]
    # CubaLI: I = 0.5 I + 0.5 z ; v = 0.75 v + 0.25 I * (tau_mem/dt = 4 -> r dt/tau = 0.25)
    i = v = 0.0
    want = []
    for z in [1, 0, 0, 0, 0, 0]:
        i = 0.5 * i + 0.5 * z
        v = 0.75 * v + 0.25 * i
        want.append(v)
    assert np.allclose(rec["output"][0, :, 0].numpy(), want)


def test_dt_from_graph_metadata(tmp_path):
    g = sinabs_graph()
    g.metadata = {"dt": 1e-3}
    nir.write(tmp_path / "g.nir", g)
    _, dt, source = read_nir(tmp_path / "g.nir")
    assert (dt, source) == (1e-3, "graph metadata")
    _, dt, source = read_nir(tmp_path / "g.nir", dt=5e-4)
    assert (dt, source) == (5e-4, "--dt")
    with h5py.File(tmp_path / "g.nir") as f:
        assert float(f["node/metadata/dt"][()]) == 1e-3


def test_if_with_r_one_over_dt_is_read_as_spikingjelly_means_it():
    """SpikingJelly writes IF r = 1/dt for v += x; Sinabs writes r = 1 for the same neuron."""
    g = sinabs_graph(3)
    x = torch.from_numpy((RNG.random((2, 8, 2, 8, 8)) < 0.3).astype(np.float64))
    ref = TorchSimulator(from_nir(g)[0], 1e-4, torch.float64).run(x)["output"]
    for n in ("if1", "if2"):
        g.nodes[n].r = g.nodes[n].r * 1e4
    with pytest.warns(NIRQuirkWarning, match=r"r = 1/dt.*if1, if2"):
        graph, dt, _ = from_nir(g)
    out = TorchSimulator(graph, dt, torch.float64).run(x)["output"]
    assert ref.sum() > 0 and torch.equal(out, ref)


def _lava_model_reference(layers, x):
    """Lava floating_pt Dense + LIF written out (float64): Dense delivers a step late, then
    u = u (1 - du) + a ; v = v (1 - dv) + u + bias ; s = v > vth ; v[s] = 0."""
    B, T = x.shape[:2]
    s_in, outs = x, []
    for layer in layers:
        n = len(layer.bias)
        u, v, a_next = np.zeros((B, n)), np.zeros((B, n)), np.zeros((B, n))
        out = np.zeros((B, T, n))
        for t in range(T):
            u = u * (1 - layer.du) + a_next
            v = v * (1 - layer.dv) + u + layer.bias
            s = v > layer.threshold
            v[s] = 0.0
            out[:, t] = s
            a_next = s_in[:, t] @ layer.weight.T
        outs.append(out)
        s_in = out
    return outs


def test_the_projects_own_nir_export_runs_on_both_backends(tmp_path, capsys):
    """converters.nir_out writes Affine -> Delay(dt) -> CubaLIF per layer (Lava's own timing, in
    NIR's terms) with every layer an Output: run-nir reproduces Lava's float dynamics, --output
    picks the layer, and on Lava the Delay nodes are the connections' own delay (depth 0)."""
    nir_out = pytest.importorskip("stft_neuro.converters.nir_out")
    from stft_neuro.hw_targets.loihi2.quantize import FloatLayer
    rng = np.random.default_rng(4)
    layers = [FloatLayer("l1", rng.normal(0.3, 0.5, (12, 6)), rng.normal(0.05, 0.05, 12), 0.5, 0.2, 1.0),
              FloatLayer("l2", rng.normal(0.4, 0.6, (5, 12)), rng.normal(0.02, 0.05, 5), 0.3, 0.1, 1.0)]
    nir_out.write_nir(nir_out.float_layers_to_nir(layers), tmp_path / "own.nir")
    x = rng.random((3, 30, 6)) * 2
    np.save(tmp_path / "x.npy", x)
    want = _lava_model_reference(layers, x)
    assert all(w.sum() > 0 for w in want)
    graph, dt, source = read_nir(tmp_path / "own.nir")
    assert source == "graph metadata"
    rec = TorchSimulator(graph, dt, torch.float64).run(torch.from_numpy(x))
    assert np.array_equal(rec["spikes_1"].numpy(), want[0])
    assert np.array_equal(rec["spikes_2"].numpy(), want[1])
    args = ["run-nir", str(tmp_path / "own.nir"), "--input", str(tmp_path / "x.npy")]
    assert main(args + ["--out", str(tmp_path / "y.npy")]) == 0
    assert "'spikes_2'" in capsys.readouterr().out  # the last layer by default, and it says so
    assert np.mean(np.load(tmp_path / "y.npy") == want[1]) > 0.99  # float32
    assert main(args + ["--out", str(tmp_path / "y1.npy"), "--output", "spikes_1"]) == 0
    assert np.mean(np.load(tmp_path / "y1.npy") == want[0]) > 0.99
    assert main(args + ["--out", str(tmp_path / "y3.npy"), "--output", "spikes_3"]) == 1
    assert "no Output node 'spikes_3'" in capsys.readouterr().err


@pytest.mark.lava
def test_the_projects_own_nir_export_on_lava():
    nir_out = pytest.importorskip("stft_neuro.converters.nir_out")
    from stft_neuro.hw_targets.loihi2.quantize import FloatLayer
    rng = np.random.default_rng(5)
    layers = [FloatLayer("l1", rng.normal(0.3, 0.5, (12, 6)), rng.normal(0.05, 0.05, 12), 0.5, 0.2, 1.0),
              FloatLayer("l2", rng.normal(0.4, 0.6, (5, 12)), rng.normal(0.02, 0.05, 5), 0.3, 0.1, 1.0)]
    graph, dt, _ = from_nir(nir_out.float_layers_to_nir(layers))
    plan = lower(graph, dt)
    assert [s.depth for s in plan.stages] == [0, 0]  # the graph's Delay nodes are Lava's delays
    x = rng.random((2, 25, 6)) * 2
    want = _lava_model_reference(layers, x)
    got = LavaFloatRunner(plan).run(x)
    assert np.array_equal(got["spikes_1"], want[0]) and np.array_equal(got["spikes_2"], want[1])


def test_float_layers_round_trip_through_the_projects_own_export():
    """FloatLayers -> nir_out's graph -> read -> lower -> to_float_layers gives them back."""
    nir_out = pytest.importorskip("stft_neuro.converters.nir_out")
    from stft_neuro.converters.nir_lava import to_float_layers
    from stft_neuro.hw_targets.loihi2.quantize import FloatLayer
    rng = np.random.default_rng(6)
    layers = [FloatLayer("l1", rng.normal(0, 1, (7, 4)), rng.normal(0, 0.1, 7), 0.25, 0.125, 1.5),
              FloatLayer("l2", rng.normal(0, 1, (3, 7)), rng.normal(0, 0.1, 3), 1.0, 0.5, 0.75)]
    graph, dt, _ = from_nir(nir_out.float_layers_to_nir(layers))
    back = to_float_layers(lower(graph, dt))
    for a, b in zip(layers, back):
        np.testing.assert_allclose(b.weight, a.weight, rtol=1e-12)
        np.testing.assert_allclose(b.bias, a.bias, rtol=1e-12, atol=1e-15)
        assert (b.du, b.dv, b.threshold) == pytest.approx((a.du, a.dv, a.threshold), rel=1e-12)
