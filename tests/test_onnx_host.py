"""The host side as ONNX graphs (stft_neuro/export/onnx_host.py) against the torch host.

Every graph runs in onnxruntime at batch sizes and sequence lengths other than the ones it was
traced with (B = 3, S = 7) and must give what the torch host gives: float outputs within 1e-5
(max abs diff), integer outputs (payloads, thetas) equal, except that a value within float32
rounding of a .5 tie may round the other way (at most 1 LSB; counted and bounded). The closed
loop (ONNX encoder -> per step ReferenceSimulator(plan).step with the ONNX cue -> ONNX readout)
must predict the same classes as the torch host, except on samples whose spike record diverged
because of such a tie (counted and bounded). Tiny models keep this fast; the default model size
is in one test marked slow (its export alone takes longer than the 20 s a fast test may).
"""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from stft_neuro import config
from stft_neuro.errors import UserError
from stft_neuro.export import onnx_host
from stft_neuro.export.onnx_host import (ALL_FILES, CUE0_FILE, CUE_FILE, ENCODER_FILE, READOUT_FILE,
                                         OnnxHost, OnnxHostError, compare_with_torch, export_host_onnx)
from stft_neuro.model.stft import STFT
from stft_neuro.sim.reference import ReferenceSimulator

# The model part of tests/test_cli.py's TINY config.
TINY = ["spiking.input_dim=16", "spiking.hidden=12,8", "spiking.num_steps=4", "transformer.dim=16",
        "transformer.heads=2", "transformer.num_latents=2", "fusion.width=16", "fusion.ranks=3,5",
        "fusion.embed_dim=8"]
DA, DV = 24, 20
TOL = 1e-5


def samples(seed: int, batch: int, seconds: int, da: int = DA, dv: int = DV):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, seconds, da, generator=g), torch.randn(batch, seconds, dv, generator=g),
            torch.randint(1, seconds + 1, (batch,), generator=g))


def make_model(*overrides: str, seed: int = 0, da: int = DA, dv: int = DV, base=TINY,
               gain: float = 3.0) -> STFT:
    """A seeded STFT; chip weights scaled by ``gain`` so that every layer spikes (a test of
    spikes and thresholds that never fire could not fail); input scale calibrated on data."""
    cfg = config.load(overrides=[*base, *overrides])
    torch.manual_seed(seed)
    model = STFT(cfg, da, dv).eval()
    if model.spiking is not None:
        with torch.no_grad():
            for w in model.spiking.chip.weights:
                w.mul_(gain)
            for b in model.spiking.chip.biases:
                b.normal_(0.0, 0.05)
        model.spiking.calibrate_input(*samples(seed + 100, 32, 9, da, dv))
    return model


def class_embeddings(model: STFT, seed: int = 5, classes: int = 12) -> torch.Tensor:
    with torch.no_grad():
        return model.embed_classes(torch.randn(classes, 300, generator=torch.Generator().manual_seed(seed)))


