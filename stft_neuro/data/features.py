"""Assemble a :class:`Benchmark` from per-class feature files in AVCA's folder layout.

Shared by ``avca.py`` (h5) and ``tcaf.py`` (pickles), which only supply a reader::

    <root>/features/<kind>/{audio,video}/<split>/<Class>.<ext>     kind: main_features | cls_features
    <root>/class-split/{main_split|cls_split}/<split>.txt           (see splits.py)

``kind``: ``main_features`` when that folder exists, else ``cls_features``; the class split is
``main_split`` or ``cls_split`` to match (``main_split`` if the ``cls_split`` folder is absent).
A class file is found by its class name, case-insensitively (as AVCA matches UCF/ActivityNet names).
``stage_2_train`` is read from its own folder if there is one, else, as AVCA does, it is the union of
``stage_1_train``, ``stage_1_val_seen`` and ``stage_1_val_unseen``.
Audio and video files of a class must list the same videos in the same order; a video whose audio
and visual sequences differ in length is cut to the shorter (TCaF's per-second rates can differ by
a second). All splits are zero-padded to the longest sequence of the benchmark.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from stft_neuro.config import DataConfig
from stft_neuro.data.benchmark import SPLIT_NAMES, Benchmark, Split, pad_sequences, stage_classes_from_names
from stft_neuro.data.splits import ClassSplit, class_embeddings, read_class_split, resolve_root
from stft_neuro.errors import DataError

# path -> (sequences, each (T_i, D) float32 with T_i >= 1; video names, one per sequence)
Reader = Callable[[Path], tuple[list[np.ndarray], list[str]]]
MODALITIES = ("audio", "video")
_STAGE_2_TRAIN_PARTS = ("stage_1_train", "stage_1_val_seen", "stage_1_val_unseen")


def dataset_root(cfg: DataConfig) -> Path:
    """The dataset folder of ``cfg.root`` (DataError when there is none)."""
    root = resolve_root(cfg)
    if root is None:
        raise DataError(f"data.source={cfg.source} needs a dataset folder: set data.root to the "
                        f"{cfg.dataset} folder that holds features/ and class-split/")
    return root


def feature_kind(root: Path) -> str:
    for kind in ("main_features", "cls_features"):
        if (root / "features" / kind).is_dir():
            return kind
    raise DataError(f"no feature folder {root / 'features' / 'main_features'} (or cls_features)")


def _class_file(folder: Path, cls: str, ext: str) -> Path:
    exact = folder / f"{cls}{ext}"
    if exact.is_file():
        return exact
    folded = [p for p in folder.glob(f"*{ext}") if p.stem.lower() == cls.lower()]
    if len(folded) != 1:
        raise DataError(f"feature file for class {cls!r} missing: {exact}")
    return folded[0]


class _Widths:
    """Checks that every file of a modality has the width of the first one read."""

    def __init__(self) -> None:
        self.width: dict[str, tuple[int, Path]] = {}

    def check(self, modality: str, path: Path, seqs: list[np.ndarray]) -> None:
        widths = {s.shape[1] for s in seqs}
        if len(widths) != 1:
            raise DataError(f"feature file {path}: sequences of different widths {sorted(widths)}")
        w = widths.pop()
        first = self.width.setdefault(modality, (w, path))
        if first[0] != w:
            raise DataError(f"feature file {path}: {modality} width {w} differs from {first[0]} in {first[1]}")


def _read_checked(reader: Reader, path: Path) -> tuple[list[np.ndarray], list[str]]:
    seqs, names = reader(path)
    if not seqs:
        raise DataError(f"feature file {path} holds no samples")
    if len(names) != len(seqs):
        raise DataError(f"feature file {path}: {len(seqs)} samples but {len(names)} video names")
    for s in seqs:
        if s.ndim != 2 or s.shape[0] < 1:
            raise DataError(f"feature file {path}: a sample has shape {s.shape}, expected (seconds >= 1, D)")
        if not np.isfinite(s).all():
            raise DataError(f"feature file {path}: non-finite values")
    return seqs, names


def _read_split(root: Path, kind: str, split: str, classes: tuple[str, ...], ext: str, reader: Reader,
                widths: _Widths, index: dict[str, int]) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    audio, video, labels = [], [], []
    folders = {m: root / "features" / kind / m / split for m in MODALITIES}
    for m, folder in folders.items():
        if not folder.is_dir():
            raise DataError(f"feature folder {folder} does not exist")
        wanted = {c.lower() for c in classes}
        for p in sorted(folder.glob(f"*{ext}")):
            if p.stem.lower() not in wanted:
                raise DataError(f"feature file {p} names a class that split {split} does not list")
    for cls in classes:
        per = {}
        for m in MODALITIES:
            path = _class_file(folders[m], cls, ext)
            seqs, names = _read_checked(reader, path)
            widths.check(m, path, seqs)
            per[m] = (path, seqs, names)
        (pa, sa, na), (pv, sv, nv) = per["audio"], per["video"]
        if na != nv:
            raise DataError(f"feature files {pa} and {pv} list different videos")
        for a, v in zip(sa, sv):
            t = min(a.shape[0], v.shape[0])
            audio.append(a[:t])
            video.append(v[:t])
            labels.append(index[cls])
    return audio, video, labels


def build_benchmark(cfg: DataConfig, ext: str, reader: Reader, source: str) -> Benchmark:
    """Read every split's class files with ``reader`` (see the module doc for the layout)."""
    root = dataset_root(cfg)
    kind = feature_kind(root)
    split_kind = "cls" if kind == "cls_features" and (root / "class-split" / "cls_split").is_dir() else "main"
    split: ClassSplit = read_class_split(root, cfg.dataset, split_kind)
    names = split.all_classes
    emb = class_embeddings(root, cfg.dataset, names)
    index = {n: i for i, n in enumerate(names)}
    widths = _Widths()
    raw: dict[str, tuple[list[np.ndarray], list[np.ndarray], list[int]]] = {}
    for name in SPLIT_NAMES:
        if name == "stage_2_train" and not (root / "features" / kind / "audio" / name).is_dir():
            continue
        raw[name] = _read_split(root, kind, name, split.classes[name], ext, reader, widths, index)
    if "stage_2_train" not in raw:
        parts = [raw[p] for p in _STAGE_2_TRAIN_PARTS]
        raw["stage_2_train"] = tuple(sum((list(p[i]) for p in parts), []) for i in range(3))  # type: ignore[assignment]
    s_max = max(s.shape[0] for a, _, _ in raw.values() for s in a)
    splits = {}
    for name in SPLIT_NAMES:
        a, v, labels = raw[name]
        audio, lengths = pad_sequences(a, s_max)
        visual, _ = pad_sequences(v, s_max)
        splits[name] = Split(audio=audio, visual=visual, lengths=lengths, labels=np.array(labels, dtype=np.int64))
    return Benchmark(name=cfg.dataset, class_names=names, class_embeddings=emb,
                     stage_classes=stage_classes_from_names(names, split.classes), splits=splits,
                     source=f"{source} ({kind})", root=str(root), info={"kind": kind})
