"""``stft-neuro run-nir DIR``: a deploy bundle run on new inputs exactly as deployed (issue #20 item 3).

The bundle's stored integer graph (``graph.safetensors``) runs with the bundle's stored input scale
and payload bits. Oracles computed here: the graph loaded from the bundle run by the bit-exact
reference (``nir_fixed.run_reference``) on payloads quantized in this file with the stored scale
(float32 input, as the host sends it, rounded and saturated to the stored bits), aligned by each
layer's depth; and the deploy's own report of the same input. Graphs from ``test_deploy_nir.case``:
an snnTorch ``Synaptic`` net with per-neuron alpha/beta/threshold (several profiles, bias sources)
and a Sinabs-style CNN.
"""
from __future__ import annotations

import json
import multiprocessing

import numpy as np
import pytest

from stft_neuro.cli import main
from stft_neuro.converters import nir_fixed as F
from stft_neuro.converters.nir_in import read_nir
from stft_neuro.converters.nir_lava import lower
from stft_neuro.hw_targets.loihi2.graph_file import load_graph

from test_deploy_nir import case, deploy, no_leftovers

#: report keys that depend only on the run (not on who ran it)
RUN_KEYS = ("samples", "steps", "Footprint", "ParameterCount", "ConnectionSparsity",
            "ActivationSparsity", "SynapticOperations", "MembraneUpdates", "layers", "messages",
            "energy")


def oracle(folder, x):
    """The bundle's graph run by the reference on payloads quantized here with its stored scale:
    ``(graph, header, {layer: (S, B, n) spikes}, payloads saturated, {output: (layer, depth)})``."""
    g, head = load_graph(folder / "graph.safetensors")
    B, T = x.shape[:2]
    flat = x.reshape(B, T, -1).astype(np.float32).astype(np.float64)
    lo, hi = -2 ** (head["input_bits"] - 1), 2 ** (head["input_bits"] - 1) - 1
    raw = np.round(flat / head["input_scale"])
    sat = int(((raw < lo) | (raw > hi)).sum())
    depth = dict(g.depth)
    S = T + max(depth.values())
    pay = np.concatenate([np.clip(raw, lo, hi), np.zeros((B, S - T, flat.shape[2]))], 1)
    spikes = F.run_reference(g, pay.transpose(1, 0, 2))
    graph, dt, _ = read_nir(folder / "graph.nir")
    outs = {o: (layer, depth[layer]) for o, layer in lower(graph, head["dt"]).outputs.items()}
    return g, head, {k: v.numpy().astype(np.int64) for k, v in spikes.items()}, sat, outs


def run_bundle(tmp_path, capsys, folder, x, *extra, name="y"):
    """``run-nir DIR --input X --out Y.npy --json``: (rc, JSON or None, stderr, Y path)."""
    np.save(tmp_path / f"{name}_in.npy", x)
    y = tmp_path / f"{name}.npy"
    rc = main(["run-nir", str(folder), "--input", str(tmp_path / f"{name}_in.npy"), "--out", str(y),
               "--json", *map(str, extra)])
    o, e = capsys.readouterr()
    return rc, (json.loads(o) if rc == 0 else None), e, y


def assert_output_is_oracles(y, x, spikes, outs):
    """Output step t = the output layer's spikes at Lava step t + its depth."""
    B, T = x.shape[:2]
    (layer, d), = outs.values()
    want = spikes[layer][d:d + T].transpose(1, 0, 2)
    got = np.load(y)
    assert got.shape[:2] == (B, T) and got.sum() > 0
    assert np.array_equal(got.reshape(want.shape), want)