def check_against_torch(model: STFT, host: OnnxHost, batch: int, seconds: int, seed: int) -> dict:
    """Compare on one batch and assert the bounds of the module docstring; return the counts."""
    a, v, n = samples(seed, batch, seconds)
    res = compare_with_torch(model, host, a, v, n, class_embeddings=class_embeddings(model))
    assert res["readout"]["max_abs_diff"] <= TOL, res
    if model.spiking is None:
        assert res["closed_loop"]["joint_max_abs_diff"] <= TOL, res
        assert res["closed_loop"]["prediction_mismatches"] == 0, res
        return res
    assert res["g"]["max_abs_diff"] <= TOL, res
    integer = host.fixed_point
    for key in ("payloads", "cue0", "cue") if integer else ("currents", "cue0", "cue"):
        if key not in res:
            continue
        if integer:  # off by at most one LSB, and only at rare float32 rounding ties
            assert res[key]["max_abs_diff"] <= 1.0, (key, res)
            assert res[key]["mismatches"] <= max(1, res[key]["total"] // 100), (key, res)
        else:
            assert res[key]["max_abs_diff"] <= TOL, (key, res)
    cl = res["closed_loop"]
    if cl["samples_diverged"] == 0:
        assert cl["joint_max_abs_diff"] <= TOL, res
    assert cl["prediction_mismatches"] <= cl["samples_diverged"], res
    if not integer and "theta_max_abs_diff" in cl:
        assert cl["theta_max_abs_diff"] <= TOL, res
    return res


def spike_activity(model: STFT, backend, batch: int = 8, seconds: int = 6, seed: int = 11) -> list[float]:
    """Firing fraction of every chip layer on a few samples."""
    with torch.no_grad():
        out = model(*samples(seed, batch, seconds, model.audio_dim, model.visual_dim), backend=backend)
    return [float(s.mean()) for s in out["spikes"]]


# ------------------------------------------------------------------ fixtures: one export each
@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    """Loihi fixed point, dynamic thresholds, GLP and TSF: all four graphs."""
    model = make_model()
    plan = model.spiking.deployment_plan()[0]
    out = tmp_path_factory.mktemp("onnx_fixed")
    desc = export_host_onnx(model, plan, out)
    return model, plan, out, desc, OnnxHost(out)


@pytest.fixture(scope="module")
def static(tmp_path_factory):
    """Fixed point, static thresholds, no GLP, no TSF: encoder and readout only."""
    model = make_model("spiking.dynamic_threshold=false", "spiking.glp=false", "spiking.tsf=false", seed=1)
    plan = model.spiking.deployment_plan()[0]
    out = tmp_path_factory.mktemp("onnx_static")
    desc = export_host_onnx(model, plan, out)
    return model, plan, out, desc, OnnxHost(out)


# ------------------------------------------------------------------ what is written
def test_export_writes_described_single_file_graphs(fixed):
    model, plan, out, desc, _ = fixed
    assert sorted(p.name for p in out.iterdir()) == sorted(ALL_FILES)  # no temp files, no .data
    json.dumps(desc)  # goes into the bundle manifest as it is
    T, n_in, sizes = plan.num_steps, plan.n_in, plan.sizes
    assert desc["units"] == "loihi-fixed-point" and desc["absent"] == {}
    assert desc["plan"]["input_scale"] == plan.input_scale
    g = desc["graphs"]
    io = {role: ({v["name"]: (v["shape"], v["dtype"]) for v in d["inputs"]},
                 {v["name"]: (v["shape"], v["dtype"]) for v in d["outputs"]}) for role, d in g.items()}
    feats = {"audio": (["B", "S", DA], "float32"), "visual": (["B", "S", DV], "float32"),
             "lengths": (["B"], "int64")}
    assert io["encoder"] == (feats, {"payloads": ([T, "B", n_in], "float32"), "g": (["B"], "float32")})
    assert io["cue0"] == ({"g": (["B"], "float32")}, {"theta": (["B", len(sizes) - 1], "float32")})
    assert io["cue"] == ({**{f"spikes_{l}": (["B", n], "float32") for l, n in enumerate(sizes[1:])},
                          "g": (["B"], "float32")}, {"theta": (["B", len(sizes) - 1], "float32")})
    assert io["readout"] == ({"out_spikes": ([T, "B", sizes[-1]], "float32"), **feats},
                             {"joint": (["B", model.cfg.fusion.embed_dim], "float32")})
    for role, d in g.items():
        path = out / d["file"]
        assert d["bytes"] == path.stat().st_size
        m = onnx.load(str(path))
        onnx.checker.check_model(m)
        assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in m.graph.initializer), role
        assert all(v["units"] for v in d["inputs"] + d["outputs"]), role


# ------------------------------------------------------------------ equality with torch
@pytest.mark.parametrize("batch,seconds", [(1, 5), (5, 9), (13, 3)])
def test_fixed_point_graphs_match_torch(fixed, batch, seconds):
    model, plan, _, _, host = fixed
    res = check_against_torch(model, host, batch, seconds, seed=batch)
    # Measured on the machines here: no payload or theta ever rounded differently.
    assert res["payloads"]["total"] == plan.num_steps * batch * plan.n_in


