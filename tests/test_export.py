"""`stft-neuro export`: the bundle, its NIR file, and their exactness on the benchmark's samples."""
from __future__ import annotations

import json

import nir
import numpy as np
import pytest
import torch

from stft_neuro.checkpoint import load_run
from stft_neuro.cli import main
from stft_neuro.converters.nir_out import NIRExportError, float_layers_to_nir, plan_from_nir, plan_to_nir, write_nir
from stft_neuro.data import load_benchmark
from stft_neuro.export.bundle import BundleError, load_bundle
from stft_neuro.qat import calibrate
from stft_neuro.sim.reference import ReferenceSimulator

from test_cli import TINY, _sets, assert_one_line_error, run_cli
from test_lava_equivalence import quantized_plan


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", "--json", "--out", str(run), *_sets(*TINY)]) == 0
    return run


@pytest.fixture(scope="module")
def nir_bundle(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "nir"
    assert main(["export", "--checkpoint", str(trained), "--target", "nir", "--out", str(out), "--json"]) == 0
    return out


def test_plan_round_trips_through_nir_exactly(tmp_path):
    plan = quantized_plan(0, 10)  # full size, from the project's quantizer
    path = write_nir(plan_to_nir(plan), tmp_path / "p.nir")
    graph = nir.read(str(path))  # NIR's own reader, type check on
    back = plan_from_nir(graph)
    assert back.to_dict() == plan.to_dict()
    for a, b in zip(plan.network.layers, back.network.layers):
        assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias_mant, b.bias_mant)
    assert float(np.asarray(graph.metadata["dt"])) == plan.dt
    assert {"affine_1", "delay_1", "lif_1", "spikes_3"} <= set(graph.nodes)
    assert isinstance(graph.nodes["delay_2"], nir.Delay) and isinstance(graph.nodes["lif_2"], nir.CubaLIF)


def test_nir_with_edited_parameters_is_refused(tmp_path):
    plan = quantized_plan(1, 10)
    graph = plan_to_nir(plan)
    graph.nodes["lif_2"].v_threshold = graph.nodes["lif_2"].v_threshold * 1.5
    with pytest.raises(NIRExportError, match="lif_2.v_threshold disagrees"):
        plan_from_nir(graph)
    del graph.metadata["stft_neuro.plan"]
    with pytest.raises(NIRExportError, match="no stft-neuro fixed-point metadata"):
        plan_from_nir(graph)


def test_float_layers_export_type_checks(tmp_path):
    from stft_neuro.hw_targets.loihi2.quantize import FloatLayer
    rng = np.random.default_rng(0)
    layers = [FloatLayer("lif1", rng.normal(size=(6, 5)), rng.normal(size=6), 0.25, 0.1, 1.0),
              FloatLayer("lif2", rng.normal(size=(4, 6)), np.zeros(4), 0.25, 0.1, 1.0)]
    g = nir.read(str(write_nir(float_layers_to_nir(layers), tmp_path / "f.nir")))
    assert np.allclose(g.nodes["affine_1"].weight, layers[0].weight)
    with pytest.raises(NIRExportError, match="non-leaky"):
        float_layers_to_nir([FloatLayer("lif1", np.ones((2, 2)), np.zeros(2), 0.25, 0.0, 1.0)])


def test_bundle_files_manifest_and_checksums(nir_bundle, trained):
    bundle = load_bundle(nir_bundle)
    m = bundle.manifest
    assert set(m["files"]) == {"plan.safetensors", "spiking.nir"}
    assert m["design_rules"]["passed"] and m["bridge"]["timing"]["dense_delay_steps"] == [1, 1]
    names = [p["name"] for p in m["bridge"]["per_step"]["host_to_chip"]]
    assert names == ["payload", "theta"]  # the tiny model has dynamic thresholds
    model, cfg, _ = load_run(trained)
    calibrate(model, load_benchmark(cfg.data).splits["stage_2_train"], torch.device("cpu"))
    plan, _ = model.spiking.deployment_plan()
    assert bundle.plan.to_dict() == plan.to_dict()
    assert plan_from_nir(nir.read(str(bundle.file("spiking.nir")))).to_dict() == plan.to_dict()


