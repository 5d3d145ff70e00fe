"""AVCA's feature layout: one h5 file per class and split (Mercea et al., CVPR 2022).

``<root>/features/{main_features|cls_features}/{audio,video,text}/stage_*/<Class>.h5``, each with
datasets ``data`` and ``video_urls`` (AVCA ``src/utils.py: read_features``). AVCA's features are
averaged over time: ``data`` is ``(N, D)``, read here as N sequences of one second. A 3-D ``data``
``(N, T, D)`` is read as N sequences of T seconds. Everything else (splits, word2vec, checks) is
in ``features.py``.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from stft_neuro.config import DataConfig
from stft_neuro.data.benchmark import Benchmark
from stft_neuro.data.features import build_benchmark
from stft_neuro.errors import DataError


def read_h5(path: Path) -> tuple[list[np.ndarray], list[str]]:
    """One class file -> (sequences ``(T, D)`` float32, video names)."""
    try:
        with h5py.File(path, "r") as f:
            if "data" not in f:
                raise DataError(f"feature file {path}: no 'data' dataset")
            data = np.asarray(f["data"][()], dtype=np.float32)
            urls = [u.decode("utf-8") if isinstance(u, bytes) else str(u) for u in f["video_urls"][()]] \
                if "video_urls" in f else [f"{path.stem}_{i}" for i in range(len(data))]
    except OSError as exc:
        raise DataError(f"feature file {path}: not a readable h5 file ({exc})") from None
    if data.ndim == 2:
        seqs = [row[None, :] for row in data]
    elif data.ndim == 3:
        seqs = list(data)
    else:
        raise DataError(f"feature file {path}: 'data' has shape {data.shape}, expected (N, D) or (N, T, D)")
    return seqs, urls


def load_avca(cfg: DataConfig) -> Benchmark:
    """The AVCA benchmark at ``cfg.root`` (see ``features.py`` for the layout and checks)."""
    return build_benchmark(cfg, ".h5", read_h5, "avca")
