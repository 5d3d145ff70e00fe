"""``stft-neuro deploy``: the whole Loihi 2 deployment view of any NIR graph.

Graphs as their tools write them: snnTorch ``Leaky``, ``Synaptic`` with per-neuron alpha/beta/threshold
(a few profiles), ``RLeaky`` (snnTorch's ``export_to_nir``, ``test_nir_fixed_graphs.snn_net``), and a
Sinabs-style CNN (``test_nir_graphs.sinabs_graph``: ``nir`` nodes exactly as Sinabs writes them;
Sinabs is not installed here). The report is checked against oracles computed here from the
bundle's own fixed-point graph run by the step-by-step definition (``nir_fixed.run_definition``,
not the reference the command runs) on payloads quantized here, and against the float run of the
torch simulator.
"""
from __future__ import annotations

import json
import multiprocessing

import nir
import numpy as np
import pytest
import snntorch as snn
import torch
from snntorch.export_nir import export_to_nir

from stft_neuro.cli import main
from stft_neuro.converters import nir_fixed as F
from stft_neuro.converters.nir_in import read_nir
from stft_neuro.converters.nir_torch import TorchSimulator
from stft_neuro.export.bundle import sha256
from stft_neuro.hw_targets.loihi2 import graph_rules as GR
from stft_neuro.hw_targets.loihi2 import rules as R
from stft_neuro.hw_targets.loihi2.graph_file import load_graph
from stft_neuro.hw_targets.loihi2.network import GRAPH_INPUT, PayloadRange

from test_nir_fixed_errors import _li_hidden
from test_nir_graphs import sinabs_graph
from test_nir_fixed_graphs import snn_net


def case(kind: str):
    """(nir graph written by its tool, input (B, T, *in)) for each graph kind."""
    if kind == "cnn":
        return sinabs_graph(2), np.random.default_rng(2).random((2, 10, 2, 8, 8)) * 2
    sizes = (32, 48, 10)
    if kind == "leaky":  # one beta and threshold per layer: one profile each
        return (snn_net("leaky", sizes=sizes, seed=4, betas=(0.8,), thresholds=(1.0,)),
                torch.rand(3, 25, 32, generator=torch.Generator().manual_seed(4)).numpy() * 2)
    return (snn_net(kind, sizes=sizes, seed=3),
            torch.rand(3, 25, 32, generator=torch.Generator().manual_seed(3)).numpy() * 2)


def deploy(tmp_path, capsys, graph, x, *extra, name="net"):
    """Write the graph and input, run ``stft-neuro deploy --json``: (rc, stdout, stderr, out dir)."""
    nir.write(tmp_path / f"{name}.nir", graph)
    np.save(tmp_path / f"{name}_x.npy", x)
    out = tmp_path / f"{name}_out"
    rc = main(["deploy", str(tmp_path / f"{name}.nir"), "--input", str(tmp_path / f"{name}_x.npy"),
               "--out", str(out), "--json", *map(str, extra)])
    o, e = capsys.readouterr()
    return rc, o, e, out


def no_leftovers(folder):
    """No temporary or half-written folders beside the output."""
    left = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    assert not left, left


def oracle(tmp_path, name, x, rep):
    """Spikes (S, B, n) per layer of the bundle's graph run step by step on payloads made here,
    and synaptic events per layer counted from them."""
    g, head = load_graph(tmp_path / f"{name}_out" / "graph.safetensors")
    B, T = x.shape[:2]
    flat = x.reshape(B, T, -1)
    scale = float(np.percentile(np.abs(flat), 99.9)) / 127
    assert head["input_scale"] == pytest.approx(scale, rel=1e-12)
    pay = np.clip(np.round(flat / scale), -128, 127)
    S = T + max(rep["deploy"]["depth"].values())
    pay = np.concatenate([pay, np.zeros((B, S - T, flat.shape[2]))], 1).transpose(1, 0, 2)
    spikes = {k: v.numpy().astype(np.int64) for k, v in F.run_definition(g, torch.from_numpy(pay)).items()}
    events = {}
    for layer, _ in g.layers:
        total = 0
        for pr in g.projections:
            if g.population(pr.dst).layer != layer:
                continue
            if pr.src == GRAPH_INPUT:
                sent = pay
            elif pr.src.startswith("bias:"):  # 1 from step depth + start - 1 on, every sample
                lay, start = pr.src[5:].rsplit("@", 1)
                on = np.arange(S) >= dict(g.depth)[lay] + int(start) - 1
                sent = np.broadcast_to(on[:, None, None], (S, B, 1))
            else:
                p = g.population(pr.src)
                sent = spikes[p.layer][:, :, p.index]
            total += int(((sent != 0).sum((0, 1)) * (pr.weight != 0).sum(0)).sum())
        events[layer] = total / B
    return g, spikes, events, pay