def test_exported_artifacts_give_exactly_the_reference_spikes_on_benchmark_samples(nir_bundle, trained):
    """The plan, and the plan read back from the bundle's NIR file, driven by the host on real
    samples of the (synthetic) benchmark with dynamic thresholds: identical spikes and thetas."""
    model, cfg, _ = load_run(trained)
    bench = load_benchmark(cfg.data)
    calibrate(model, bench.splits["stage_2_train"], torch.device("cpu"))
    model.eval()
    split = bench.splits["stage_2_test_unseen"]
    a, v, n = (torch.as_tensor(x) for x in (split.audio, split.visual, split.lengths))
    bundle = load_bundle(nir_bundle)
    from_nir = plan_from_nir(nir.read(str(bundle.file("spiking.nir"))))
    with torch.no_grad():
        model.spiking.set_deploy(True)
        _, rec = model.spiking(a, v, n)
        _, rec_plan = model.spiking(a, v, n, backend=ReferenceSimulator(bundle.plan))
        _, rec_nir = model.spiking(a, v, n, backend=ReferenceSimulator(from_nir))
    assert all(float(s.sum()) > 0 for s in rec.spikes), "every layer must spike"
    for other in (rec_plan, rec_nir):
        assert all(torch.equal(x.float(), y.float()) for x, y in zip(rec.spikes, other.spikes))
        assert torch.equal(rec.theta, other.theta)


def test_export_refuses_an_existing_folder_and_leaves_nothing_on_failure(capsys, trained, tmp_path, monkeypatch):
    out = tmp_path / "b"
    out.mkdir()
    code, _, err = run_cli(capsys, "export", "--checkpoint", str(trained), "--target", "nir", "--out", str(out))
    assert_one_line_error(code, err, "already exists")
    # a fault inside the export (injected): no bundle and no partial folder remain
    import stft_neuro.converters.nir_out as nir_out

    def broken(*_a, **_k):
        raise OSError("disk full (injected)")
    monkeypatch.setattr(nir_out, "write_nir", broken)
    with pytest.raises(OSError):
        main(["export", "--checkpoint", str(trained), "--target", "nir", "--out", str(tmp_path / "c")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.parametrize("damage, fragment", [("missing", "spiking.nir is missing"),
                                              ("corrupt", "corrupted"), ("version", "version"),
                                              ("no_manifest", "not a bundle")])
def test_damaged_bundles_are_one_clear_error(nir_bundle, tmp_path, damage, fragment):
    import shutil
    b = tmp_path / "b"
    shutil.copytree(nir_bundle, b)
    if damage == "missing":
        (b / "spiking.nir").unlink()
    elif damage == "corrupt":
        raw = bytearray((b / "plan.safetensors").read_bytes())
        raw[-1] ^= 0xFF
        (b / "plan.safetensors").write_bytes(bytes(raw))
    elif damage == "version":
        m = json.loads((b / "manifest.json").read_text())
        m["version"] = 999
        (b / "manifest.json").write_text(json.dumps(m))
    else:
        (b / "manifest.json").unlink()
    with pytest.raises(BundleError) as info:
        load_bundle(b)
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.lava
def test_netx_bundle_equals_reference_on_benchmark_samples(trained, tmp_path):
    """`export --target lava` of a netx-compatible QAT run: lava-dl's own netx Network, loaded
    from the bundle, gives exactly the reference simulator's spikes on real benchmark samples
    (static thresholds: netx has no threshold-modulation port)."""
    from stft_neuro.converters.netx_out import run_netx
    qat = tmp_path / "qat"
    assert main(["train", "--qat", "--from", str(trained), "--out", str(qat), "--json",
                 "--set", "train.epochs=1", "--set", "spiking.netx_compatible=true"]) == 0
    out = tmp_path / "bundle"
    assert main(["export", "--checkpoint", str(qat), "--target", "lava", "--out", str(out), "--json"]) == 0
    bundle = load_bundle(out)
    model, cfg, _ = load_run(qat)
    split = load_benchmark(cfg.data).splits["stage_2_test_unseen"]
    a, v, n = (torch.as_tensor(x[:3]) for x in (split.audio, split.visual, split.lengths))
    with torch.no_grad():
        x, _ = model.spiking.encode(a, v, n)
        payloads = bundle.plan.encode_input(x)                        # (T, B, n_in)
    T = payloads.shape[0]
    extra = bundle.plan.num_layers                                    # see the last inputs through
    xin = torch.cat([payloads, payloads.new_zeros(extra, *payloads.shape[1:])])
    ref, _ = ReferenceSimulator(bundle.plan).run(xin)
    lava = run_netx(bundle.file("spiking_netx.h5"), xin.numpy())
    assert ref[-1].sum() > 0, "the last layer must spike"
    assert np.array_equal(lava, ref[-1].numpy())
    assert T == bundle.plan.num_steps