@pytest.mark.parametrize("kind", ["synaptic", "cnn"])
def test_bundle_on_its_own_input_is_the_deployed_run(tmp_path, capsys, kind):
    graph, x = case(kind)
    rc, out, err, folder = deploy(tmp_path, capsys, graph, x)
    assert rc == 0, err
    dep = json.loads(out)
    g, head, spikes, sat, outs = oracle(folder, x)
    B = x.shape[0]
    # the regime: every layer spikes; the graph is the kind named
    for layer, s in spikes.items():
        assert s.sum() > 0, f"{kind}: layer {layer} never spikes"
    if kind == "synaptic":
        assert g.bias_inputs and any(len(g.of_layer(n)) > 1 for n, _ in g.layers)
    else:
        assert read_nir(folder / "graph.nir")[0].nodes["conv"].kind == "Conv2d"
    rc, info, err, y = run_bundle(tmp_path, capsys, folder, x, "--report", tmp_path / "rep")
    assert rc == 0, err
    assert info["deploy_bundle"] and info["backend"] == "reference" and info["fixed_point"]
    q = info["quantization"]
    assert q["input_scale"] == head["input_scale"] and q["input_bits"] == head["input_bits"]
    assert q["payloads_saturated"] == sat == dep["deploy"]["quantization"]["input"]["payloads_saturated"]
    assert info["dt"] == head["dt"] == dep["deploy"]["dt"]
    assert_output_is_oracles(y, x, spikes, outs)
    # the deploy's own run: its per-layer spike counts, and its whole run report
    for layer, s in spikes.items():
        assert dep["layers"][layer]["spikes"] == s.sum() / B, layer
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert (tmp_path / "rep" / "report.html").is_file()
    for k in RUN_KEYS:
        assert rep[k] == dep[k], k
    assert rep["source"]["deploy_bundle"] is True
    assert rep["run_nir"]["input_quantization"]["payloads_saturated"] == sat
    # the torch definition of the arithmetic: the same output
    rc, info_t, err, y_t = run_bundle(tmp_path, capsys, folder, x, "--backend", "torch", name="yt")
    assert rc == 0, err
    assert info_t["torch_equals_reference"] is True
    assert np.array_equal(np.load(y_t), np.load(y))
    no_leftovers(tmp_path)


@pytest.mark.parametrize("kind", ["synaptic", "cnn"])
def test_new_input_beyond_the_range_saturates_and_is_counted(tmp_path, capsys, kind):
    graph, x = case(kind)
    rc, _, err, folder = deploy(tmp_path, capsys, graph, x)
    assert rc == 0, err
    x2 = np.concatenate([x[:1] * 3.0, x[1:] - 0.5], 0)  # larger range, negatives too
    g, head, spikes, sat, outs = oracle(folder, x2)
    assert sat > 0, "X2 must go beyond the stored input range"
    for layer, s in spikes.items():
        assert s.sum() > 0, f"{kind}: layer {layer} never spikes on X2"
    rc, info, err, y = run_bundle(tmp_path, capsys, folder, x2, "--report", tmp_path / "rep2")
    assert rc == 0, err
    q = info["quantization"]
    assert q["payloads_saturated"] == sat and q["payloads"] == x2.size
    assert q["input_scale"] == head["input_scale"], "the stored scale, not re-calibrated on X2"
    warn = [ln for ln in err.splitlines() if "saturated" in ln]
    assert len(warn) == 1 and f"{sat} of {x2.size} input payloads saturated" in warn[0], err
    assert_output_is_oracles(y, x2, spikes, outs)
    rep = json.loads((tmp_path / "rep2" / "report.json").read_text())
    B = x2.shape[0]
    assert list(rep["layers"]) == list(spikes)
    for layer, s in spikes.items():
        assert rep["layers"][layer]["spikes"] == s.sum() / B, layer
        assert rep["layers"][layer]["spikes_per_step"] == list(s.sum((1, 2)) / B), layer
    assert rep["run_nir"]["input_quantization"]["payloads_saturated"] == sat
    # text mode says it too
    rc = main(["run-nir", str(folder), "--input", str(tmp_path / "y_in.npy"),
               "--out", str(tmp_path / "y_text.npy")])
    o, _ = capsys.readouterr()
    assert rc == 0 and f"{sat}/{x2.size} payloads saturated" in o and "(the bundle's)" in o


