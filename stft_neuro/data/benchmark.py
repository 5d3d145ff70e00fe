"""The in-memory benchmark: six AVCA splits of per-second audio and visual feature sequences.

Every loader (synthetic, AVCA h5, TCaF pickles) returns one :class:`Benchmark`. Shapes:

- ``Split.audio``: ``(N, S, Da)`` float32, ``Split.visual``: ``(N, S, Dv)`` float32, seconds past a
  sample's length are zeros; ``Split.lengths``: ``(N,)`` int64, seconds (>= 1);
  ``Split.labels``: ``(N,)`` int64, indices into ``Benchmark.class_names``.
- ``Benchmark.class_embeddings``: ``(C, 300)`` float32, each row L2-normalised (word2vec).

Stages follow AVCA (Mercea et al., CVPR 2022): stage 1 trains on ``stage_1_train`` (classes
``seen(1)``) and validates on ``stage_1_val_seen`` (same classes, other samples) and
``stage_1_val_unseen`` (classes ``unseen(1)``); stage 2 trains on ``stage_2_train`` (classes
``seen(2)`` = ``seen(1) | unseen(1)``) and tests on ``stage_2_test_seen`` and
``stage_2_test_unseen`` (classes ``unseen(2)``).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SPLIT_NAMES: tuple[str, ...] = (
    "stage_1_train", "stage_1_val_seen", "stage_1_val_unseen",
    "stage_2_train", "stage_2_test_seen", "stage_2_test_unseen",
)
TRAIN_SPLITS: tuple[str, ...] = ("stage_1_train", "stage_2_train")
# Which split of each stage trains, and which evaluate its seen and unseen classes.
STAGE_SPLITS: dict[int, dict[str, str]] = {
    1: {"train": "stage_1_train", "seen": "stage_1_val_seen", "unseen": "stage_1_val_unseen"},
    2: {"train": "stage_2_train", "seen": "stage_2_test_seen", "unseen": "stage_2_test_unseen"},
}


@dataclass(frozen=True)
class Split:
    """One split: ``N`` samples of zero-padded per-second features (shapes in the module doc)."""

    audio: np.ndarray
    visual: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.audio.ndim != 3 or self.visual.ndim != 3:
            raise ValueError(f"Split: audio/visual must be (N, S, D), got {self.audio.shape}, {self.visual.shape}")
        if self.audio.shape[:2] != self.visual.shape[:2] or self.audio.shape[0] != n or self.lengths.shape != (n,):
            raise ValueError(f"Split: inconsistent shapes audio {self.audio.shape}, visual {self.visual.shape}, "
                             f"lengths {self.lengths.shape}, labels {self.labels.shape}")
        if n and (self.lengths.min() < 1 or self.lengths.max() > self.audio.shape[1]):
            raise ValueError(f"Split: lengths must lie in 1..{self.audio.shape[1]}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def max_seconds(self) -> int:
        """``S``, the padded sequence length."""
        return int(self.audio.shape[1])

    def mask(self) -> np.ndarray:
        """``(N, S)`` bool, True on the seconds each sample really has."""
        return np.arange(self.max_seconds)[None, :] < self.lengths[:, None]

    def subset(self, index: np.ndarray) -> Split:
        """The samples at ``index`` (int array), in that order."""
        return Split(self.audio[index], self.visual[index], self.lengths[index], self.labels[index])

    def batches(self, batch_size: int, shuffle: bool = False,
                rng: np.random.Generator | None = None) -> Iterator[Split]:
        """Consecutive sub-splits of at most ``batch_size`` samples; shuffled with ``rng`` (required
        when ``shuffle``), so that the order is reproducible."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        order = np.arange(len(self))
        if shuffle:
            if rng is None:
                raise ValueError("batches(shuffle=True) needs an rng (numpy Generator)")
            order = rng.permutation(len(self))
        for start in range(0, len(self), batch_size):
            yield self.subset(order[start:start + batch_size])