def test_fixed_point_closed_loop_on_more_samples(fixed):
    model, plan, _, _, host = fixed
    act = spike_activity(model, ReferenceSimulator(plan))
    assert all(0.0 < r < 1.0 for r in act), act  # every layer fires, none saturates
    res = check_against_torch(model, host, 40, 8, seed=99)
    cl = res["closed_loop"]
    assert cl["spike_mismatches"] == 0 or cl["samples_diverged"] > 0, res


def test_static_thresholds_without_glp_and_tsf(static):
    model, plan, out, desc, host = static
    assert sorted(p.name for p in out.iterdir()) == [ENCODER_FILE, READOUT_FILE]
    assert set(desc["absent"]) == {"cue", "cue0"} and "static thresholds" in desc["absent"]["cue"]
    assert not host.dynamic_threshold and desc["initial_cue"] is None
    with pytest.raises(UserError, match="no cue0 graph"):
        host.initial_cue(np.zeros(2, np.float32))
    for batch, seconds in ((2, 4), (9, 11)):
        res = check_against_torch(model, host, batch, seconds, seed=batch + 7)
        assert "cue" not in res and "theta" not in res["closed_loop"]


def test_no_spiking_branch_exports_the_readout_only(tmp_path):
    model = make_model("spiking.enabled=false", seed=2)
    (tmp_path / CUE_FILE).write_bytes(b"stale")  # an earlier export's graph must not survive
    desc = export_host_onnx(model, None, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [READOUT_FILE]
    assert desc["spiking"] is False and set(desc["absent"]) == {"encoder", "cue0", "cue"}
    assert [v["name"] for v in desc["graphs"]["readout"]["inputs"]] == ["audio", "visual", "lengths"]
    host = OnnxHost(tmp_path)
    for batch, seconds in ((1, 2), (6, 10)):
        check_against_torch(model, host, batch, seconds, seed=batch)
    with pytest.raises(UserError, match="no encoder graph"):
        host.encode(*samples(0, 2, 3))


@pytest.mark.slow
def test_float_deployment(tmp_path):
    """plan=None: float currents and threshold units, compared within 1e-5 (float chip backend)."""
    model = make_model(seed=3)
    desc = export_host_onnx(model, None, tmp_path)
    assert desc["units"] == "float" and desc["plan"] is None
    assert [v["name"] for v in desc["graphs"]["encoder"]["outputs"]] == ["currents", "g"]
    host = OnnxHost(tmp_path)
    assert not host.fixed_point
    for batch, seconds in ((2, 5), (11, 8)):
        check_against_torch(model, host, batch, seconds, seed=batch)
    with pytest.raises(UserError, match="float backend"):
        host.run(*samples(0, 2, 3), ReferenceSimulator(model.spiking.deployment_plan()[0]))


# ------------------------------------------------------------------ bad input: one clear line
def test_deploy_model_without_plan_is_refused(tmp_path):
    model = make_model(seed=4)
    model.spiking.set_deploy(True)
    with pytest.raises(UserError, match="needs? the calibrated deployment plan"):
        export_host_onnx(model, None, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    other = make_model("spiking.hidden=12,6", seed=4).spiking.deployment_plan()[0]
    with pytest.raises(UserError, match="layer sizes"):
        export_host_onnx(model, other, tmp_path / "out")
    with pytest.raises(UserError, match="no spiking"):
        export_host_onnx(make_model("spiking.enabled=false"), other, tmp_path / "out")


@pytest.mark.parametrize("damage", ["missing_cue", "corrupt_encoder", "corrupt_readout", "no_folder",
                                    "wrong_role", "foreign_graph"])
def test_missing_or_corrupt_graph_is_one_line(fixed, tmp_path, damage):
    _, _, out, _, _ = fixed
    folder = tmp_path / "host"
    shutil.copytree(out, folder)
    if damage == "missing_cue":
        (folder / CUE_FILE).unlink()
    elif damage == "corrupt_encoder":
        (folder / ENCODER_FILE).write_bytes((folder / ENCODER_FILE).read_bytes()[:500])
    elif damage == "corrupt_readout":
        (folder / READOUT_FILE).write_text("not onnx")
    elif damage == "no_folder":
        folder = tmp_path / "nothing"
    elif damage == "wrong_role":  # a valid graph of this export in another graph's place
        shutil.copy(folder / CUE0_FILE, folder / CUE_FILE)
    else:  # a valid graph of another export (other metadata)
        m = onnx.load(str(folder / ENCODER_FILE))
        for p in m.metadata_props:
            if p.key == onnx_host.METADATA_KEY:
                p.value = json.dumps({**json.loads(p.value), "num_steps": 99})
        onnx.save(m, str(folder / ENCODER_FILE))
    with pytest.raises(OnnxHostError) as info:
        OnnxHost(folder)
    msg = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in msg and str(folder) in msg, msg


def test_bad_features_and_foreign_backend_are_refused(fixed):
    model, plan, _, _, host = fixed
    a, v, n = samples(0, 3, 5)
    with pytest.raises(UserError, match=r"lengths must lie in \[1, S=5\]"):
        host.encode(a, v, torch.tensor([0, 2, 5]))
    with pytest.raises(UserError, match="lengths must lie"):
        host.readout(np.zeros((plan.num_steps, 3, plan.sizes[-1]), np.float32), a, v, torch.tensor([1, 6, 2]))
    with pytest.raises(UserError, match=f"audio must be \\(B, S, {DA}\\)"):
        host.encode(a[..., :-1], v, n)
    other = dataclasses.replace(plan, input_scale=plan.input_scale * 2)
    with pytest.raises(UserError, match="different deployment plan"):
        host.run(a, v, n, ReferenceSimulator(other))
    with pytest.raises(UserError, match="float backend"):
        host.run(a, v, n, make_model().spiking.chip)  # float mode: plan None


def test_failed_export_leaves_no_partial_file(fixed, tmp_path, monkeypatch):
    """The second graph fails after the first was written under its temporary name: nothing new
    remains, and a graph already in the folder is left as it was."""
    model, plan, out, _, _ = fixed
    (tmp_path / READOUT_FILE).write_bytes(b"previous export")
    calls = []

    def flaky(module, args, input_names, output_names, dynamic, dest, metadata):
        calls.append(dest)
        if len(calls) == 2:
            raise RuntimeError("exporter failed")
        shutil.copy(out / ENCODER_FILE, dest)

    monkeypatch.setattr(onnx_host, "_export_one", flaky)
    with pytest.raises(RuntimeError, match="exporter failed"):
        export_host_onnx(model, plan, tmp_path)
    assert calls[0].name.startswith(".") and not calls[0].exists()
    assert [p.name for p in tmp_path.iterdir()] == [READOUT_FILE]
    assert (tmp_path / READOUT_FILE).read_bytes() == b"previous export"


# ------------------------------------------------------------------ the default model size
@pytest.mark.slow
def test_default_model_size(tmp_path):
    """Default config (512 + 512 features, 512 -> 256, 256, 128, T = 10, transformer 256, fusion
    ranks 16, 32): all four graphs match torch and the closed loop predicts the same classes."""
    model = make_model(base=[], da=512, dv=512, gain=2.0, seed=6)
    plan = model.spiking.deployment_plan()[0]
    desc = export_host_onnx(model, plan, tmp_path)
    assert set(desc["graphs"]) == {"encoder", "cue0", "cue", "readout"}
    host = OnnxHost(tmp_path)
    act = spike_activity(model, ReferenceSimulator(plan), batch=4, seconds=10)
    assert all(0.0 < r < 1.0 for r in act), act
    for batch, seconds in ((2, 10), (17, 6)):
        a, v, n = samples(batch, batch, seconds, 512, 512)
        res = compare_with_torch(model, host, a, v, n, class_embeddings=class_embeddings(model, classes=51))
        assert res["readout"]["max_abs_diff"] <= TOL and res["g"]["max_abs_diff"] <= TOL, res
        for key in ("payloads", "cue0", "cue"):
            assert res[key]["max_abs_diff"] <= 1.0, res
            assert res[key]["mismatches"] <= max(1, res[key]["total"] // 100), res
        cl = res["closed_loop"]
        assert cl["prediction_mismatches"] <= cl["samples_diverged"], res
        if cl["samples_diverged"] == 0:
            assert cl["joint_max_abs_diff"] <= TOL, res


# ------------------------------------------------------------------ the one closed loop and the one readout
def test_onnx_host_with_fusion_output_norm_equals_the_torch_host(tmp_path):
    """``fusion.output_norm = true`` (a LayerNorm after the fusion, with non-trivial affine
    parameters): the ONNX readout graph computes the torch model's joint embedding, and the two
    closed loops send and receive the same values. (The readout's former ONNX copy dropped the
    norm: its joint differed by far more than 1e-5.)"""
    model = make_model("fusion.output_norm=true", seed=7)
    with torch.no_grad():
        model.fusion_norm.weight.normal_(1.0, 0.5)
        model.fusion_norm.bias.normal_(0.0, 0.5)
    plan = model.spiking.deployment_plan()[0]
    export_host_onnx(model, plan, tmp_path)
    host = OnnxHost(tmp_path)
    a, v, n = samples(21, 6, 7)
    res = check_against_torch(model, host, 6, 7, seed=21)
    assert res["readout"]["max_abs_diff"] <= TOL and res["closed_loop"]["joint_max_abs_diff"] <= TOL, res
    with torch.no_grad():
        ours = host.run(a, v, n, ReferenceSimulator(plan))
        theirs = model(a, v, n, backend=ReferenceSimulator(plan))
    for got, want in zip(ours["record"].spikes, theirs["record"].spikes):
        assert torch.equal(got, want)
    assert torch.equal(ours["record"].theta, theirs["record"].theta)
    assert torch.equal(ours["record"].sent, theirs["record"].sent)


def test_the_closed_loop_against_a_hand_unrolled_oracle(fixed):
    """The one loop (``stft_neuro.closed_loop``) as both hosts drive it, checked against the loop
    written out by hand here: theta_0 from the GLP cue, theta_t from step t-1's spikes of every
    layer, and the recorded sends replayed open-loop through the reference simulator give the
    recorded spikes (a loop that sent theta one step late, or skipped a step, fails)."""
    from stft_neuro.closed_loop import Replay, closed_loop

    model, plan, _, _, host = fixed
    a, v, n = samples(31, 9, 6)
    with torch.no_grad():
        x, g = model.spiking.encode(a, v, n)
        rec = model.spiking.drive(x, g, ReferenceSimulator(plan))
        br = model.spiking
        T = plan.num_steps
        want = [plan.theta_to_chip(br.initial_cue(g))]
        want += [plan.theta_to_chip(br.threshold_cue(tuple(s[t - 1] for s in rec.spikes), g))
                 for t in range(1, T)]
        assert torch.equal(rec.theta, torch.stack(want))
        assert torch.equal(rec.sent, plan.encode_input(x))
        open_loop, _ = ReferenceSimulator(plan).run(rec.sent, rec.theta)
        for got, exp in zip(rec.spikes, open_loop):
            assert torch.equal(got, exp)
        assert all(float(s.sum()) > 0 for s in rec.spikes)  # every layer spikes: thetas matter
        # a replay of the received spikes makes the host send exactly what it sent
        replayed = closed_loop(br, Replay(rec.spikes, plan), x, g)
        assert torch.equal(replayed.theta, rec.theta) and torch.equal(replayed.sent, rec.sent)
        # the ONNX host, the same loop: the same record
        onnx_rec = host.run(a, v, n, ReferenceSimulator(plan))["record"]
    assert torch.equal(onnx_rec.theta, rec.theta) and torch.equal(onnx_rec.sent, rec.sent)
    for got, exp in zip(onnx_rec.spikes, rec.spikes):
        assert torch.equal(got, exp)
    with pytest.raises(ValueError, match="recorded batch"):
        closed_loop(br, Replay(rec.spikes, plan), x[:, :2], g[:2])