@pytest.mark.parametrize("kind", ["leaky", "synaptic", "rleaky", "cnn"])
def test_deploy_report_matches_oracles(tmp_path, capsys, kind):
    graph, x = case(kind)
    rc, out, err, folder = deploy(tmp_path, capsys, graph, x)
    assert rc == 0, err
    rep = json.loads(out)
    d = rep["deploy"]
    assert d["resources"]["design_rules"]["passed"]
    g, spikes, events, _ = oracle(tmp_path, "net", x, rep)
    B, T = x.shape[:2]
    # the regime each case is named for
    for layer, s in spikes.items():
        assert s.sum() > 0, f"{kind}: layer {layer} never spikes: the test would prove nothing"
    q = d["quantization"]["layers"]
    if kind == "leaky":
        assert all(v["profiles"] == 1 for v in q.values())
    if kind == "synaptic":
        assert any(v["profiles"] > 1 for v in q.values()) and g.bias_inputs
    if kind == "rleaky":
        assert any(pr.src in {p.name for p in g.of_layer(g.population(pr.dst).layer)}
                   for pr in g.projections), "RLeaky must give a recurrent Dense"
    if kind == "cnn":
        assert read_nir(tmp_path / "net.nir")[0].nodes["conv"].kind == "Conv2d"
    # per-layer spikes and synaptic events equal the oracle's
    assert list(rep["layers"]) == [name for name, _ in g.layers]
    for layer, s in spikes.items():
        r = rep["layers"][layer]
        assert r["spikes"] == s.sum() / B, layer
        assert r["spikes_per_step"] == list(s.sum((1, 2)) / B), layer
        assert r["synaptic_events"] == events[layer], layer
    assert rep["steps"] == T + max(d["depth"].values())
    # agreement with the float run, recomputed from the two runs
    gr, dt, _ = read_nir(tmp_path / "net.nir")
    rec = TorchSimulator(gr, dt).run(torch.from_numpy(x), record=True)
    for layer, a in d["float_agreement"].items():
        dep = d["depth"][layer]
        fx = spikes[layer][dep:dep + T].transpose(1, 0, 2) != 0
        fl = rec[layer].numpy().reshape(B, T, -1) != 0
        assert 0.0 <= a["equal_fraction"] <= 1.0
        assert a["equal_fraction"] == pytest.approx(float((fx == fl).mean()), abs=1e-12)
        assert a["spikes_float"] == fl.sum() / B and a["spikes_fixed"] == fx.sum() / B
        assert fl.sum() > 0, f"the float run of {layer} must spike too"
        # one weight exponent per source keeps the payload weights' mantissa bits beside the
        # spikes' and the biases' (under one per layer: 94 % on the Synaptic graph's layer 1)
        assert a["equal_fraction"] > 0.95, (layer, a["equal_fraction"])
    # the bundle: every file listed with its checksum, nothing left beside it
    man = json.loads((folder / "manifest.json").read_text())
    assert {"graph.safetensors", "graph.nir", "report.json", "report.html"} <= set(man["files"])
    assert man["version"] == 2
    for f, rec in man["files"].items():  # the export bundle's record: bytes and SHA-256
        assert rec == {"bytes": (folder / f).stat().st_size, "sha256": sha256(folder / f)}, f
    meta = nir.read(str(folder / "graph.nir")).metadata
    assert json.loads(meta["stft_neuro.fixed_point"])["plan_sha256"] == man["files"]["graph.safetensors"]["sha256"]
    assert "netx" in d["bundle"] and d["bundle"]["netx"].startswith("not written")
    assert json.loads((folder / "report.json").read_text())["layers"] == rep["layers"]
    no_leftovers(tmp_path)


