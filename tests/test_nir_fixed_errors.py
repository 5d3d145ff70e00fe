"""Every path of ``stft-neuro run-nir``: each backend (torch, Lava floating_pt, and the fixed-point
reference, torch definition and Lava fixed_pt) on each kind of graph (a Sinabs-style CNN, snnTorch
Leaky / Synaptic / RLeaky, an LI readout (run in fixed point; refused on Lava floating_pt), an LI
feeding another layer, a reset Lava cannot do, a negative threshold) and with bad
inputs either writes the output in the input's layout or ends in one line ``stft-neuro: error: ...``
naming the node and rule, exit 1, no output file (partial or temporary), no traceback.

The Sinabs graph is built with ``nir`` nodes exactly as Sinabs writes them (Sinabs is not installed
here): ``tests/test_nir_graphs.sinabs_graph``. The snnTorch graphs are written by snnTorch's own
``export_to_nir`` (``tests/test_nir_snntorch.snntorch_case``).
"""
from __future__ import annotations

import multiprocessing

import nir
import numpy as np
import pytest

from stft_neuro.cli import main

from test_nir_errors import _graph, _lif, good_graph
from test_nir_graphs import sinabs_graph
from test_nir_snntorch import snntorch_case

MODES = {"torch": ["--backend", "torch"], "reference": ["--backend", "reference"],
         "torch-fixed": ["--backend", "torch", "--fixed-point"],
         "lava": ["--backend", "lava"], "lava-fixed": ["--backend", "lava", "--fixed-point"]}
FIXED = ("reference", "torch-fixed", "lava-fixed")


def _li():
    return _graph({"input": nir.Input(input_type=np.array([3])),
                   "fc": nir.Affine(weight=np.ones((4, 3)), bias=np.zeros(4)),
                   "readout": nir.LI(tau=np.full(4, 2e-4), r=np.ones(4), v_leak=np.zeros(4)),
                   "output": nir.Output(output_type=np.array([4]))},
                  [("input", "fc"), ("fc", "readout"), ("readout", "output")])


def _li_hidden():
    """An LI in the middle (a layer reads its v): Lava runs LI as a readout only: refused."""
    return _graph({"input": nir.Input(input_type=np.array([3])),
                   "fc": nir.Affine(weight=np.ones((4, 3)), bias=np.zeros(4)),
                   "readout": nir.LI(tau=np.full(4, 2e-4), r=np.ones(4), v_leak=np.zeros(4)),
                   "fc2": nir.Affine(weight=np.ones((4, 4)), bias=np.zeros(4)),
                   "lif": _lif(4), "output": nir.Output(output_type=np.array([4]))},
                  [("input", "fc"), ("fc", "readout"), ("readout", "fc2"), ("fc2", "lif"),
                   ("lif", "output")])


def graphs():
    """name -> (nir graph, input (B, T, *in) or (T, *in), output shape per step)."""
    g = {"sinabs": (sinabs_graph(), np.random.default_rng(0).random((2, 6, 2, 8, 8)) * 2, (10,))}
    for kind in ("leaky", "synaptic", "rleaky"):
        _, x, _, gr = snntorch_case(kind, B=2, T=8)
        g[kind] = (gr, x.numpy(), (10,))
    g["li"] = (_li(), np.ones((5, 3)), (4,))
    g["li_hidden"] = (_li_hidden(), np.ones((5, 3)), (4,))
    g["vreset"] = (good_graph(v_reset=np.full(4, 0.2)), np.ones((5, 3)), (4,))
    g["negthr"] = (good_graph(v_threshold=np.full(4, -0.2)), np.ones((5, 3)), (4,))
    return g


#: what must happen: None = the output is written; a string = the one-line error contains it.
LAVA_LI = "node 'readout' (LI) cannot run on Lava floating_pt"
EXPECT = {("li", "lava"): LAVA_LI} | {
    ("li_hidden", m): "node 'readout' (LI) feeds node 'lif'" for m in
    ("reference", "torch-fixed", "lava", "lava-fixed")} | {
    ("vreset", m): None for m in  # v_reset != 0 runs (tests/test_nir_v_reset.py)
    ("reference", "torch-fixed", "lava", "lava-fixed")} | {
    ("negthr", m): "node 'lif' (LIF): v_threshold < 0" for m in
    ("reference", "torch-fixed", "lava", "lava-fixed")} | {
    # snnTorch with random per-neuron betas: one (du, dv, vth) profile per neuron, 16 > 8
    (k, m): "profiles after quantization; rule max_profiles_per_layer"
    for k in ("leaky", "synaptic", "rleaky") for m in FIXED}


