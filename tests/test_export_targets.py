"""Issue 18: every run exports to every target, and the hybrid run goes through the exported files.

- ``export --target lava|nir|onnx|all`` succeeds on a default-trained run (biases, dynamic
  thresholds, default quantization, which netx cannot carry) and on its QAT run: the netx file then
  carries the plan derived for netx (``plan_netx.safetensors``), the manifest says which plan each
  file carries and what the derived plan costs (weights zeroed, thresholds coarser, HM of both).
- ``load_bundle`` refuses a bundle whose NIR, netx or ONNX file was edited (checksums recomputed)
  in one line naming the file and the field; ``simulate`` on it leaves no output.
- ``simulate --bundle``: the chip side from the NIR file == from plan.safetensors == reference,
  on Lava, records identical; ``--chip-from netx`` runs the netx file through lava-dl's own
  ``netx.hdf5.Network`` (static thresholds) identically to the reference simulator, and refuses a
  run with dynamic thresholds in one line.
- At the real layer sizes (512-256-256-128) the exported netx file runs bit-exactly against the
  reference simulator on benchmark samples, every layer spiking.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stft_neuro.cli import main
from stft_neuro.export.bundle import BundleError, load_bundle
from stft_neuro.export.netx_plan import netx_problem, plan_difference
from stft_neuro.hw_targets.loihi2.plan import DeploymentPlan

from test_cli import TINY, _sets, assert_one_line_error, run_cli

RECORD_KEYS = {"spikes_1", "spikes_2", "theta", "payloads", "labels", "pred", "sample_index", "split_name"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run trained with the defaults (tiny sizes) and its 1-epoch QAT run, as `make demo` makes."""
    root = tmp_path_factory.mktemp("runs18")
    run, qat = root / "run", root / "run" / "qat"
    assert main(["train", "--json", "--out", str(run), *_sets(*TINY)]) == 0
    assert main(["train", "--qat", "--from", str(run), "--out", str(qat), "--json",
                 "--set", "train.epochs=1"]) == 0
    return run, qat


class _Bundles(dict):
    """``bundles[run, target]``: the bundle ``export --target target`` writes from the default run
    (``"run"``) or its QAT (``"qat"``), exported on first use (each ONNX export takes seconds)."""

    def __init__(self, runs, root):
        super().__init__()
        self.runs, self.root = dict(zip(("run", "qat"), runs)), root

    def __missing__(self, key):
        name, target = key
        b = self.root / f"{name}-{target}"
        assert main(["export", "--json", "--checkpoint", str(self.runs[name]), "--target", target,
                     "--out", str(b)]) == 0
        self[key] = b
        return b


@pytest.fixture(scope="module")
def bundles(runs, tmp_path_factory):
    return _Bundles(runs, tmp_path_factory.mktemp("bundles18"))


# the ONNX-only export (seconds each) is also inside "all": its own case runs with `make test-slow`
@pytest.mark.parametrize("target", ["lava", "nir", pytest.param("onnx", marks=pytest.mark.slow), "all"])
@pytest.mark.parametrize("name", ["run", "qat"])
def test_every_target_exports_from_default_runs_and_says_which_plan_each_file_carries(bundles, name, target):
    path = bundles[name, target]
    b = load_bundle(path)  # checksums and consistency of every file
    m = b.manifest
    # the default quantization is what netx cannot carry: export derived the netx plan
    assert netx_problem(b.plan) is not None, f"{name}: the default plan became netx-representable"
    carried = {f: p for p, info in m["plans"].items() for f in info["carried_by"]}
    if target in ("lava", "all"):
        assert carried["spiking_netx.h5"] == "plan_netx.safetensors"
        assert netx_problem(b.netx_plan) is None
        cost = m["netx_cost"]
        assert cost["static"]["layers"][0]["name"] == "lif1"
        assert set(cost["hm"]) == {"run_plan", "netx_plan", "hm_difference"}
        assert cost["hm"]["hm_difference"] == pytest.approx(
            cost["hm"]["netx_plan"]["HM"] - cost["hm"]["run_plan"]["HM"])
        # the same input scale, sizes and timing; only the integers differ
        assert plan_difference(b.plan, b.netx_plan) is not None
        for key in ("input_scale", "sizes", "num_steps", "dt"):
            assert b.plan.to_dict()[key] == b.netx_plan.to_dict()[key]
    else:
        assert "plan_netx.safetensors" not in m["files"] and m["netx_cost"] is None
    if target in ("nir", "all"):
        assert carried["spiking.nir"] == "plan.safetensors"
    if target in ("onnx", "all"):
        assert carried["host_encoder.onnx"] == "plan.safetensors"