@pytest.mark.lava
def test_lava_backend_equals_reference(tmp_path, capsys):
    """The Synaptic graph (13 populations, 61 Dense) on Lava fixed_pt: the same report."""
    graph, x = case("synaptic")
    rc, out, err, _ = deploy(tmp_path, capsys, graph, x, name="ref")
    assert rc == 0, err
    rc, out_l, err, _ = deploy(tmp_path, capsys, graph, x, "--backend", "lava", name="lava")
    assert rc == 0, err
    ref, lava = json.loads(out), json.loads(out_l)
    assert lava["deploy"]["run"]["lava_equals_reference"] is True
    assert all(v["spikes"] > 0 for v in ref["layers"].values())
    for k in ("spikes", "synaptic_events", "active_updates"):
        assert [v[k] for v in ref["layers"].values()] == [v[k] for v in lava["layers"].values()]
    assert multiprocessing.active_children() == []


def _leaky(n, beta):
    return snn.Leaky(beta=beta, threshold=torch.ones(n), reset_mechanism="zero", reset_delay=False,
                     init_hidden=True)


def rules_case(tmp_path, capsys, n_in, hidden, *extra, giant_weight: float | None = None):
    """snnTorch: n_in inputs -> ``hidden`` Leaky (one beta) -> 130 Leaky with random per-neuron
    betas (130 profiles, each one LIF process on cores of its own: more than 120 cores).
    ``giant_weight``: the second Linear's weight [0, 0] set to that multiple of its largest, so
    that under its source's one exponent every other weight of the layer rounds to 0 (weight bits).
    Returns the violation rows, the set of rules broken (errors), and the one error line."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(n_in, hidden), _leaky(hidden, torch.full((hidden,), 0.9)),
                              torch.nn.Linear(hidden, 130),
                              _leaky(130, torch.rand(130, generator=g) * 0.5 + 0.45))
    if giant_weight is not None:
        with torch.no_grad():
            net[2].weight[0, 0] = giant_weight * net[2].weight.abs().max()
    graph = export_to_nir(net, torch.zeros(1, n_in), ignore_dims=[0])
    rc, out, err, folder = deploy(tmp_path, capsys, graph, np.random.default_rng(0).random((2, n_in)),
                                  *extra)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("stft-neuro: error:") and "not deployable on Loihi 2" in lines[0]
    assert lines[0].endswith("nothing written")
    rows = json.loads(out)["design_rules"]["violations"]
    for r in rows:
        assert {"node", "parameter", "rule", "limit", "value", "message"} <= set(r)
    broken = {r["rule"] for r in rows if r["severity"] == "error"}
    for rule in broken:
        assert rule in lines[0]
    assert not folder.exists()
    no_leftovers(tmp_path)
    return {r["rule"]: r for r in rows}, broken


def test_design_rule_violations_listed_at_once(tmp_path, capsys):
    """Too many profiles in a layer, and so too many cores for one chip: both listed."""
    by, broken = rules_case(tmp_path, capsys, 8, 4)
    assert broken == {"cores_per_chip", "max_profiles_per_layer"}, broken
    assert by["max_profiles_per_layer"]["node"] == "3" and by["max_profiles_per_layer"]["limit"] == 8
    assert by["max_profiles_per_layer"]["value"] > 120
    assert by["cores_per_chip"]["value"] > by["cores_per_chip"]["limit"] == 120


def test_weight_bits_violation_listed_with_the_others(tmp_path, capsys):
    """One weight 10^4 times the layer's largest: under its source's one exponent an 8-bit mantissa
    rounds every other weight of the layer to 0, so every neuron but neuron 0 loses all its drive
    but its bias. The weight-bits rule names the layer and the bits its weights would need,
    beside the two rules the graph breaks anyway."""
    by, broken = rules_case(tmp_path, capsys, 8, 4, giant_weight=1e4)
    assert broken == {"cores_per_chip", "max_profiles_per_layer", "weight_bits"}, broken
    wb = by["weight_bits"]
    assert wb["node"] == "3" and wb["parameter"] == "weight (mantissa bits)"
    # every neuron but 0 keeps only its bias (its own source, its own exponent): ~98 % lost
    assert wb["value"] > 90 and wb["limit"] == 100 * GR.WEIGHTS_ZEROED_DRIVE_ERROR
    assert wb["severity"] == "error"
    assert "signed bits under one exponent per source and a Loihi 2 mantissa has 8" in wb["message"]
    needed = int(wb["message"].split(" signed bits")[0].rsplit(" ", 1)[1])
    assert needed >= 14 + 2  # log2(1e4) > 13.2: at least 16 signed bits
    # without the giant weight that layer keeps its weights (layer 1 may warn: graded input)
    by, broken = rules_case(tmp_path, capsys, 8, 4)
    assert "weight_bits" not in broken and by.get("weight_bits", {"node": "1"})["node"] == "1"


def test_weight_bits_rule_counts_the_worst_neurons_lost_drive():
    """``graph_rules.weight_bits`` against hand-made records: both tolerances are exclusive, a
    share between them warns, past the error share it refuses."""
    base = dict(neurons=3, profiles=1, weight_exp=0, weight_scale=1.0, state_scale=1.0, weights=9,
                weights_saturated=0, weights_zeroed=2, weights_changed_by_sign_mode=0,
                bias_saturated=0, du_clipped=0, dv_clipped=0, vth_clipped=0, vth_range=(1, 1),
                du_values=(0,), dv_values=(0,), weight_bits_needed=11)
    shares = {"a": GR.WEIGHTS_ZEROED_DRIVE_WARNING, "b": 0.2, "c": GR.WEIGHTS_ZEROED_DRIVE_ERROR, "d": 0.75}
    v = GR.weight_bits([F.LayerQuant(k, **base, weights_zeroed_drive=x) for k, x in shares.items()])
    assert [(x.layer, x.severity) for x in v] == [("b", "warning"), ("c", "warning"), ("d", "error")]
    assert v[2].value == 75.0 and v[2].limit == 100 * GR.WEIGHTS_ZEROED_DRIVE_ERROR
    assert v[0].value == 20.0 and v[0].limit == 100 * GR.WEIGHTS_ZEROED_DRIVE_WARNING
    assert "2 of its weights round to 0: they span 11 signed bits" in v[2].message


def test_weights_zeroed_drive_is_the_worst_neurons_share():
    """The quantization record's share, recomputed here from the lowered float weights and the
    integer weights the graph holds: the worst neuron's lost |w| x payload over its total."""
    graph, x = case("leaky")
    import tempfile
    from stft_neuro.converters.nir_lava import lower
    from stft_neuro.run_nir import quantize_input
    with tempfile.TemporaryDirectory() as d:
        nir.write(f"{d}/g.nir", graph)
        lplan = lower(read_nir(f"{d}/g.nir")[0], 1e-4)
    B, T = x.shape[:2]
    scale, _, _ = quantize_input(x.reshape(B, T, -1), 8)
    fg, rep = F.quantize_graph(lplan, scale, 8, max_profiles=None)
    st = lplan.stages[0]
    first = st.name
    pmax = PayloadRange.for_message_bits(8).abs_max
    # the layer's drive: the input's columns (x the largest |payload|, 128) and its biases (x 1)
    biases = [(f"bias:{first}@{k}", v) for k, v in sorted(st.drive.items()) if np.any(v != 0)]
    b = np.hstack([np.asarray([c for c in lplan.connections if c.dst == first][0].weight.toarray())
                   * scale * pmax] + [np.asarray(v, np.float64).reshape(-1, 1) for _, v in biases])
    w = np.zeros_like(b, dtype=np.int64)
    cols = {GRAPH_INPUT: slice(0, b.shape[1] - len(biases)),
            **{src: slice(b.shape[1] - len(biases) + i, b.shape[1] - len(biases) + i + 1)
               for i, (src, _) in enumerate(biases)}}
    for pr in fg.projections:
        if fg.population(pr.dst).layer == first:
            w[fg.population(pr.dst).index, cols[pr.src]] = pr.weight
    lost = np.where((w == 0) & (b != 0), np.abs(b), 0).sum(1) / np.abs(b).sum(1)
    q = rep[0]
    assert q.name == first and q.weights_zeroed == int(((w == 0) & (b != 0)).sum()) > 0
    assert q.weights_zeroed_drive == pytest.approx(lost.max(), rel=1e-12) and 0 < lost.max() < 1
    b[:, cols[GRAPH_INPUT]] /= pmax

    def bits(block):  # one exponent per source: the input's columns, each bias column
        nz = np.abs(block[block != 0])
        return int(np.ceil(np.log2(nz.max() / nz.min()))) + 2
    assert q.weight_bits_needed == max(bits(b[:, c]) for c in cols.values())


