"""Closed-form ridge regression from mean-pooled audio + visual features to word2vec: a family,
its member chosen on stage-1 validation.

For a split with features ``audio (N, S, Da)``, ``visual (N, S, Dv)`` and lengths ``(N,)``:

    x_i = [mean_t audio_i[t], mean_t visual_i[t]]                (Da + Dv,)  over valid seconds
    z_i = (x_i - mu) / sd                                        standardised with the training split's
                                                                 per-feature mean and sd (sd floored)
    Y   = word-embedding rows of the training labels, in geometry g (``model/word_geometry.py``)
    with intercept:    W = (Z^T Z + lambda I)^-1 Z^T (Y - y_bar),  f(x) = z W + y_bar
    without intercept: W = (Z^T Z + lambda I)^-1 Z^T Y,            f(x) = z W
    unit output:       f(x) / ||f(x)|| compared with the unit-normalised class table (cosine geometry)

Prediction compares ``f(x)`` with the class table in the same geometry g by Euclidean distance,
through ``stft_neuro.protocol`` exactly as a trained model's embeddings do.

The family (``FAMILY``, 24 members, issue #16's): intercept or none x geometry ``raw`` /
``centred`` / ``centred_unit`` x lambda in ``LAMBDAS``. The unpenalised intercept adds
``y_bar . e_c`` to every class score, a pull towards the seen classes' mean embedding that costs
unseen accuracy: issue #16 found the old single member (intercept, raw, lambda 100) at U 17 where
the family's best reaches 29-37. ``select_and_run`` fits every member on ``stage_1_train``,
calibrates each on ``stage_1_val_{seen,unseen}`` and keeps the one with the highest validation HM
(ties: the first in ``FAMILY`` order); only that member is refit on ``stage_2_train`` and tested,
once, at its b.

``EXTENDED_FAMILY`` (84 members) adds lambdas 3e3, 3e4, 1e5 and a unit output (predictions and
class table L2-normalised: a large lambda shrinks ``f(x)`` towards 0, where every class is about
equally far and the absolute calibration grid b in 0..3 no longer fits). It raises validation HM
(real-size UCF seed 0: 34.0 against 32.7) but its validation choices test lower on seeds 0-4
(mean HM 45.1 against 46.8, BENCHMARKS.md): the wider search fits validation noise. The 24-member
family is the baseline the STFT is compared with; the extended one is reported beside it.
Test data never influences the choice.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass

import numpy as np

from stft_neuro import protocol
from stft_neuro.data.benchmark import Benchmark, Split
from stft_neuro.errors import UserError
from stft_neuro.model import word_geometry

LAMBDAS: tuple[float, ...] = (10.0, 100.0, 1000.0, 10000.0)
EXTENDED_LAMBDAS: tuple[float, ...] = (10.0, 100.0, 1000.0, 3000.0, 10000.0, 30000.0, 100000.0)
_SD_FLOOR = 1e-6  # features constant on the training split are left unscaled, not divided by 0


@dataclass(frozen=True)
class RidgeVariant:
    """One member of the family: ``intercept`` (unpenalised), word ``geometry``, penalty ``lam``,
    ``unit_output`` (predictions and class table L2-normalised before the distances)."""

    intercept: bool
    geometry: str
    lam: float
    unit_output: bool = False

    @property
    def name(self) -> str:
        return (f"ridge ({'intercept' if self.intercept else 'no intercept'}, {self.geometry}, "
                f"lambda {self.lam:g}{', unit output' if self.unit_output else ''})")

    def table(self, class_embeddings: np.ndarray) -> np.ndarray:
        """The class table the targets and distances use: geometry, then the unit output's norm."""
        table = word_geometry.apply_np(class_embeddings, self.geometry)
        return _unit(table) if self.unit_output else table


FAMILY: tuple[RidgeVariant, ...] = tuple(
    RidgeVariant(i, g, lam) for i, g, lam in itertools.product((False, True), word_geometry.GEOMETRIES, LAMBDAS))
EXTENDED_FAMILY: tuple[RidgeVariant, ...] = tuple(
    RidgeVariant(i, g, lam, u) for i, g, lam, u in
    itertools.product((False, True), word_geometry.GEOMETRIES, EXTENDED_LAMBDAS, (False, True)))
#: issue #11's single ridge (kept for comparison with older tables)
LEGACY = RidgeVariant(True, "raw", 100.0)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def mean_pooled(split: Split) -> np.ndarray:
    """``(N, Da + Dv)`` float64: audio and visual averaged over each sample's valid seconds."""
    m = split.mask()[..., None].astype(np.float64)  # (N, S, 1)
    n = m.sum(axis=1)  # (N, 1)
    a = (split.audio * m).sum(axis=1) / n
    v = (split.visual * m).sum(axis=1) / n
    return np.concatenate([a, v], axis=1)


class Design:
    """The standardised design ``z = (x - mu) / sd`` and its Gram matrix ``z^T z``, shared by fits."""

    def __init__(self, x: np.ndarray) -> None:
        self.mu = x.mean(axis=0)
        sd = x.std(axis=0)
        self.sd = np.where(sd < _SD_FLOOR, 1.0, sd)
        self.z = (x - self.mu) / self.sd
        self.gram = self.z.T @ self.z


