"""The AVCA GZSL protocol against hand-computed cases, and properties."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stft_neuro import protocol as P

# Classes on a line (E = 1): 0, 1 seen; 2, 3 unseen; 4 sits at 1.45 but is no candidate this stage.
CLASSES = np.array([[0.0], [1.0], [2.0], [3.0], [1.45]])
SEEN, UNSEEN = np.array([0, 1]), np.array([2, 3])
X = np.array([[0.0], [1.0], [1.45], [3.0], [2.6], [2.4]])
Y = np.array([0, 1, 2, 3, 3, 3])


def test_hand_computed_b0() -> None:
    # b=0: seen samples right (S=100); sample 1.45 goes to class 1 (0.45 < 0.55), 2.4 to class 2.
    # U = mean(0/1, 2/3) = 33.33; HM = 2*100*33.33/133.33 = 50. ZSL: 1.45 -> 2 (right), 2.4 -> 2 (wrong):
    # mean(1/1, 2/3) = 83.33.
    m = P.evaluate(X, Y, CLASSES, SEEN, UNSEEN, bias=0.0)
    assert m.S == pytest.approx(100.0)
    assert m.U == pytest.approx(100 / 3)
    assert m.HM == pytest.approx(50.0)
    assert m.ZSL == pytest.approx(250 / 3)
    assert m.bias == 0.0


def test_hand_computed_bias_and_calibration() -> None:
    # Any b in (0.1, 1]: 1.45 -> class 2, seen samples still right: U = mean(1, 2/3), HM = 90.909.
    m = P.evaluate(X, Y, CLASSES, SEEN, UNSEEN, bias=0.6)
    assert (m.S, m.U) == (pytest.approx(100.0), pytest.approx(250 / 3))
    assert m.HM == pytest.approx(2 * 100 * (250 / 3) / (100 + 250 / 3))
    # b = 1.2: the seen sample at 1.0 now goes to class 2 (1.0 < 1.0 + 1.2): S = 50.
    assert P.evaluate(X, Y, CLASSES, SEEN, UNSEEN, bias=1.2).S == pytest.approx(50.0)
    # Calibration: the HM plateau spans b = 0.2 .. 1.0 of the grid; the smallest b wins.
    best = P.calibrate(X, Y, CLASSES, SEEN, UNSEEN)
    assert best.bias == pytest.approx(0.2)
    assert best.HM == pytest.approx(m.HM)
    assert best.ZSL == pytest.approx(250 / 3)  # ZSL never uses b


def test_predict_candidates_and_ties() -> None:
    d = P.distances(X, CLASSES)
    np.testing.assert_allclose(d, np.abs(X - CLASSES.T))
    pred = P.predict(d, np.array([0, 1, 2, 3]))
    assert 4 not in pred  # class 4 is nearest to 1.45, but no candidate
    tie = np.array([[1.0, 1.0, 1.0]])
    assert P.predict(tie, np.array([2, 1]))[0] == 1  # equal distances: lowest class index
    assert P.predict(tie, np.array([0, 1, 2]), seen=np.array([0]), bias=0.5)[0] == 1


def test_mean_per_class_accuracy() -> None:
    # class 0: 1/1, class 1: 1/3 -> mean 2/3 (sample accuracy would be 1/2)
    assert P.mean_per_class_accuracy(np.array([0, 1, 0, 0]), np.array([0, 1, 1, 1])) == pytest.approx(2 / 3)
    assert P.mean_per_class_accuracy(np.array([], dtype=int), np.array([], dtype=int)) == 0.0


def test_errors_and_table() -> None:
    with pytest.raises(ValueError, match="overlap"):
        P.evaluate(X, Y, CLASSES, np.array([0, 1, 2]), UNSEEN)
    with pytest.raises(ValueError, match="neither"):
        P.evaluate(X, np.array([0, 1, 2, 3, 3, 4]), CLASSES, SEEN, UNSEEN)
    m = P.GZSLMetrics(S=50.0, U=25.0, HM=100 / 3, ZSL=30.0, bias=0.4)
    assert m.to_dict() == {"S": 50.0, "U": 25.0, "HM": 100 / 3, "ZSL": 30.0, "bias": 0.4}
    table = P.format_table({"ridge": m, "stft-neuro": m})
    assert "stft-neuro" in table.splitlines()[2] and "33.33" in table and len(table.splitlines()) == 3
    assert P.harmonic_mean(0.0, 0.0) == 0.0
    assert len(P.BIAS_GRID) == 16 and P.BIAS_GRID[-1] == 3.0


@given(s=st.floats(0, 100), u=st.floats(0, 100))
def test_hm_between_min_and_max(s: float, u: float) -> None:
    hm = P.harmonic_mean(s, u)
    assert min(s, u) - 1e-9 <= hm <= max(s, u) + 1e-9


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), c=st.integers(2, 6))
def test_mpca_order_invariant_and_metrics_consistent(seed: int, n: int, c: int) -> None:
    rng = np.random.default_rng(seed)
    labels, pred = rng.integers(0, c, n), rng.integers(0, c, n)
    perm = rng.permutation(n)
    assert P.mean_per_class_accuracy(pred, labels) == pytest.approx(P.mean_per_class_accuracy(pred[perm], labels[perm]))
    emb, cls = rng.standard_normal((n, 3)), rng.standard_normal((c + 1, 3))
    seen, unseen = np.arange(c // 2 + 1), np.arange(c // 2 + 1, c + 1)
    m = P.calibrate(emb, rng.integers(0, c + 1, n), cls, seen, unseen)
    assert min(m.S, m.U) - 1e-9 <= m.HM <= max(m.S, m.U) + 1e-9
    assert all(0 <= v <= 100 for v in (m.S, m.U, m.HM, m.ZSL)) and m.bias in P.BIAS_GRID


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), c=st.integers(3, 8))
def test_perfect_embeddings_score_100(seed: int, c: int) -> None:
    rng = np.random.default_rng(seed)
    cls = rng.standard_normal((c, 5))
    labels = np.concatenate([np.arange(c), rng.integers(0, c, 10)])
    m = P.evaluate(cls[labels], labels, cls, np.arange(c - 2), np.arange(c - 2, c), bias=0.0)
    assert (m.S, m.U, m.HM, m.ZSL) == (100.0, 100.0, 100.0, 100.0)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.integers(1, 30), st.sampled_from([1, 8, 300]),
       st.sampled_from([1e-3, 1.0, 30.0]))
def test_distances_equal_pairwise_differences(seed: int, n: int, c: int, e: int, scale: float) -> None:
    """The one-matmul form equals the pairwise-difference norm (to float64 cancellation) and names
    the same nearest class, also for samples that sit exactly on a class embedding."""
    rng = np.random.default_rng(seed)
    x, t = rng.normal(size=(n, e)) * scale, rng.normal(size=(c, e)) * scale
    x[0] = t[-1]  # a sample on a class: distance 0 up to rounding, and that class is its nearest
    naive = np.linalg.norm(x[:, None, :] - t[None, :, :], axis=2)
    d = P.distances(x, t)
    assert d.shape == (n, c) and (d >= 0).all()
    np.testing.assert_allclose(d, naive, rtol=1e-9, atol=1e-6 * scale)
    gap = np.sort(naive, axis=1)
    clear = gap.shape[1] == 1 or (gap[:, 1] - gap[:, 0] > 1e-6 * scale).all()
    if clear:
        np.testing.assert_array_equal(d.argmin(1), naive.argmin(1))
    assert d[0].argmin() == c - 1 and d[0, c - 1] < 1e-6 * scale
