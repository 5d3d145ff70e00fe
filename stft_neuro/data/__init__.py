"""Benchmarks for audio-visual generalised zero-shot learning.

:func:`load_benchmark` reads ``DataConfig.source``: ``"synthetic"`` (``synthetic.py``, generated
features on the real or generated class split), ``"avca"`` (``avca.py``, h5 features) or ``"tcaf"``
(``tcaf.py``, pickled per-second sequences; needs ``allow_pickle``). All return a
:class:`~stft_neuro.data.benchmark.Benchmark`.
"""
from __future__ import annotations

from stft_neuro.config import DataConfig
from stft_neuro.data.benchmark import SPLIT_NAMES, STAGE_SPLITS, Benchmark, Split
from stft_neuro.errors import DataError

__all__ = ["Benchmark", "Split", "SPLIT_NAMES", "STAGE_SPLITS", "load_benchmark"]


def load_benchmark(cfg: DataConfig) -> Benchmark:
    """The benchmark ``cfg`` describes (see the module doc)."""
    if cfg.source == "synthetic":
        from stft_neuro.data.synthetic import load_synthetic
        return load_synthetic(cfg)
    if cfg.source == "avca":
        from stft_neuro.data.avca import load_avca
        return load_avca(cfg)
    if cfg.source == "tcaf":
        from stft_neuro.data.tcaf import load_tcaf
        return load_tcaf(cfg)
    raise DataError(f"data.source {cfg.source!r}: expected synthetic, avca or tcaf")
