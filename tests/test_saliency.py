"""Spike-driven temporal pooling (``spiking.saliency``) and the ridge readout (``fusion.readout``).

Issue #16: the chip decides which bins of a clip the host pools (``model/saliency.py``), and the
STFT's last linear map can be fitted in closed form (``model/ridge_readout.py``,
``readout_fit.py``). These tests pin what a user relies on: the chip's response to bin k is read
at step k + L, the host sends zero currents while the chip drains, shuffling the chip's output
pools each sample with another's weights, a fitted readout is the closed-form ridge map of the
readout features and survives a save/load, and the ONNX host computes the same joint embedding.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stft_neuro import config
from stft_neuro.baselines.ridge import FAMILY, RidgeMap
from stft_neuro.branch_worth import parts
from stft_neuro.checkpoint import load_run
from stft_neuro.data import load_benchmark
from stft_neuro.model.saliency import SaliencyPool
from stft_neuro.model.stft import STFT
from stft_neuro.readout_fit import fit_readout, readout_features
from stft_neuro.sim.reference import ReferenceSimulator
from stft_neuro.train import Trainer

from test_cli import TINY
from test_onnx_host import check_against_torch, make_model, samples

SALIENCY = ["spiking.saliency=2", "spiking.hidden=12", "spiking.num_steps=5"]


def test_the_response_to_bin_k_is_read_at_step_k_plus_the_chips_delay() -> None:
    """Bin k goes in at step k and the last of L layers answers at step k + L: a neuron that
    spikes only at step 1 + L, scored high by head 0 only, puts head 0's weight on bin 1."""
    L, K, n_last = 2, 4, 3
    pool = SaliencyPool(n_last, heads=2, bins=K, latency=L, audio_dim=2)
    with torch.no_grad():
        pool.score.weight.zero_()
        pool.score.weight[0, 0] = 30.0  # head 0 reads neuron 0; head 1 reads nothing
        pool.score.bias.zero_()
    z = torch.zeros(K + L, 1, n_last)
    z[1 + L, 0, 0] = 1.0
    w = pool.weights(z)  # (B, K, H)
    assert w.shape == (1, K, 2)
    assert torch.allclose(w.sum(1), torch.ones(1, 2))
    assert w[0, 1, 0] > 0.999 and torch.allclose(w[0, :, 1], torch.full((K,), 1 / K))
    binned = torch.arange(K * 4, dtype=torch.float32).reshape(1, K, 4)  # audio: 2 columns, visual: 2
    pooled = pool.pool(w, binned)
    assert torch.allclose(pooled[0, :2], binned[0, 1, :2], atol=1e-3)  # audio: bin 1
    assert torch.allclose(pooled[0, 2:], binned[0, :, 2:].mean(0))    # visual: the uniform head


def test_the_host_sends_zero_payloads_while_the_chip_drains() -> None:
    """With saliency the host bins the features into T - L steps and sends zeros after them; in
    fixed point the payloads of those steps are 0 and the last layer still spikes there (the
    response to the last bins)."""
    model = make_model(*SALIENCY, seed=3)
    br = model.spiking
    assert br.bins == 4 and br.saliency.latency == 1
    a, v, n = samples(4, 16, 7)
    x, _ = br.encode(a, v, n)
    assert x.shape[0] == 5 and torch.count_nonzero(x[4]) == 0 and torch.count_nonzero(x[:4]) > 0
    plan = br.deployment_plan()[0]
    with torch.no_grad():
        out = model(a, v, n, backend=ReferenceSimulator(plan))
    sent = out["record"].sent
    assert torch.count_nonzero(sent[4]) == 0 and torch.count_nonzero(sent[:4]) > 0
    assert out["spikes"][-1][4].sum() > 0  # the drain step carries the response to bin 3


