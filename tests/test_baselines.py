"""Baselines (ridge, AVCA-like) under the AVCA protocol, and the paired comparison statistics."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stft_neuro import config as config_mod
from stft_neuro.baselines import avca_like, ridge
from stft_neuro.baselines.compare import paired_difference, t_critical
from stft_neuro.config import DataConfig
from stft_neuro.data import load_benchmark
from stft_neuro.errors import UserError

# Generated classes (no shared data needed), small enough to train in seconds on one core.
# Noise 0.5 (not the default 1.25) so that a few epochs on 30 samples per class suffice to learn.
SMALL = DataConfig(root="none", audio_dim=64, visual_dim=64, train_per_class=30, eval_per_class=12,
                   generated_classes=24, generated_unseen=4, generated_val_unseen=4, max_seconds=6,
                   noise=0.5, seed=0)


def chance_hm(bench) -> float:
    return 100.0 / (len(bench.seen(2)) + len(bench.unseen(2)))


def test_ridge_runs_the_protocol_and_beats_chance() -> None:
    bench = load_benchmark(SMALL)
    out = ridge.run_protocol(bench)
    m = out["stage2_test"]
    assert out["stage1_val"]["bias"] == m["bias"]  # b chosen on stage 1, applied to stage 2
    assert m["HM"] > 2 * chance_hm(bench) and m["ZSL"] > 1.5 * 100.0 / len(bench.unseen(2))  # 55.3, 45.8 measured
    assert ridge.run_protocol(bench)["stage2_test"] == m  # closed form: deterministic


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 30), d=st.integers(1, 12), e=st.integers(1, 5), lam=st.floats(0.01, 1000.0),
       seed=st.integers(0, 2**31))
def test_ridge_solves_its_normal_equations(n: int, d: int, e: int, lam: float, seed: int) -> None:
    """The gradient of ||Z W - (Y - y_bar)||^2 + lam ||W||^2 vanishes at the fitted W."""
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((n, d)) * rng.uniform(0.1, 10, d), rng.standard_normal((n, e))
    fit = ridge.RidgeMap.fit(x, y, lam)
    z = (x - fit.mu) / fit.sd
    grad = z.T @ (z @ fit.weight - (y - y.mean(0))) + lam * fit.weight
    assert np.abs(grad).max() <= 1e-7 * max(1.0, np.abs(z.T @ y).max())
    np.testing.assert_allclose(fit(x).mean(0), y.mean(0), atol=1e-9)  # unpenalised intercept


def test_ridge_bad_input() -> None:
    with pytest.raises(UserError, match="ridge: expected"):
        ridge.RidgeMap.fit(np.zeros((3, 2)), np.zeros((4, 1)), 1.0)
    with pytest.raises(UserError, match="lambda"):
        ridge.RidgeMap.fit(np.zeros((3, 2)), np.zeros((3, 1)), lam=-1)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 30), d=st.integers(1, 12), e=st.integers(1, 5), lam=st.floats(0.01, 1000.0),
       seed=st.integers(0, 2**31))
def test_ridge_without_intercept_solves_its_normal_equations(n, d, e, lam, seed) -> None:
    """No intercept: the gradient of ||Z W - Y||^2 + lam ||W||^2 vanishes, and f(0-feature) = 0."""
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((n, d)) * rng.uniform(0.1, 10, d), rng.standard_normal((n, e)) + 3.0
    fit = ridge.RidgeMap.fit(x, y, lam, intercept=False)
    z = (x - fit.mu) / fit.sd
    grad = z.T @ (z @ fit.weight - y) + lam * fit.weight
    assert np.abs(grad).max() <= 1e-7 * max(1.0, np.abs(z.T @ y).max())
    np.testing.assert_array_equal(fit(fit.mu[None, :]), np.zeros((1, e)))


def test_ridge_family_is_chosen_on_validation_only() -> None:
    """The chosen member is the one with the best stage-1 validation HM, and replacing the test
    splits by other data changes the test figures but never the choice."""
    bench = load_benchmark(SMALL)
    family = (ridge.RidgeVariant(True, "raw", 100.0), ridge.RidgeVariant(False, "centred_unit", 100.0),
              ridge.RidgeVariant(False, "raw", 1e5, unit_output=True))
    out = ridge.select_and_run(bench, family)
    assert len(out["selection"]) == 3
    best = max(out["selection"], key=lambda r: r["val_HM"])
    assert out["variant"] == {k: best[k] for k in ("intercept", "geometry", "lam", "unit_output")}
    assert out["stage1_val"]["HM"] == best["val_HM"]
    # the test splits' features shuffled across their samples (labels kept): same choice, other figures
    rng = np.random.default_rng(0)

    def shuffled(sp):
        perm = rng.permutation(len(sp.labels))
        return dataclasses.replace(sp, audio=sp.audio[perm], visual=sp.visual[perm], lengths=sp.lengths[perm])
    swapped = dataclasses.replace(bench, splits={**bench.splits, **{
        k: shuffled(bench.splits[k]) for k in ("stage_2_test_seen", "stage_2_test_unseen")}})
    again = ridge.select_and_run(swapped, family)
    assert again["variant"] == out["variant"] and again["selection"] == out["selection"]
    assert again["stage2_test"] != out["stage2_test"]


def test_word_geometry_centres_and_normalises_the_class_table() -> None:
    from stft_neuro.model import word_geometry
    w = load_benchmark(SMALL).class_embeddings
    c = word_geometry.apply_np(w, "centred")
    np.testing.assert_allclose(c.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(c, w - w.mean(0), atol=1e-7)
    u = word_geometry.apply_np(w, "centred_unit")
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(u * np.linalg.norm(c, axis=1, keepdims=True), c, atol=1e-7)
    np.testing.assert_array_equal(word_geometry.apply_np(w, "raw"), w.astype(np.float64))
    with pytest.raises(ValueError, match="word geometry"):
        word_geometry.apply_np(w, "whitened")


def test_mean_pooling_ignores_padding() -> None:
    sp = load_benchmark(SMALL).splits["stage_1_train"].subset(np.arange(5))
    x = ridge.mean_pooled(sp)
    i = 0
    n = int(sp.lengths[i])
    np.testing.assert_allclose(x[i, :64], sp.audio[i, :n].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x[i, 64:], sp.visual[i, :n].mean(0), rtol=1e-5, atol=1e-6)


def test_avca_like_config_is_the_no_spiking_concat_model() -> None:
    cfg = avca_like.avca_like_config(config_mod.Config())
    assert not cfg.spiking.enabled and cfg.fusion.kind == "concat"
    assert cfg.transformer == config_mod.Config().transformer and cfg.train == config_mod.Config().train


TINY_MODEL = ["train.threads=1", "transformer.dim=32", "transformer.heads=2", "fusion.width=64",
              "fusion.embed_dim=16"]


def test_avca_like_runs_the_protocol(tmp_path: Path) -> None:
    bench = load_benchmark(SMALL)
    cfg = config_mod.load(overrides=["train.epochs=1", *TINY_MODEL])
    out = avca_like.run_protocol(cfg, bench, tmp_path / "run")
    m = out["stage2_test"]
    assert m["bias"] == out["stage1_val"]["bias"] and out["stage1_val"]["best_epoch"] == 1
    assert all(math.isfinite(m[k]) and 0 <= m[k] <= 100 for k in ("S", "U", "HM", "ZSL"))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["spiking"]["enabled"] is False and saved["fusion"]["kind"] == "concat"


@pytest.mark.slow
def test_avca_like_beats_chance(tmp_path: Path) -> None:
    """8 epochs, batch 16 (measured: stage-2 HM 16.7, ZSL 54.2 against chance 4.2 / 25)."""
    bench = load_benchmark(SMALL)
    cfg = config_mod.load(overrides=["train.epochs=8", "train.batch_size=16", *TINY_MODEL])
    out = avca_like.run_protocol(cfg, bench, tmp_path / "run")
    m = out["stage2_test"]
    assert m["HM"] > 2 * chance_hm(bench) and m["ZSL"] > 1.5 * 100.0 / len(bench.unseen(2))


def test_t_critical_matches_scipy() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in range(1, 31):
        assert abs(t_critical(df) - scipy_stats.t.ppf(0.975, df)) < 1e-3
    with pytest.raises(UserError, match="df >= 1"):
        t_critical(0)


@settings(max_examples=30, deadline=None)
@given(diffs=st.lists(st.floats(-50, 50), min_size=2, max_size=12), shift=st.floats(-50, 50))
def test_paired_difference_is_shift_invariant_and_brackets_the_mean(diffs: list[float], shift: float) -> None:
    """Adding the same per-seed value to both arms changes nothing; the CI contains the mean."""
    ref = {k: float(k) * 3.1 for k in range(len(diffs))}
    var = {k: ref[k] + d for k, d in enumerate(diffs)}
    d1 = paired_difference(var, ref)
    d2 = paired_difference({k: v + shift * k for k, v in var.items()}, {k: v + shift * k for k, v in ref.items()})
    assert math.isclose(d1.mean, d2.mean, abs_tol=1e-6) and math.isclose(d1.sd, d2.sd, abs_tol=1e-6)
    assert d1.low <= d1.mean <= d1.high
    assert math.isclose(d1.high - d1.low, 2 * t_critical(len(diffs) - 1) * d1.sd / math.sqrt(len(diffs)),
                        rel_tol=1e-9, abs_tol=1e-9)


def test_paired_difference_known_values() -> None:
    d = paired_difference({0: 12.0, 1: 14.0, 2: 13.0}, {0: 10.0, 1: 10.0, 2: 10.0, 7: 99.0})
    assert d.n == 3 and d.mean == 3.0 and d.sd == 1.0
    assert math.isclose(d.high, 3.0 + 4.303 / math.sqrt(3)) and d.separated
    with pytest.raises(UserError, match="at least 2 common seeds"):
        paired_difference({0: 1.0}, {0: 2.0, 1: 3.0})