def _one_line_or_output(rc, err, out_path, want, shape):
    lines = [ln for ln in err.splitlines() if ln.strip() and "warning:" not in ln]
    assert "Traceback" not in err, err
    if want is None:
        assert rc == 0, err
        assert out_path.is_file() and np.load(out_path).shape == shape
    else:
        assert rc == 1 and len(lines) == 1, err
        assert lines[0].startswith("stft-neuro") and want in lines[0], lines[0]
        assert not out_path.exists()
    assert [p.name for p in out_path.parent.iterdir()] in ([], [out_path.name]), "temporary file left"


def _run_all(tmp_path, capsys, modes):
    for name, (g, x, out_shape) in graphs().items():
        path = tmp_path / f"{name}.nir"
        nir.write(path, g)
        np.save(tmp_path / f"{name}_x.npy", x)
        shape = x.shape[:-len(g.nodes["input"].input_type["input"])] + out_shape
        for mode in modes:
            out = tmp_path / f"out_{name}_{mode}" / "y.npy"
            out.parent.mkdir()
            rc = main(["run-nir", str(path), "--input", str(tmp_path / f"{name}_x.npy"), "--out",
                       str(out), *MODES[mode]])
            _, err = capsys.readouterr()
            _one_line_or_output(rc, err, out, EXPECT.get((name, mode)), shape)


def test_every_graph_kind_on_every_torch_and_reference_path(tmp_path, capsys):
    _run_all(tmp_path, capsys, ("torch", "reference", "torch-fixed"))


@pytest.mark.lava
@pytest.mark.slow
def test_every_graph_kind_on_every_lava_path(tmp_path, capsys):
    _run_all(tmp_path, capsys, ("lava", "lava-fixed"))
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("mode", ["torch", "reference"])
def test_bad_inputs_on_a_cnn_one_line(tmp_path, capsys, mode):
    g = sinabs_graph()
    nir.write(tmp_path / "cnn.nir", g)
    bad = {"flat input": (np.ones((5, 128)), "does not fit the graph's input: expected (T, 2, 8, 8)"),
           "NaN": (np.full((5, 2, 8, 8), np.nan), "NaN or infinite"),
           "channels last": (np.ones((5, 8, 8, 2)), "does not fit")}
    for name, (x, words) in bad.items():
        np.save(tmp_path / "x.npy", x)
        out = tmp_path / f"out_{name.replace(' ', '_')}" / "y.npy"
        out.parent.mkdir()
        rc = main(["run-nir", str(tmp_path / "cnn.nir"), "--input", str(tmp_path / "x.npy"),
                   "--out", str(out), *MODES[mode]])
        _one_line_or_output(rc, capsys.readouterr().err, out, words, None)


def test_bad_constants_leave_no_output(tmp_path, capsys):
    """--report with a missing constants file fails before the output is written."""
    nir.write(tmp_path / "g.nir", good_graph())
    np.save(tmp_path / "x.npy", np.ones((5, 3)))
    out = tmp_path / "out" / "y.npy"
    out.parent.mkdir()
    rc = main(["run-nir", str(tmp_path / "g.nir"), "--input", str(tmp_path / "x.npy"), "--out",
               str(out), "--report", str(tmp_path / "rep"), "--constants", str(tmp_path / "no.toml")])
    _one_line_or_output(rc, capsys.readouterr().err, out, "no.toml", None)


def test_cnn_in_fixed_point_same_on_reference_and_torch_definition(tmp_path, capsys):
    """The Sinabs CNN (Conv2d/IF/SumPool2d/Flatten/Affine/IF) in fixed point: its input
    ``(B, T, 2, 8, 8)`` is flattened into the plan, its output comes back ``(B, T, 10)``."""
    nir.write(tmp_path / "cnn.nir", sinabs_graph(1))
    x = np.random.default_rng(1).random((3, 12, 2, 8, 8)) * 2
    np.save(tmp_path / "x.npy", x)
    ys = {}
    for mode in ("reference", "torch-fixed"):
        assert main(["run-nir", str(tmp_path / "cnn.nir"), "--input", str(tmp_path / "x.npy"),
                     "--out", str(tmp_path / f"{mode}.npy"), *MODES[mode]]) == 0
        ys[mode] = np.load(tmp_path / f"{mode}.npy")
    assert ys["reference"].shape == (3, 12, 10) and ys["reference"].sum() > 0
    assert np.array_equal(ys["reference"], ys["torch-fixed"])