def test_a_netx_compatible_run_needs_no_derived_plan(runs, tmp_path):
    run, _ = runs
    qat = tmp_path / "qatnx"
    assert main(["train", "--qat", "--from", str(run), "--out", str(qat), "--json",
                 "--set", "train.epochs=1", "--set", "spiking.netx_compatible=true"]) == 0
    out = tmp_path / "b"
    assert main(["export", "--json", "--checkpoint", str(qat), "--target", "lava", "--out", str(out)]) == 0
    m = load_bundle(out).manifest
    assert "plan_netx.safetensors" not in m["files"] and m["netx_cost"] is None
    assert m["plans"]["plan.safetensors"]["carried_by"] == ["spiking_netx.h5"]


# ----------------------------------------------------------------------------------------------
# Edited files are refused in one line naming the file and the field
# ----------------------------------------------------------------------------------------------

def _rechecksum(bundle, name):
    m = json.loads((bundle / "manifest.json").read_text())
    m["files"][name]["sha256"] = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(m))


def _edit_nir_weight(bundle):
    import nir
    g = nir.read(str(bundle / "spiking.nir"))
    exp = int(np.asarray(g.nodes["lif_2"].metadata["stft_neuro.weight_exp"]))
    w = np.array(g.nodes["affine_2"].weight)
    w[1, 2] += 2.0 ** (exp + 6) * 2  # still integers << (weight_exp + 6): only the plan check sees it
    g.nodes["affine_2"].weight = w
    nir.write(str(bundle / "spiking.nir"), g)


def _edit_nir_threshold(bundle):
    import nir
    g = nir.read(str(bundle / "spiking.nir"))  # metadata and float parameter edited consistently
    lif = g.nodes["lif_1"]
    vth = int(np.asarray(lif.metadata["stft_neuro.vth"])) + 1
    lif.metadata["stft_neuro.vth"] = vth
    lif.v_threshold = np.full_like(np.asarray(lif.v_threshold), float(vth << 6))
    nir.write(str(bundle / "spiking.nir"), g)


def _edit_netx_threshold(bundle):
    import h5py
    with h5py.File(bundle / "spiking_netx.h5", "r+") as f:
        d = f["layer/1/neuron/vThMant"]
        d[()] = int(d[()]) + 3


def _edit_netx_weight(bundle):
    import h5py
    with h5py.File(bundle / "spiking_netx.h5", "r+") as f:
        w = f["layer/0/weight"][()]
        w[0, 0] += 1
        f["layer/0/weight"][...] = w


def _edit_onnx_input_scale(bundle):
    import onnx
    from onnx import numpy_helper
    plan = DeploymentPlan.load(bundle / "plan.safetensors")
    m = onnx.load(str(bundle / "host_encoder.onnx"))
    for init in m.graph.initializer:
        a = numpy_helper.to_array(init)
        if a.dtype == np.float64 and a.size == 1 and float(a.ravel()[0]) == plan.input_scale:
            init.CopyFrom(numpy_helper.from_array(a * 1.01, init.name))
            break
    else:
        raise AssertionError("the encoder has no input_scale constant to edit")
    onnx.save(m, str(bundle / "host_encoder.onnx"))


@pytest.mark.parametrize("edit, name, fragment", [
    (_edit_nir_weight, "spiking.nir", "layer 1 (lif2) weight at (1, 2)"),
    (_edit_nir_threshold, "spiking.nir", "layer 0 (lif1) vth"),
    (_edit_netx_threshold, "spiking_netx.h5", "/layer/1/neuron/vThMant"),
    (_edit_netx_weight, "spiking_netx.h5", "/layer/0/weight at (0, 0)"),
    (_edit_onnx_input_scale, "host_encoder.onnx", "input_scale"),
], ids=["nir-weight", "nir-threshold", "netx-threshold", "netx-weight", "onnx-input-scale"])
def test_an_edited_file_with_recomputed_checksums_is_refused_in_one_line(bundles, runs, tmp_path, capsys,
                                                                         edit, name, fragment):
    b = tmp_path / "b"
    shutil.copytree(bundles["qat", "all"], b)
    edit(b)
    _rechecksum(b, name)
    with pytest.raises(BundleError) as info:
        load_bundle(b)
    msg = str(info.value)
    assert "\n" not in msg and name in msg and fragment in msg, msg
    code, _, err = run_cli(capsys, "simulate", "--bundle", str(b), "--checkpoint", str(runs[1]),
                           "--backend", "reference", "--out", str(tmp_path / "sim"))
    assert_one_line_error(code, err, name)
    assert not (tmp_path / "sim").exists()


# ----------------------------------------------------------------------------------------------
# The hybrid run goes through the exported files
# ----------------------------------------------------------------------------------------------

