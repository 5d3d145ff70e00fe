"""Paired comparison of variants over seeds: mean +- sd and the paired difference's 95% t-interval.

Each variant ``v`` and the reference (the full STFT) are run on the same seeds; seed ``k`` fixes the
synthetic data (``data.seed``) and the training (``train.seed``) for both, so the difference
``d_k = HM_v(k) - HM_ref(k)`` removes the part of the seed-to-seed spread that the two share (the
data draw). The interval is ``mean(d) +- t_{0.975, n-1} sd(d) / sqrt(n)`` (Student's t for the mean
of ``n`` paired differences; it assumes the ``d_k`` are independent and roughly normal).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

from stft_neuro.errors import UserError

# Two-sided 95% critical values t_{0.975, df} of Student's t, df = 1..30 (standard table, e.g.
# NIST/SEMATECH e-Handbook of Statistical Methods, 1.3.6.7.2; scipy.stats.t.ppf(0.975, df) agrees
# to 3 decimals, checked in tests/test_baselines.py when scipy is present).
T_975: tuple[float, ...] = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)
Z_975 = 1.960  # the normal limit, used for df > 30 (t_{0.975, 30} = 2.042; the error is < 4%)


def t_critical(df: int) -> float:
    """``t_{0.975, df}``: the two-sided 95% critical value of Student's t with ``df >= 1``."""
    if df < 1:
        raise UserError(f"t_critical: need df >= 1 (at least 2 paired seeds), got {df}")
    return T_975[df - 1] if df <= len(T_975) else Z_975


@dataclass(frozen=True)
class PairedDifference:
    """``mean`` of ``d_k = variant_k - reference_k`` over ``n`` paired seeds, its ``sd`` and the 95%
    t-interval ``[low, high]`` (metric units, e.g. HM points). ``separated``: the interval excludes 0."""

    n: int
    mean: float
    sd: float
    low: float
    high: float

    @property
    def separated(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return {**asdict(self), "separated": self.separated}


def paired_difference(variant: dict[int, float], reference: dict[int, float]) -> PairedDifference:
    """Paired difference over the seeds both dicts (seed -> metric) have; needs >= 2 such seeds."""
    seeds = sorted(set(variant) & set(reference))
    if len(seeds) < 2:
        raise UserError(f"paired_difference: need at least 2 common seeds, got {len(seeds)}")
    d = [variant[s] - reference[s] for s in seeds]
    mean, sd = statistics.mean(d), statistics.stdev(d)
    half = t_critical(len(d) - 1) * sd / math.sqrt(len(d))
    return PairedDifference(n=len(d), mean=mean, sd=sd, low=mean - half, high=mean + half)


def mean_sd(xs: list[float]) -> tuple[float, float]:
    """Mean and sample sd (0 for one value) of a non-empty list."""
    if not xs:
        raise UserError("mean_sd: no values")
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)
