"""Closed-form ridge regression from mean-pooled audio + visual features to word2vec.

The linear baseline of issue #11. For a split with features ``audio (N, S, Da)``, ``visual (N, S,
Dv)`` and lengths ``(N,)``:

    x_i = [mean_t audio_i[t], mean_t visual_i[t]]                (Da + Dv,)  over valid seconds
    z_i = (x_i - mu) / sd                                        standardised with the training split's
                                                                 per-feature mean and sd (sd floored)
    W   = argmin ||Z W - (Y - y_bar)||^2 + lambda ||W||^2        = (Z^T Z + lambda I)^-1 Z^T (Y - y_bar)
    f(x) = z W + y_bar                                           (300,) the predicted word embedding

with ``Y (N, 300)`` the word2vec rows of the training labels; the intercept ``y_bar`` is not
penalised. Prediction compares ``f(x)`` with the class word2vec rows by Euclidean distance, so it
goes through ``stft_neuro.protocol`` exactly as a trained model's embeddings do.

Protocol (AVCA): fit on ``stage_1_train``, choose b on ``stage_1_val_{seen,unseen}``
(``protocol.calibrate``); refit on ``stage_2_train``, test on ``stage_2_test_{seen,unseen}`` at that b.

``LAMBDA = 100``: the value issue #11 measured with (standardised 1024-d features, a few thousand
samples, so lambda is small against ``N`` and mainly stabilises the near-collinear directions).
"""
from __future__ import annotations

import time

import numpy as np

from stft_neuro import protocol
from stft_neuro.data.benchmark import Benchmark, Split
from stft_neuro.errors import UserError

LAMBDA = 100.0
_SD_FLOOR = 1e-6  # features constant on the training split are left unscaled, not divided by 0


def mean_pooled(split: Split) -> np.ndarray:
    """``(N, Da + Dv)`` float64: audio and visual averaged over each sample's valid seconds."""
    m = split.mask()[..., None].astype(np.float64)  # (N, S, 1)
    n = m.sum(axis=1)  # (N, 1)
    a = (split.audio * m).sum(axis=1) / n
    v = (split.visual * m).sum(axis=1) / n
    return np.concatenate([a, v], axis=1)


class RidgeMap:
    """A fitted map features -> word-embedding space (see the module doc for the equations)."""

    def __init__(self, mu: np.ndarray, sd: np.ndarray, weight: np.ndarray, intercept: np.ndarray) -> None:
        self.mu, self.sd, self.weight, self.intercept = mu, sd, weight, intercept

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, lam: float = LAMBDA) -> RidgeMap:
        """``x (N, D)`` features, ``y (N, E)`` targets, ``lam >= 0`` the L2 penalty."""
        if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 1:
            raise UserError(f"ridge: expected x (N, D) and y (N, E) with N >= 1, got {x.shape} and {y.shape}")
        if not lam >= 0:
            raise UserError(f"ridge: lambda must be >= 0, got {lam}")
        mu = x.mean(axis=0)
        sd = x.std(axis=0)
        sd = np.where(sd < _SD_FLOOR, 1.0, sd)
        z = (x - mu) / sd
        y_bar = y.mean(axis=0)
        gram = z.T @ z + lam * np.eye(z.shape[1])
        weight = np.linalg.solve(gram, z.T @ (y - y_bar))  # (D, E)
        return cls(mu, sd, weight, y_bar)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``(N, D)`` features -> ``(N, E)`` predicted embeddings."""
        return ((x - self.mu) / self.sd) @ self.weight + self.intercept


def _fit_split(bench: Benchmark, split_name: str, lam: float) -> RidgeMap:
    split = bench.splits[split_name]
    targets = bench.class_embeddings[split.labels].astype(np.float64)  # (N, 300)
    return RidgeMap.fit(mean_pooled(split), targets, lam)


def _metrics(model: RidgeMap, bench: Benchmark, stage: int, bias: float | None) -> protocol.GZSLMetrics:
    names = ("stage_1_val_seen", "stage_1_val_unseen") if stage == 1 else \
        ("stage_2_test_seen", "stage_2_test_unseen")
    seen, unseen = bench.splits[names[0]], bench.splits[names[1]]
    samples = np.concatenate([model(mean_pooled(seen)), model(mean_pooled(unseen))])
    labels = np.concatenate([seen.labels, unseen.labels])
    args = (samples, labels, bench.class_embeddings, bench.seen(stage), bench.unseen(stage))
    return protocol.calibrate(*args) if bias is None else protocol.evaluate(*args, bias=bias)


def run_protocol(bench: Benchmark, lam: float = LAMBDA) -> dict:
    """Both AVCA stages (module doc); the result has the shape of ``Trainer.run``'s, plus
    ``seconds`` (wall time of both fits and evaluations)."""
    t0 = time.perf_counter()
    val = _metrics(_fit_split(bench, "stage_1_train", lam), bench, 1, None)
    test = _metrics(_fit_split(bench, "stage_2_train", lam), bench, 2, val.bias)
    return {"stage1_val": {"best_epoch": 0, "HM": val.HM, "bias": val.bias},
            "stage1_val_metrics": val.to_dict(), "stage2_test": test.to_dict(),
            "seconds": time.perf_counter() - t0}