def test_fixed_point_report_of_a_graph_of_populations_is_deploys(tmp_path, capsys):
    """run-nir --fixed-point --report on the float graph (no bundle) counts as deploy does."""
    graph, x = case("synaptic")
    rc, out, err, _ = deploy(tmp_path, capsys, graph, x)
    assert rc == 0, err
    dep = json.loads(out)
    assert all(v["spikes"] > 0 for v in dep["layers"].values())
    rc = main(["run-nir", str(tmp_path / "net.nir"), "--input", str(tmp_path / "net_x.npy"),
               "--out", str(tmp_path / "y.npy"), "--fixed-point", "--report", str(tmp_path / "r")])
    _, err = capsys.readouterr()
    assert rc == 0, err
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    for k in RUN_KEYS:
        assert rep[k] == dep[k], k


@pytest.mark.lava
def test_bundle_on_lava_equals_reference(tmp_path, capsys):
    graph, x = case("synaptic")
    rc, _, err, folder = deploy(tmp_path, capsys, graph, x)
    assert rc == 0, err
    x2 = x * 2.0
    _, _, spikes, sat, outs = oracle(folder, x2)
    assert sat > 0 and all(s.sum() > 0 for s in spikes.values())
    rc, info, err, y = run_bundle(tmp_path, capsys, folder, x2, "--backend", "lava")
    assert rc == 0, err
    assert info["lava_equals_reference"] is True and info["backend"] == "lava"
    assert_output_is_oracles(y, x2, spikes, outs)
    assert multiprocessing.active_children() == []


@pytest.fixture(scope="module")
def cnn_bundle(tmp_path_factory):
    """One deployed CNN bundle (the folder is copied by each test that changes it)."""
    import nir
    d = tmp_path_factory.mktemp("cnn")
    graph, x = case("cnn")
    nir.write(d / "net.nir", graph)
    np.save(d / "x.npy", x)
    assert main(["deploy", str(d / "net.nir"), "--input", str(d / "x.npy"), "--out",
                 str(d / "bundle"), "--json"]) == 0
    return d / "bundle", x


def one_error_line(rc, err, want_rc, words):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == want_rc and len(lines) == 1 and "Traceback" not in err, err
    assert "error:" in lines[0] and words in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("victim", ["graph.safetensors", "graph.nir"])
def test_corrupted_bundle_file_is_one_line_naming_it(tmp_path, capsys, cnn_bundle, victim):
    import shutil
    src, x = cnn_bundle
    folder = tmp_path / "bundle"
    shutil.copytree(src, folder)
    data = bytearray((folder / victim).read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / victim).write_bytes(bytes(data))
    capsys.readouterr()
    rc, _, err, y = run_bundle(tmp_path, capsys, folder, x, "--report", tmp_path / "rep")
    line = one_error_line(rc, err, 1, str(folder / victim))
    assert "SHA-256" in line
    assert not y.exists() and not (tmp_path / "rep").exists()


def test_bundle_conflicting_arguments_and_non_bundles(tmp_path, capsys, cnn_bundle):
    folder, x = cnn_bundle
    capsys.readouterr()
    for flag, value, words in (("--input-bits", 4, "--input-bits 4 with deploy bundle"),
                               ("--dt", 0.001, "--dt 0.001 with deploy bundle")):
        rc, _, err, y = run_bundle(tmp_path, capsys, folder, x, flag, value)
        one_error_line(rc, err, 2, words)
        assert not y.exists()
    # the bundle's own values are no conflict
    rc, info, err, _ = run_bundle(tmp_path, capsys, folder, x, "--input-bits", 8, "--dt", 1e-4)
    assert rc == 0 and info["quantization"]["input_bits"] == 8, err
    # a folder that is not a deploy bundle
    (tmp_path / "empty").mkdir()
    rc, _, err, y = run_bundle(tmp_path, capsys, tmp_path / "empty", x, name="e")
    one_error_line(rc, err, 1, "not a deploy bundle")
    stft = tmp_path / "stft"
    stft.mkdir()
    (stft / "manifest.json").write_text(json.dumps({"format": "stft-neuro/bundle", "files": {}}))
    rc, _, err, y = run_bundle(tmp_path, capsys, stft, x, name="s")
    one_error_line(rc, err, 1, "stft-neuro simulate --bundle")
    assert not y.exists()