def _simulate(tmp_path, *args) -> tuple[dict, dict]:
    out = tmp_path / ("sim_" + "_".join(a.strip("-").replace("/", "_")[-12:] for a in args))
    assert main(["simulate", "--json", "--out", str(out), *args]) == 0
    with np.load(out / "records.npz") as z:
        rec = {k: z[k] for k in z.files}
    return rec, {**json.loads((out / "results.json").read_text()), "_out": str(out)}


@pytest.mark.lava
def test_lava_hybrid_from_the_nir_file_equals_from_the_plan_file_equals_reference(bundles, runs, tmp_path):
    bundle, qat = bundles["qat", "all"], runs[1]
    common = ["--bundle", str(bundle), "--checkpoint", str(qat)]
    ref, res_ref = _simulate(tmp_path, *common, "--backend", "reference", "--chip-from", "plan")
    assert set(ref) == RECORD_KEYS and ref["spikes_1"].any() and ref["spikes_2"].any()
    assert len(np.unique(ref["theta"])) > 2  # dynamic thresholds moved
    nir_lava, res_nir = _simulate(tmp_path, *common, "--backend", "lava")  # default: the NIR file
    plan_lava, res_plan = _simulate(tmp_path, *common, "--backend", "lava", "--chip-from", "plan")
    assert res_nir["chip_from"] == "nir" and res_nir["chip_file"] == "spiking.nir"
    assert res_plan["chip_file"] == "plan.safetensors" and res_ref["chip_file"] == "plan.safetensors"
    for other in (nir_lava, plan_lava):
        for key in RECORD_KEYS:
            assert np.array_equal(other[key], ref[key]), key
    assert res_nir["metrics"] == res_plan["metrics"] == res_ref["metrics"]


@pytest.fixture(scope="module")
def static_bundle(tmp_path_factory):
    """A default run except static thresholds (what netx can carry), exported with --target all."""
    root = tmp_path_factory.mktemp("static18")
    run, bundle = root / "run", root / "bundle"
    assert main(["train", "--json", "--out", str(run), *_sets(*TINY, "spiking.dynamic_threshold=false")]) == 0
    assert main(["export", "--json", "--checkpoint", str(run), "--target", "all", "--out", str(bundle)]) == 0
    return run, bundle


@pytest.mark.lava
def test_chip_from_netx_runs_the_netx_file_in_netx_network_like_the_reference(static_bundle, tmp_path):
    run, bundle = static_bundle
    args = ["--bundle", str(bundle), "--host", "onnx", "--samples", "2", "--chip-from", "netx"]
    ref, res_ref = _simulate(tmp_path, *args, "--backend", "reference")
    lava, res_lava = _simulate(tmp_path, *args, "--backend", "lava")
    assert res_lava["chip_file"] == "spiking_netx.h5" and "theta" not in ref
    assert ref["spikes_1"].any() and ref["spikes_2"].any(), "every layer must spike"
    for key in ref:
        assert np.array_equal(lava[key], ref[key]), key
    # the netx file carries the plan derived for netx, which differs from the run's (and from the
    # ONNX host's threshold scales, unused without cue graphs): the host converts with it
    b = load_bundle(bundle)
    assert "plan_netx.safetensors" in b.manifest["files"]
    assert plan_difference(b.plan, b.netx_plan) is not None
    for res in (res_ref, res_lava):
        ran = DeploymentPlan.load(Path(res["_out"]) / "plan.safetensors")
        assert plan_difference(b.netx_plan, ran) is None


def test_chip_from_netx_refuses_dynamic_thresholds_and_other_bad_input(bundles, runs, tmp_path, capsys):
    bundle = bundles["qat", "all"]
    cases = [(["--chip-from", "netx", "--backend", "reference"], "dynamic thresholds"),
             (["--chip-from", "netx", "--backend", "torch"], "--chip-from")]
    for extra, fragment in cases:
        code, _, err = run_cli(capsys, "simulate", "--bundle", str(bundle), "--checkpoint", str(runs[1]),
                               "--out", str(tmp_path / "s"), *extra)
        assert_one_line_error(code, err, fragment)
        assert not (tmp_path / "s").exists()
    code, _, err = run_cli(capsys, "simulate", "--bundle", str(bundles["qat", "lava"]), "--checkpoint",
                           str(runs[1]), "--backend", "reference", "--chip-from", "nir", "--out",
                           str(tmp_path / "s"))
    assert_one_line_error(code, err, "has no spiking.nir")
    code, _, err = run_cli(capsys, "simulate", "--checkpoint", str(runs[1]), "--backend", "reference",
                           "--chip-from", "nir", "--out", str(tmp_path / "s"))
    assert_one_line_error(code, err, "--bundle")