def test_shuffling_the_chips_output_pools_each_sample_with_anothers_weights() -> None:
    """``branch_worth``'s shuffle permutes the chip's spike trains: the pooled features are then
    exactly each sample's bins weighted by the permuted sample's saliency, and they differ from
    the sample's own (the chip carries sample-specific timing)."""
    model = make_model(*SALIENCY, seed=5)
    a, v, n = samples(6, 12, 8)
    host, z = parts(model, a.numpy(), v.numpy(), n.numpy())
    perm = torch.as_tensor(np.random.default_rng(0).permutation(12))
    w = model.spiking.saliency.weights(z)
    shuffled = model.pooled(host, z[:, perm])
    assert torch.allclose(shuffled, model.spiking.saliency.pool(w[perm], host.binned), atol=1e-6)
    assert (shuffled - model.pooled(host, z)).abs().max() > 1e-3


@pytest.fixture(scope="module")
def ridge_run(tmp_path_factory):
    """A tiny two-stage run with saliency and the ridge readout (member chosen on validation)."""
    cfg = config.load(overrides=[*TINY, *SALIENCY, "fusion.readout=ridge", "data.train_per_class=6",
                                 "data.eval_per_class=3"])
    bench = load_benchmark(cfg.data)
    run_dir = tmp_path_factory.mktemp("ridge_run")
    metrics = Trainer(cfg, bench, run_dir).run()
    return run_dir, bench, metrics