class RidgeMap:
    """A fitted map features -> word-embedding space (see the module doc for the equations)."""

    def __init__(self, mu: np.ndarray, sd: np.ndarray, weight: np.ndarray, intercept: np.ndarray) -> None:
        self.mu, self.sd, self.weight, self.intercept = mu, sd, weight, intercept

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, lam: float, intercept: bool = True,
            design: Design | None = None) -> RidgeMap:
        """``x (N, D)`` features, ``y (N, E)`` targets, ``lam >= 0`` the L2 penalty; ``design``:
        ``Design(x)`` computed once for many fits on the same ``x``."""
        if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 1:
            raise UserError(f"ridge: expected x (N, D) and y (N, E) with N >= 1, got {x.shape} and {y.shape}")
        if not lam >= 0:
            raise UserError(f"ridge: lambda must be >= 0, got {lam}")
        d = design if design is not None else Design(x)
        y_bar = y.mean(axis=0) if intercept else np.zeros(y.shape[1])
        weight = np.linalg.solve(d.gram + lam * np.eye(d.gram.shape[0]), d.z.T @ (y - y_bar))  # (D, E)
        return cls(d.mu, d.sd, weight, y_bar)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``(N, D)`` features -> ``(N, E)`` predicted embeddings."""
        return ((x - self.mu) / self.sd) @ self.weight + self.intercept


class _Features:
    """Mean-pooled features of a benchmark's splits, computed once for the whole family."""

    def __init__(self, bench: Benchmark) -> None:
        self.bench = bench
        self.x = {name: mean_pooled(split) for name, split in bench.splits.items()}
        self.designs: dict[str, Design] = {}

    def fit(self, split_name: str, v: RidgeVariant) -> RidgeMap:
        table = word_geometry.apply_np(self.bench.class_embeddings, v.geometry)
        if split_name not in self.designs:
            self.designs[split_name] = Design(self.x[split_name])
        return RidgeMap.fit(self.x[split_name], table[self.bench.splits[split_name].labels], v.lam,
                            v.intercept, self.designs[split_name])

    def embed(self, model: RidgeMap, v: RidgeVariant, split_name: str) -> np.ndarray:
        out = model(self.x[split_name])
        return _unit(out) if v.unit_output else out

    def metrics(self, model: RidgeMap, v: RidgeVariant, stage: int, bias: float | None) -> protocol.GZSLMetrics:
        names = ("stage_1_val_seen", "stage_1_val_unseen") if stage == 1 else \
            ("stage_2_test_seen", "stage_2_test_unseen")
        samples = np.concatenate([self.embed(model, v, n) for n in names])
        labels = np.concatenate([self.bench.splits[n].labels for n in names])
        args = (samples, labels, v.table(self.bench.class_embeddings), self.bench.seen(stage), self.bench.unseen(stage))
        return protocol.calibrate(*args) if bias is None else protocol.evaluate(*args, bias=bias)


def run_protocol(bench: Benchmark, variant: RidgeVariant = LEGACY) -> dict:
    """Both AVCA stages for one member (module doc); the result has the shape of ``Trainer.run``'s,
    plus ``seconds`` (wall time of both fits and evaluations) and ``variant``."""
    t0 = time.perf_counter()
    feats = _Features(bench)
    val = feats.metrics(feats.fit("stage_1_train", variant), variant, 1, None)
    test = feats.metrics(feats.fit("stage_2_train", variant), variant, 2, val.bias)
    return {"stage1_val": {"best_epoch": 0, "HM": val.HM, "bias": val.bias},
            "stage1_val_metrics": val.to_dict(), "stage2_test": test.to_dict(),
            "variant": asdict(variant), "seconds": time.perf_counter() - t0}


def select_and_run(bench: Benchmark, family: tuple[RidgeVariant, ...] = FAMILY) -> dict:
    """Choose the member with the best stage-1 validation HM, then run stage 2 for it alone.

    Returns ``run_protocol``'s result for the chosen member plus ``selection``: every member's
    validation HM and b (test is read for the chosen member only)."""
    if not family:
        raise UserError("ridge: the family to select from is empty")
    t0 = time.perf_counter()
    feats = _Features(bench)
    scored = []
    for v in family:
        val = feats.metrics(feats.fit("stage_1_train", v), v, 1, None)
        scored.append((v, val))
    best_v, best_val = max(scored, key=lambda item: item[1].HM)  # max keeps the first on ties
    test = feats.metrics(feats.fit("stage_2_train", best_v), best_v, 2, best_val.bias)
    return {"stage1_val": {"best_epoch": 0, "HM": best_val.HM, "bias": best_val.bias},
            "stage1_val_metrics": best_val.to_dict(), "stage2_test": test.to_dict(),
            "variant": asdict(best_v), "chosen": best_v.name,
            "selection": [{**asdict(v), "val_HM": m.HM, "bias": m.bias} for v, m in scored],
            "seconds": time.perf_counter() - t0}
