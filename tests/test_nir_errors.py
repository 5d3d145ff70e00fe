"""Bad input to ``stft-neuro run-nir``: one line ``stft-neuro: error: ...``, a non-zero exit, no
traceback, no output file (partial or temporary), no Lava process left behind."""
from __future__ import annotations

import multiprocessing
import pickle
import subprocess
import sys

import h5py
import nir
import numpy as np
import pytest

from stft_neuro.cli import main


def _lif(n, **over):
    p = dict(tau=np.full(n, 2e-4), r=np.ones(n), v_leak=np.zeros(n), v_threshold=np.ones(n),
             v_reset=np.zeros(n))
    p.update(over)
    return nir.LIF(**p)


def _graph(nodes, edges):
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def good_graph(**lif_over):
    return _graph({"input": nir.Input(input_type=np.array([3])),
                   "fc": nir.Affine(weight=np.ones((4, 3)), bias=np.zeros(4)),
                   "lif": _lif(4, **lif_over), "output": nir.Output(output_type=np.array([4]))},
                  [("input", "fc"), ("fc", "lif"), ("lif", "output")])


def _write(path, graph):
    nir.write(path, graph)
    return path


def _bad_files(tmp):
    """name -> (path, expected words in the message)."""
    cases = {}
    (tmp / "empty.nir").write_bytes(b"")
    cases["empty file"] = (tmp / "empty.nir", "empty")
    good = _write(tmp / "good.nir", good_graph())
    data = good.read_bytes()
    (tmp / "trunc.nir").write_bytes(data[: len(data) // 2])
    cases["truncated HDF5"] = (tmp / "trunc.nir", "not a readable HDF5")
    (tmp / "text.nir").write_text("this is not HDF5\n" * 20)
    cases["not HDF5"] = (tmp / "text.nir", "not a readable HDF5")
    with h5py.File(tmp / "other.h5", "w") as f:
        f["data"] = np.arange(3)
    cases["HDF5, not NIR"] = (tmp / "other.h5", "not a NIR graph")
    cases["NaN parameter"] = (_write(tmp / "nan.nir", good_graph(v_threshold=np.array([1, np.nan, 1, 1]))),
                              "'lif' (LIF): parameter 'v_threshold' has NaN")
    cases["inf parameter"] = (_write(tmp / "inf.nir", good_graph(r=np.array([1, 1, np.inf, 1]))),
                              "'r' has infinite")
    cases["negative tau"] = (_write(tmp / "neg.nir", good_graph(tau=np.array([2e-4, -1e-4, 2e-4, 2e-4]))),
                             "time constant 'tau' must be > 0")
    cases["shape mismatch"] = (_write(tmp / "shape.nir", _graph(
        {"input": nir.Input(input_type=np.array([3])),
         "fc": nir.Affine(weight=np.ones((4, 3)), bias=np.zeros(4)), "lif": _lif(5),
         "output": nir.Output(output_type=np.array([5]))},
        [("input", "fc"), ("fc", "lif"), ("lif", "output")])), "shape mismatch at node 'lif'")
    cases["edge to missing node"] = (_write(tmp / "missing.nir", _graph(
        {"input": nir.Input(input_type=np.array([3])),
         "fc": nir.Affine(weight=np.ones((4, 3)), bias=np.zeros(4)),
         "output": nir.Output(output_type=np.array([4]))},
        [("input", "fc"), ("fc", "ghost"), ("fc", "output")])), "node 'ghost'")
    cases["algebraic loop"] = (_write(tmp / "loop.nir", _graph(
        {"input": nir.Input(input_type=np.array([3])),
         "a": nir.Affine(weight=np.eye(3), bias=np.zeros(3)), "b": nir.Linear(weight=np.eye(3)),
         "output": nir.Output(output_type=np.array([3]))},
        [("input", "a"), ("a", "b"), ("b", "a"), ("b", "output")])), "algebraic loop")
    _write(tmp / "unsup.nir", good_graph())
    with h5py.File(tmp / "unsup.nir", "a") as f:
        del f["node/nodes/lif/type"]
        f["node/nodes/lif/type"] = "AdExLIF"
    cases["unsupported node"] = (tmp / "unsup.nir", "node 'lif': node type 'AdExLIF' is not supported")
    _write(tmp / "nonodes.nir", _graph({}, []))
    cases["no nodes"] = (tmp / "nonodes.nir", "no nodes")
    cases["missing file"] = (tmp / "nope.nir", "no such file")
    return cases


def _run(argv, capsys):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.err


def _assert_clean_failure(rc, err, words, out_dir, code=1):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == code, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("stft-neuro") and "error:" in lines[0], err
    assert words in lines[0], f"expected {words!r} in {lines[0]!r}"
    assert sorted(p.name for p in out_dir.iterdir()) == [], "an output file was left behind"


def test_bad_files_give_one_line(tmp_path, capsys):
    x = tmp_path / "x.npy"
    np.save(x, np.ones((5, 3)))
    cases = _bad_files(tmp_path)
    for name, (path, words) in cases.items():
        out_dir = tmp_path / f"out_{name.replace(' ', '_')}"
        out_dir.mkdir()
        rc, err = _run(["run-nir", str(path), "--input", str(x), "--out", str(out_dir / "y.npy")],
                       capsys)
        _assert_clean_failure(rc, err, words, out_dir)


def _bad_inputs(tmp):
    cases = {}
    np.save(tmp / "wide.npy", np.ones((5, 4)))
    cases["wrong width"] = (tmp / "wide.npy", "does not fit the graph's input: expected (T, 3)")
    np.save(tmp / "rank.npy", np.ones((2, 2, 5, 3)))
    cases["wrong rank"] = (tmp / "rank.npy", "does not fit")
    np.save(tmp / "rank1.npy", np.ones(3))
    cases["rank 1"] = (tmp / "rank1.npy", "does not fit")
    a = np.ones((5, 3))
    a[2, 1] = np.nan
    np.save(tmp / "nan.npy", a)
    cases["NaN input"] = (tmp / "nan.npy", "NaN or infinite")
    a[2, 1] = np.inf
    np.save(tmp / "inf.npy", a)
    cases["inf input"] = (tmp / "inf.npy", "NaN or infinite")
    np.save(tmp / "pickled.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    cases["pickled"] = (tmp / "pickled.npy", "pickled")
    (tmp / "raw.npy").write_bytes(pickle.dumps(np.ones((5, 3))))
    cases["a raw pickle"] = (tmp / "raw.npy", "pickle")
    np.save(tmp / "empty.npy", np.ones((0, 3)))
    cases["no steps"] = (tmp / "empty.npy", "empty input")
    np.savez(tmp / "arch.npz", x=np.ones((5, 3)))
    cases["npz"] = (tmp / "arch.npz", ".npz archive")
    np.save(tmp / "str.npy", np.array(["a", "b", "c"]))
    cases["strings"] = (tmp / "str.npy", "not a real number type")
    return cases


def test_bad_input_arrays_give_one_line(tmp_path, capsys):
    nir_path = _write(tmp_path / "good.nir", good_graph())
    for name, (path, words) in _bad_inputs(tmp_path).items():
        out_dir = tmp_path / f"out_{name.replace(' ', '_')}"
        out_dir.mkdir()
        rc, err = _run(["run-nir", str(nir_path), "--input", str(path), "--out",
                        str(out_dir / "y.npy")], capsys)
        _assert_clean_failure(rc, err, words, out_dir)


def test_missing_output_folder(tmp_path, capsys):
    nir_path = _write(tmp_path / "good.nir", good_graph())
    np.save(tmp_path / "x.npy", np.ones((5, 3)))
    rc, err = _run(["run-nir", str(nir_path), "--input", str(tmp_path / "x.npy"), "--out",
                    str(tmp_path / "no" / "y.npy")], capsys)
    assert rc == 1 and "does not exist" in err and len(err.strip().splitlines()) == 1


def _recurrent_graph():
    return _graph({"input": nir.Input(input_type=np.array([3])),
                   "fc": nir.Affine(weight=np.ones((4, 3)), bias=np.zeros(4)),
                   "lif": _lif(4), "rec": nir.Linear(weight=np.eye(4)),
                   "output": nir.Output(output_type=np.array([4]))},
                  [("input", "fc"), ("fc", "lif"), ("lif", "rec"), ("rec", "lif"), ("lif", "output")])


@pytest.mark.parametrize("make, flag, words, code", [
    (good_graph, ["--fixed-point", "--input-bits", "9"], "--input-bits must be 2..8", 2),
    (lambda: good_graph(v_threshold=np.full(4, -0.2)), ["--backend", "reference"],
     "cannot run in fixed point: node 'lif' (LIF): v_threshold < 0", 1)])
def test_fixed_point_refusals_are_one_line(tmp_path, capsys, make, flag, words, code):
    nir_path = _write(tmp_path / "g.nir", make())
    np.save(tmp_path / "x.npy", np.ones((5, 3)))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc, err = _run(["run-nir", str(nir_path), "--input", str(tmp_path / "x.npy"), "--out",
                    str(out_dir / "y.npy"), *flag], capsys)
    _assert_clean_failure(rc, err, words, out_dir, code=code)


def test_subprocess_exit_status_and_no_traceback(tmp_path):
    """The real entry point, in a fresh interpreter: exit 1, one line on stderr."""
    (tmp_path / "bad.nir").write_text("nope")
    np.save(tmp_path / "x.npy", np.ones((5, 3)))
    r = subprocess.run([sys.executable, "-m", "stft_neuro.cli", "run-nir", str(tmp_path / "bad.nir"),
                        "--input", str(tmp_path / "x.npy"), "--out", str(tmp_path / "y.npy")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "y.npy").exists()


def test_good_graph_writes_output_atomically(tmp_path, capsys):
    nir_path = _write(tmp_path / "good.nir", good_graph())
    np.save(tmp_path / "x.npy", np.full((6, 3), 0.5))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert main(["run-nir", str(nir_path), "--input", str(tmp_path / "x.npy"), "--out",
                 str(out_dir / "y.npy")]) == 0
    assert [p.name for p in out_dir.iterdir()] == ["y.npy"]  # no temporary file left
    y = np.load(out_dir / "y.npy")
    # LIF with tau = 2 dt: v = 0.5 v + 0.5 * 1.5 -> 0.75, 1.125 (spike), 0.75, 1.125 ...
    assert y.shape == (6, 4) and y[:, 0].tolist() == [0, 1, 0, 1, 0, 1]


@pytest.mark.lava
def test_lava_refusals_name_the_node_and_leave_no_process(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.ones((5, 3)))
    li = _graph({"input": nir.Input(input_type=np.array([3])),
                 "fc": nir.Affine(weight=np.ones((4, 3)), bias=np.zeros(4)),
                 "readout": nir.LI(tau=np.full(4, 2e-4), r=np.ones(4), v_leak=np.zeros(4)),
                 "output": nir.Output(output_type=np.array([4]))},
                [("input", "fc"), ("fc", "readout"), ("readout", "output")])
    cases = {"li": (li, "node 'readout' (LI) cannot run on Lava"),
             "negthr": (good_graph(v_threshold=np.full(4, -0.2)), "node 'lif' (LIF): v_threshold < 0")}
    for name, (g, words) in cases.items():
        out_dir = tmp_path / f"out_{name}"
        out_dir.mkdir()
        rc, err = _run(["run-nir", str(_write(tmp_path / f"{name}.nir", g)), "--input",
                        str(tmp_path / "x.npy"), "--out", str(out_dir / "y.npy"), "--backend", "lava"],
                       capsys)
        _assert_clean_failure(rc, err, words, out_dir)
    # and a good run stops its runtime: no Lava child process remains
    assert main(["run-nir", str(_write(tmp_path / "g.nir", good_graph())), "--input",
                 str(tmp_path / "x.npy"), "--out", str(tmp_path / "y.npy"), "--backend", "lava"]) == 0
    assert multiprocessing.active_children() == []