@dataclass(frozen=True)
class Benchmark:
    """A whole AV-GZSL benchmark (see the module doc for the stage structure).

    ``stage_classes[stage]["seen" | "unseen"]``: sorted int64 arrays of class indices.
    ``source``: how it was made (e.g. ``"synthetic (real UCF split + word2vec)"``, ``"avca"``);
    ``root``: the folder it came from, or None.
    """

    name: str
    class_names: tuple[str, ...]
    class_embeddings: np.ndarray
    stage_classes: dict[int, dict[str, np.ndarray]]
    splits: dict[str, Split]
    source: str = "synthetic"
    root: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        c = len(self.class_names)
        if self.class_embeddings.shape[0] != c:
            raise ValueError(f"Benchmark: {c} class names but {self.class_embeddings.shape[0]} embeddings")
        missing = [s for s in SPLIT_NAMES if s not in self.splits]
        if missing:
            raise ValueError(f"Benchmark: missing splits {missing}")
        dims = {(sp.audio.shape[2], sp.visual.shape[2]) for sp in self.splits.values()}
        if len(dims) != 1:
            raise ValueError(f"Benchmark: splits disagree on feature widths {sorted(dims)}")
        for stage, parts in STAGE_SPLITS.items():
            seen, unseen = set(self.seen(stage).tolist()), set(self.unseen(stage).tolist())
            if seen & unseen:
                raise ValueError(f"Benchmark: stage {stage} seen and unseen classes overlap")
            for role, split in (("seen", parts["train"]), ("seen", parts["seen"]), ("unseen", parts["unseen"])):
                allowed = seen if role == "seen" else unseen
                got = set(np.unique(self.splits[split].labels).tolist())
                if not got <= allowed:
                    raise ValueError(f"Benchmark: split {split} holds labels outside stage {stage} {role} classes")

    def seen(self, stage: int) -> np.ndarray:
        """Class indices seen in training at ``stage`` (1 or 2)."""
        return self.stage_classes[stage]["seen"]

    def unseen(self, stage: int) -> np.ndarray:
        """Class indices unseen at ``stage``, evaluated zero-shot."""
        return self.stage_classes[stage]["unseen"]

    @property
    def audio_dim(self) -> int:
        return int(self.splits["stage_1_train"].audio.shape[2])

    @property
    def visual_dim(self) -> int:
        return int(self.splits["stage_1_train"].visual.shape[2])

    @property
    def max_seconds(self) -> int:
        return max(sp.max_seconds for sp in self.splits.values())

    def summary(self) -> dict[str, Any]:
        """Plain-JSON description: dataset, source, class counts per stage, samples per split,
        feature shapes (audio dim, visual dim, max seconds)."""
        return {
            "dataset": self.name,
            "source": self.source,
            "root": self.root,
            "classes": {
                "total": len(self.class_names),
                **{f"stage_{s}": {"seen": int(len(self.seen(s))), "unseen": int(len(self.unseen(s)))}
                   for s in STAGE_SPLITS},
            },
            "samples": {name: len(self.splits[name]) for name in SPLIT_NAMES},
            "features": {"audio_dim": self.audio_dim, "visual_dim": self.visual_dim,
                         "max_seconds": self.max_seconds,
                         "embedding_dim": int(self.class_embeddings.shape[1])},
        }

    def summary_table(self) -> str:
        """A short human-readable table of :meth:`summary`."""
        s = self.summary()
        f = s["features"]
        lines = [
            f"benchmark {s['dataset']} ({s['source']})" + (f" from {s['root']}" if s["root"] else ""),
            f"  classes: {s['classes']['total']} total; "
            + "; ".join(f"stage {k[-1]}: {v['seen']} seen / {v['unseen']} unseen"
                        for k, v in s["classes"].items() if k.startswith("stage_")),
            f"  features: audio {f['audio_dim']}-d, visual {f['visual_dim']}-d, up to {f['max_seconds']} s; "
            f"class embeddings {f['embedding_dim']}-d",
            f"  {'split':<22}{'samples':>8}{'classes':>9}",
        ]
        for name in SPLIT_NAMES:
            sp = self.splits[name]
            lines.append(f"  {name:<22}{len(sp):>8}{len(np.unique(sp.labels)):>9}")
        return "\n".join(lines)


def stage_classes_from_names(class_names: tuple[str, ...],
                             split_classes: dict[str, tuple[str, ...]]) -> dict[int, dict[str, np.ndarray]]:
    """``{1: {"seen", "unseen"}, 2: {...}}`` index arrays from the class names of each split file."""
    index = {name: i for i, name in enumerate(class_names)}

    def idx(split: str) -> np.ndarray:
        return np.array(sorted(index[n] for n in split_classes[split]), dtype=np.int64)

    return {1: {"seen": idx("stage_1_train"), "unseen": idx("stage_1_val_unseen")},
            2: {"seen": idx("stage_2_train"), "unseen": idx("stage_2_test_unseen")}}


def pad_sequences(seqs: list[np.ndarray], max_seconds: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stack ``T_i x D`` arrays into ``(N, S, D)`` float32 zero-padded, and ``(N,)`` int64 lengths.
    ``S`` is ``max_seconds`` or the longest sequence."""
    lengths = np.array([s.shape[0] for s in seqs], dtype=np.int64)
    width = seqs[0].shape[1] if seqs else 0
    s_max = int(max_seconds if max_seconds is not None else (lengths.max() if len(seqs) else 1))
    out = np.zeros((len(seqs), s_max, width), dtype=np.float32)
    for i, s in enumerate(seqs):
        out[i, :s.shape[0]] = s
    return out, lengths