@pytest.mark.slow
def test_five_design_rules_broken_listed_at_once(tmp_path, capsys):
    """Weight bits (as above), and a fan-in of 131073 8-bit synapses, more than one core's 1 Mbit: fan-in and core memory
    (lowering a 131073-wide Linear takes ~50 s here: ``nir_lava._linear_map`` probes it with
    identity columns). 2-bit input: with 8-bit payloads no weight scale keeps 131073 inputs inside
    the 16-bit Dense output (``quantize.choose_layer_scales`` refuses such a layer in one line)."""
    by, broken = rules_case(tmp_path, capsys, 131073, 1, "--input-bits", "2", giant_weight=1e4)
    assert broken == {"fan_in_fits_core", "core_capacity", "cores_per_chip",
                      "max_profiles_per_layer", "weight_bits"}, broken
    assert by["weight_bits"]["node"] == "3"
    assert by["fan_in_fits_core"]["node"] == "1" and by["fan_in_fits_core"]["value"] >= 131073 * 8
    assert by["fan_in_fits_core"]["parameter"] == "fan-in"
    assert by["core_capacity"]["population"] == "1"


def test_every_rule_of_the_plan_is_applied_or_said_why():
    applied = {r.__name__ for r in GR.PROJECTION_RULES + GR.POPULATION_RULES}
    assert {r.__name__ for r in R.RULES} == applied | set(GR.NOT_APPLIED)