# ----------------------------------------------------------------------------------------------
# The netx file at the real layer sizes, on benchmark samples
# ----------------------------------------------------------------------------------------------

REAL_SPIKING = ["spiking.input_dim=512", "spiking.hidden=256,256,128", "spiking.num_steps=10"]


@pytest.mark.lava
def test_exported_netx_file_is_bit_exact_at_the_real_size_on_benchmark_samples(tmp_path):
    """A default-quantized run with the STFT's layer sizes (512-256-256-128, T = 10): `export
    --target lava` derives the netx plan, and lava-dl's netx Network, loaded from the bundle, gives
    every layer's spikes of the reference simulator on the benchmark's test samples."""
    from stft_neuro.checkpoint import load_run
    from stft_neuro.converters.netx_out import NetxBackend
    from stft_neuro.data import load_benchmark
    from stft_neuro.sim.reference import ReferenceSimulator
    tiny = [o for o in TINY if not o.startswith(("spiking.", "train.epochs"))]
    run, out = tmp_path / "run", tmp_path / "bundle"
    assert main(["train", "--json", "--out", str(run), *_sets(*tiny, *REAL_SPIKING, "train.epochs=1")]) == 0
    assert main(["export", "--json", "--checkpoint", str(run), "--target", "lava", "--out", str(out)]) == 0
    b = load_bundle(out)
    assert b.plan.sizes == (512, 256, 256, 128) and "plan_netx.safetensors" in b.manifest["files"]
    model, cfg, _ = load_run(run)
    split = load_benchmark(cfg.data).splits["stage_2_test_unseen"]
    a, v, n = (torch.as_tensor(x[:2]) for x in (split.audio, split.visual, split.lengths))
    plan = b.netx_plan
    with torch.no_grad():
        x = plan.encode_input(model.spiking.encode(a, v, n)[0])
    x = torch.cat([x, x.new_zeros(plan.num_layers, *x.shape[1:])])  # see the last inputs through
    ref, _ = ReferenceSimulator(plan).run(x)
    got, _ = NetxBackend(b.file("spiking_netx.h5"), plan).run(x)
    for l, (r, g) in enumerate(zip(ref, got)):
        assert float(r.sum()) > 0, f"layer {l + 1} must spike (the regime was not reached)"
        assert torch.equal(r.float(), g.float()), f"layer {l + 1} differs"


def test_what_even_the_derived_plan_cannot_carry_is_one_line_and_leaves_nothing(runs, tmp_path, capsys,
                                                                                 monkeypatch):
    """A derived plan netx still cannot carry (here: layer 1's weights all rounded to 0, injected)
    ends the export in one line naming the layer and parameter; nothing is written."""
    import dataclasses

    from stft_neuro.export import netx_plan as NP
    from stft_neuro.hw_targets.loihi2.network import FixedPointNetwork
    real = NP.derive_netx_plan

    def zeroed(chip):
        plan, report = real(chip)
        first = dataclasses.replace(plan.network.layers[0], weight=np.zeros_like(plan.network.layers[0].weight))
        net = FixedPointNetwork((first, *plan.network.layers[1:]))
        return dataclasses.replace(plan, network=net), report
    monkeypatch.setattr(NP, "derive_netx_plan", zeroed)
    out = tmp_path / "b"
    code, _, err = run_cli(capsys, "export", "--checkpoint", str(runs[1]), "--target", "lava", "--out", str(out))
    assert_one_line_error(code, err, "even the plan derived for netx cannot be written: netx cannot carry "
                                     "layer 0 (lif1): weight")
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.lava
def test_the_demo_fails_when_lava_differs_from_the_reference(capsys, tmp_path, monkeypatch):
    """`make demo` enforces Lava == reference: a Lava session that flips one spike (injected) ends
    the demo with exit status 1 and one line naming the records that differ."""
    from stft_neuro.sim.lava_session import LavaSession
    real_step = LavaSession.step

    def flipped(self, x_t, theta_t, state):
        spikes, state = real_step(self, x_t, theta_t, state)
        first = spikes[0].clone()
        first[0, 0] = 1 - first[0, 0]
        return (first, *spikes[1:]), state
    monkeypatch.setattr(LavaSession, "step", flipped)
    code, out, err = run_cli(capsys, "demo", "--out", str(tmp_path / "demo"), *_sets(*TINY))
    errors = [ln for ln in err.splitlines() if "error" in ln]  # stderr also carries training progress
    assert code == 1 and len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith("stft-neuro: error: demo: the Lava hybrid run differs from the reference "
                                "simulator's in spikes_1"), errors[0]
    assert "Lava == reference" not in out
