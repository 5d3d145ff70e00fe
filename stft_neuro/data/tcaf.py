"""TCaF's feature layout: one pickle per class and split (Mercea et al., ECCV 2022).

Same folders as AVCA (TCaF's README: "the dataset structure is identical to AVCA"), with temporal
features: ``<root>/features/{main_features|cls_features}/{audio,video}/stage_*/<Class>.pkl``, each a
pickled dict ``{'features': [T_i x D arrays], 'video_names': [...], 'fps': [...]}`` (TCaF
``src/utils.py: read_features``). Loading a pickle can execute arbitrary code, so these files are
read only when ``DataConfig.allow_pickle`` is true (``--set data.allow_pickle=true`` or
``--allow-pickle``); otherwise :func:`load_tcaf` raises DataError before opening any file.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from stft_neuro.config import DataConfig
from stft_neuro.data.benchmark import Benchmark
from stft_neuro.data.features import build_benchmark
from stft_neuro.errors import DataError

PICKLE_REFUSAL = ("TCaF features are pickle files, and loading a pickle can run arbitrary code; if you "
                  "trust {where}, allow it with --set data.allow_pickle=true (or --allow-pickle)")


def read_pickle(path: Path) -> tuple[list[np.ndarray], list[str]]:
    """One class file -> (sequences ``(T_i, D)`` float32, video names). Call only when allowed."""
    try:
        with path.open("rb") as f:
            obj = pickle.load(f)  # noqa: S301 - only with DataConfig.allow_pickle (see module doc)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        raise DataError(f"feature file {path}: not a readable pickle ({exc})") from None
    if not isinstance(obj, dict) or "features" not in obj:
        raise DataError(f"feature file {path}: expected a dict with 'features' and 'video_names'")
    seqs = []
    for s in obj["features"]:
        arr = np.asarray(s, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None, :]
        seqs.append(arr)
    names = [str(n) for n in obj.get("video_names", [f"{path.stem}_{i}" for i in range(len(seqs))])]
    return seqs, names


def load_tcaf(cfg: DataConfig) -> Benchmark:
    """The TCaF benchmark at ``cfg.root``; refuses unless ``cfg.allow_pickle``."""
    if not cfg.allow_pickle:
        raise DataError(PICKLE_REFUSAL.format(where=f"the files under {cfg.root}"))
    return build_benchmark(cfg, ".pkl", read_pickle, "tcaf")