def test_bad_inputs_one_line_no_output(tmp_path, capsys):
    graph, x = case("cnn")
    nir.write(tmp_path / "cnn.nir", graph)
    nir.write(tmp_path / "li.nir", _li_hidden())
    (tmp_path / "text.nir").write_text("not a graph")
    bad = {
        "wrong file": ("text.nir", x, "not a readable HDF5/NIR file"),
        "wrong shape": ("cnn.nir", np.ones((2, 10, 128)), "does not fit the graph's input"),
        "NaN input": ("cnn.nir", np.full((10, 2, 8, 8), np.nan), "NaN or infinite"),
        "unsupported node": ("li.nir", np.ones((5, 3)), "node 'readout' (LI) feeds node 'lif'"),
        "bad input bits": ("cnn.nir", x, "--input-bits must be 2..8"),
    }
    for name, (file, arr, words) in bad.items():
        np.save(tmp_path / "x.npy", arr)
        out = tmp_path / name.replace(" ", "_")
        argv = ["deploy", str(tmp_path / file), "--input", str(tmp_path / "x.npy"), "--out", str(out)]
        rc = main(argv + (["--input-bits", "9"] if name == "bad input bits" else []))
        o, err = capsys.readouterr()
        lines = [ln for ln in err.splitlines() if ln.strip() and "warning:" not in ln]
        assert rc == 1 and len(lines) == 1 and "Traceback" not in err, (name, err)
        assert lines[0].startswith("stft-neuro: error:") and words in lines[0], (name, lines[0])
        assert not out.exists(), name
    no_leftovers(tmp_path)


def test_existing_folder_kept_unless_forced(tmp_path, capsys):
    graph, x = case("leaky")
    (tmp_path / "net_out").mkdir()
    (tmp_path / "net_out" / "mine.txt").write_text("keep")
    rc, _, err, folder = deploy(tmp_path, capsys, graph, x)
    assert rc == 1 and "exists; pass --force" in err and (folder / "mine.txt").is_file()
    rc, _, err, folder = deploy(tmp_path, capsys, graph, x, "--force")
    assert rc == 0, err
    assert not (folder / "mine.txt").exists() and (folder / "graph.safetensors").is_file()
    no_leftovers(tmp_path)