def test_a_fitted_ridge_readout_is_the_closed_form_map_of_the_readout_features(ridge_run) -> None:
    run_dir, bench, metrics = ridge_run
    model, cfg, _ = load_run(run_dir)
    assert metrics["readout_member"] in {v.name for v in FAMILY}
    member = next(v for v in FAMILY if v.name == metrics["readout_member"])
    model.eval()
    assert model.ridge_active and model.ridge.geometry_name == member.geometry
    train = bench.splits["stage_2_train"]
    x = readout_features(model, train)
    want = RidgeMap.fit(x, member.table(bench.class_embeddings)[train.labels], member.lam, member.intercept)
    test = bench.splits["stage_2_test_unseen"]
    a, v, n = (torch.as_tensor(t) for t in (test.audio, test.visual, test.lengths))
    with torch.no_grad():
        joint = model(a, v, n)["joint"].double().numpy()
        table = model.embed_classes(torch.as_tensor(bench.class_embeddings)).double().numpy()
    assert joint.shape == (len(test.labels), 300)
    np.testing.assert_allclose(joint, want(readout_features(model, test)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(table, member.table(bench.class_embeddings), atol=1e-6)
    model.train()  # the losses need the trained projection: training mode never uses the ridge
    assert not model.ridge_active and model.embed_classes(torch.as_tensor(bench.class_embeddings)).shape[1] == \
        cfg.fusion.embed_dim


def test_refitting_changes_nothing_and_a_new_member_refits(ridge_run) -> None:
    run_dir, bench, metrics = ridge_run
    model, _, _ = load_run(run_dir)
    before = model.ridge.weight.clone()
    member = next(v for v in FAMILY if v.name == metrics["readout_member"])
    fit_readout(model, bench, 2, member=member)
    assert torch.allclose(model.ridge.weight, before, atol=1e-6)
    other = next(v for v in FAMILY if v.lam != member.lam)
    fit_readout(model, bench, 2, member=other)
    assert not torch.allclose(model.ridge.weight, before, atol=1e-3)


def test_the_onnx_host_computes_the_saliency_and_ridge_readout(ridge_run, tmp_path) -> None:
    from stft_neuro.export.onnx_host import OnnxHost, export_host_onnx
    run_dir, bench, _ = ridge_run
    model, _, _ = load_run(run_dir)
    model.eval()
    sp = bench.splits["stage_2_train"]
    model.spiking.calibrate_input(*(torch.as_tensor(t[:32]) for t in (sp.audio, sp.visual, sp.lengths)))
    plan = model.spiking.deployment_plan()[0]
    export_host_onnx(model, plan, tmp_path)
    host = OnnxHost(tmp_path)
    for batch, seconds in ((3, 4), (7, 4)):
        res = check_against_torch(model, host, batch, seconds, seed=batch)  # torch == ONNX, every value
        assert res["closed_loop"]["samples_diverged"] == 0, res
        a, v, n = samples(batch, batch, seconds)
        assert host.run(a.numpy(), v.numpy(), n.numpy(), ReferenceSimulator(plan))["joint"].shape == (batch, 300)


def test_bad_saliency_and_readout_values_are_refused() -> None:
    with pytest.raises(config.ConfigError, match="spiking.saliency"):
        config.load(overrides=["spiking.saliency=3"])
    with pytest.raises(config.ConfigError, match="num_steps"):
        config.load(overrides=["spiking.saliency=1", "spiking.hidden=8,8", "spiking.num_steps=2"])
    with pytest.raises(config.ConfigError, match="fusion.readout"):
        config.load(overrides=["fusion.readout=lasso"])


def test_a_model_without_saliency_pools_by_the_mean() -> None:
    model: STFT = make_model(seed=2)
    a, v, n = samples(1, 4, 6)
    host = model.host_part(a, v, n)
    assert host.binned is None
    mask = (torch.arange(6)[None] < n[:, None]).float()[..., None]
    want = (torch.cat([a, v], -1) * mask).sum(1) / mask.sum(1)
    assert torch.allclose(model.pooled(host, None), want, atol=1e-6)


def test_qat_refits_the_chosen_member_through_the_fixed_point_chip(ridge_run, tmp_path) -> None:
    """QAT of a saliency + ridge run: the float run's member is refitted on stage_2_train through
    the fine-tuned fixed-point chip, and the reference simulator then gives the deploy-mode joint
    embedding exactly (the spikes are the same integers, so the pooling and the map are too)."""
    from stft_neuro.qat import qat_finetune
    run_dir, bench, metrics = ridge_run
    res = qat_finetune(run_dir, tmp_path / "qat", ["train.epochs=1"], bench=bench)
    assert res["readout_member"] == metrics["readout_member"]
    model, _, _ = load_run(tmp_path / "qat")
    model.eval()
    assert model.spiking.deploy and model.ridge_active
    plan = model.spiking.deployment_plan()[0]
    test = bench.splits["stage_2_test_unseen"]
    a, v, n = (torch.as_tensor(t) for t in (test.audio, test.visual, test.lengths))
    with torch.no_grad():
        deploy = model(a, v, n)
        ref = model(a, v, n, backend=ReferenceSimulator(plan))
    assert sum(int(s.sum()) for s in ref["spikes"]) > 0
    for got, want in zip(ref["spikes"], deploy["spikes"]):
        assert torch.equal(got, want)
    assert torch.equal(ref["joint"], deploy["joint"])


@pytest.mark.lava
def test_a_saliency_ridge_run_exports_to_every_target_and_runs_hybrid_on_lava(tmp_path) -> None:
    """The CLI path a user takes with the real-size recipe: train, export --target all, then the
    hybrid run from the bundle with the ONNX host: Lava's records equal the reference simulator's,
    and the predictions are those of the torch model (the ridge readout is in the readout graph)."""
    from stft_neuro.cli import main
    from test_cli import _sets
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    assert main(["train", "--json", "--out", str(run),
                 *_sets(*TINY, *SALIENCY, "fusion.readout=ridge", "spiking.dynamic_threshold=false")]) == 0
    assert main(["export", "--json", "--checkpoint", str(run), "--target", "all", "--out", str(bundle)]) == 0
    recs = {}
    for backend in ("reference", "lava"):
        out = tmp_path / f"sim_{backend}"
        assert main(["simulate", "--json", "--out", str(out), "--bundle", str(bundle), "--host", "onnx",
                     "--samples", "3", "--backend", backend]) == 0
        with np.load(out / "records.npz") as z:
            recs[backend] = {k: z[k] for k in z.files}
    ref, lava = recs["reference"], recs["lava"]
    assert ref["spikes_1"].any() and not ref["payloads"][:, -1].any()  # the drain step sends nothing
    for key in ref:
        assert np.array_equal(lava[key], ref[key]), key
