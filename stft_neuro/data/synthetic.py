"""A synthetic AV-GZSL benchmark: per-second audio and visual features generated from class embeddings.

Why: the real SeLaVi/C3D/VGGish features cannot be downloaded here. The generator keeps what makes
the benchmark a zero-shot problem: features are a fixed nonlinear function of the class's word2vec
embedding, shared by all classes, so a model that learns embedding <-> features on seen classes can
recognise unseen ones; and it adds what makes it hard: intra-class variation, a class-specific part
that word2vec does not explain (so seen classes are easier, as on the real benchmark), background
seconds, a slow nuisance trajectory and noise.

Model of one sample of class ``c`` (embedding ``e_c``, 300-d unit), length ``T`` seconds
(uniform in ``min_seconds..max_seconds``), for each modality ``m`` (audio, visual; width ``D_m``):

- ``e_i = normalize(e_c + TAU * g)``, ``g ~ N(0, I/300)``: the sample's own semantics;
- ``u_i = f_m(e_i) + RHO * o_{c,m}``: ``f_m(e) = (tanh(GAIN * e A1_m + b1_m) A2_m - mu_m) / sd_m + bias_m``,
  a random 2-layer tanh network (``HIDDEN`` units) per modality, its output standardised on reference
  embeddings; ``o_{c,m} ~ N(0, I)`` fixed per class (keyed by the class name);
- an event: ``k = max(1, round(f T))`` consecutive seconds, ``f ~ U(data.event_fraction)`` (default
  ``EVENT_FRAC``), at a random start;
  the visual window is the audio window shifted by -1, 0 or +1 s (clipped); over its window a
  modality carries ``w_t = sin(pi (t - start + 1/2) / k)`` of the class signal;
- background: ``f_m(beta)`` of one of ``NUM_BACKGROUNDS`` fixed non-class embeddings, weight
  ``BACKGROUND (1 - w_t)``;
- a nuisance trajectory: an AR(1) latent (``LATENT`` dims, coefficient ``AR``) shared by both
  modalities, projected per modality with weight ``DRIFT``;
- noise ``N(0, noise^2)`` per second and dimension (``DataConfig.noise``).

Mean pooling over seconds dilutes the event with background; a temporal model can find it.

Calibration (``DataConfig.noise`` default 1.25, ``RHO`` 0.5). Re-measured 2026-11-26 (issue #11) with
the project's ridge baseline (``stft_neuro.baselines.ridge``: standardised mean-pooled features ->
word2vec, lambda 100, AVCA protocol with b chosen on stage-1 validation), real UCF split, seeds 0 / 1 / 2,
stage-2 test: small sizes S 56.5 / 49.7 / 53.9, ZSL 22.2 / 11.1 / 6.9, HM 31.9 / 18.2 / 12.3 %; real
sizes S 76.7 / 73.7 / 73.3, ZSL 19.1 / 19.1 / 15.1, HM 30.5 / 30.3 / 25.0 % (chance: HM 2.0, ZSL
11.1). (This docstring used to quote ZSL 34.7 / 20.8 / 20.8 for a ridge "on stage_2_train"; that
fit is not reproduced by the code here, nor are issue #11's HM 42.1 / 23.7 / 23.8.) The generator's
draws are unchanged by issue #11: ``sizes="small"`` output is byte-identical to before.

What this generator can and cannot show (measured on real-size UCF, seed 0, stage-1 validation,
by bench/bench_quality_ceiling.py): the features of a class seen in training are
almost perfectly separable after mean pooling (a ridge fit that includes half of the val-unseen
samples classifies the other half at 99.8 %), so a temporal model has little to gain on the
feature side; an oracle that knows ``f_m`` recognises unseen classes at 73.9 % (chance 8.3 %), but
from 30 seen classes a linear map reaches 12.2 %: 74 % of an unseen class's word2vec norm lies
outside the span of the seen classes' vectors, and the tanh map ``f_m`` (``GAIN`` 2.5) leaves 98 %
of ``f_m(e_unseen)`` unexplained by the same combination of seen classes' ``f_m``. Semantic transfer,
not temporal evidence, bounds U and therefore HM here.

Classes: with a split root (``DataConfig.root``), the real class split (class names per stage) and
the real word2vec embeddings; otherwise ``generated_classes`` unit vectors in 300-d around
``max(2, C // 6)`` cluster centres (cosine to the centre about 0.7), with ``generated_unseen`` stage-2
unseen and ``generated_val_unseen`` stage-1 val-unseen classes.

Samples per class (``DataConfig.sizes``): ``"small"``: ``train_per_class`` in the train splits,
``eval_per_class`` in val/test splits (default 24 / 8: the demo and the tests; UCF then has 72
unseen test samples). ``"real"``: exactly the per-class counts of the real split's per-sample CSV
files (``splits.read_split_counts``), class imbalance included; for UCF-GZSL 3,174 / 353 / 1,467 /
4,994 / 555 / 1,267 samples in the six splits (the issue #11 finding: with 8 test samples per class
the seed spread of HM is about +-10 points and no ablation can be ranked). Stage-2 train samples are
generated afresh (AVCA reuses the stage-1 samples; here that only changes which noise they carry).

Determinism: every random draw comes from ``numpy.random.Generator(PCG64)`` seeded by a
``SeedSequence`` keyed on ``(seed, purpose, ...)`` - the maps on ``(seed, MAPS)``, a class's offset on
``(seed, OFFSET, crc32(class name))``, a split's samples of a class on ``(seed, SAMPLES, split
index, crc32(class name))`` - so the output is byte-identical for one config, independent of dict
or iteration order, and a class's samples do not change when other classes are added.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from stft_neuro.config import DataConfig
from stft_neuro.data.benchmark import SPLIT_NAMES, TRAIN_SPLITS, Benchmark, Split, stage_classes_from_names
from stft_neuro.data.splits import ClassSplit, class_embeddings, read_class_split, read_split_counts, resolve_root
from stft_neuro.errors import ConfigError

EMBED_DIM = 300
HIDDEN = 256
GAIN = 2.5          # tanh pre-activation scale: makes f_m clearly nonlinear
TAU = 0.4           # intra-class semantic jitter (norm of the perturbation of e_c)
RHO = 0.5           # class-specific offset that word2vec does not explain, per dimension
BACKGROUND = 0.8    # weight of the background signal on non-event seconds
NUM_BACKGROUNDS = 16
LATENT = 8
AR = 0.8
DRIFT = 0.5
EVENT_FRAC = (0.3, 0.6)  # DataConfig.event_fraction's default: the calibrated benchmark
NUM_REFERENCE = 512

_MAPS, _OFFSET, _SAMPLES, _CLASSES = 1, 2, 3, 4


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed % (1 << 64), *keys])))


def _name_key(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class _Modality:
    """The fixed random map ``f_m`` and nuisance projection of one modality (see module doc)."""

    def __init__(self, rng: np.random.Generator, dim: int) -> None:
        self.a1 = rng.standard_normal((EMBED_DIM, HIDDEN)) * (GAIN / np.sqrt(EMBED_DIM))
        self.b1 = rng.standard_normal(HIDDEN) * 0.5
        self.a2 = rng.standard_normal((HIDDEN, dim)) / np.sqrt(HIDDEN)
        self.bias = rng.standard_normal(dim) * 0.5
        self.drift = rng.standard_normal((LATENT, dim)) * (DRIFT / np.sqrt(LATENT))
        ref = self._raw(_unit(rng.standard_normal((NUM_REFERENCE, EMBED_DIM))))
        self.mu = ref.mean(axis=0)
        self.sd = float(ref.std())

    def _raw(self, e: np.ndarray) -> np.ndarray:
        return np.tanh(e @ self.a1 + self.b1) @ self.a2

    def __call__(self, e: np.ndarray) -> np.ndarray:
        """``(..., 300)`` embeddings -> ``(..., D)`` standardised class signals."""
        return (self._raw(e) - self.mu) / self.sd + self.bias


def generated_classes(cfg: DataConfig) -> tuple[tuple[str, ...], np.ndarray, dict[str, tuple[str, ...]]]:
    """Class names ``class_000..``, ``(C, 300)`` unit embeddings and the six splits' class names."""
    c, n_unseen, n_val = cfg.generated_classes, cfg.generated_unseen, cfg.generated_val_unseen
    if n_unseen < 1 or n_val < 1 or c - n_unseen - n_val < 1:
        raise ConfigError("config: data.generated_classes must exceed data.generated_unseen + "
                          "data.generated_val_unseen, each >= 1")
    rng = _rng(cfg.seed, _CLASSES)
    centres = _unit(rng.standard_normal((max(2, c // 6), EMBED_DIM)))
    member = rng.integers(0, len(centres), size=c)
    emb = _unit(centres[member] + rng.standard_normal((c, EMBED_DIM)) / np.sqrt(EMBED_DIM)).astype(np.float32)
    names = tuple(f"class_{i:03d}" for i in range(c))
    order = rng.permutation(c)
    unseen2 = tuple(sorted(names[i] for i in order[:n_unseen]))
    unseen1 = tuple(sorted(names[i] for i in order[n_unseen:n_unseen + n_val]))
    seen1 = tuple(sorted(names[i] for i in order[n_unseen + n_val:]))
    seen2 = tuple(sorted(seen1 + unseen1))
    split = {"stage_1_train": seen1, "stage_1_val_seen": seen1, "stage_1_val_unseen": unseen1,
             "stage_2_train": seen2, "stage_2_test_seen": seen2, "stage_2_test_unseen": unseen2}
    return names, emb, split


def _class_samples(cfg: DataConfig, mods: tuple[_Modality, _Modality], backgrounds: np.ndarray,
                   embedding: np.ndarray, name: str, split_index: int, n: int) -> tuple[np.ndarray, ...]:
    """``n`` samples of one class in one split: audio (n,S,Da), visual (n,S,Dv), lengths (n,)."""
    s_max = cfg.max_seconds
    offsets = _rng(cfg.seed, _OFFSET, _name_key(name))
    off = [offsets.standard_normal(m.bias.shape[0]) * RHO for m in mods]
    rng = _rng(cfg.seed, _SAMPLES, split_index, _name_key(name))
    lengths = rng.integers(cfg.min_seconds, cfg.max_seconds + 1, size=n)
    e = _unit(embedding[None, :] + rng.standard_normal((n, EMBED_DIM)) * (TAU / np.sqrt(EMBED_DIM)))
    k = np.maximum(1, np.rint(rng.uniform(*cfg.event_fraction, size=n) * lengths)).astype(np.int64)
    start = (rng.uniform(size=n) * (lengths - k + 1)).astype(np.int64)
    shift = rng.integers(-1, 2, size=n)
    bg = backgrounds[rng.integers(0, len(backgrounds), size=n)]
    z = np.empty((n, s_max, LATENT))
    z[:, 0] = rng.standard_normal((n, LATENT))
    innov = rng.standard_normal((n, s_max, LATENT)) * np.sqrt(1 - AR * AR)
    for t in range(1, s_max):
        z[:, t] = AR * z[:, t - 1] + innov[:, t]
    t_grid = np.arange(s_max)[None, :]
    valid = t_grid < lengths[:, None]
    out = []
    for m, (mod, o) in enumerate(zip(mods, off)):
        st = start if m == 0 else np.clip(start + shift, 0, lengths - k)
        phase = (t_grid - st[:, None] + 0.5) / k[:, None]
        w = np.where((phase > 0) & (phase < 1), np.sin(np.pi * np.clip(phase, 0, 1)), 0.0)
        u = mod(e) + o
        x = w[..., None] * u[:, None, :] + (BACKGROUND * (1 - w))[..., None] * mod(bg)[:, None, :]
        x += z @ mod.drift
        x += rng.standard_normal(x.shape) * cfg.noise
        x *= valid[..., None]
        out.append(x.astype(np.float32))
    return out[0], out[1], lengths.astype(np.int64)


def generate(cfg: DataConfig, split: ClassSplit | None = None, embeddings: np.ndarray | None = None,
             source: str = "synthetic (generated classes)", root: Path | None = None,
             counts: dict[str, dict[str, int]] | None = None) -> Benchmark:
    """The synthetic benchmark for ``cfg``; with ``split`` and ``embeddings`` (rows in the order of
    ``split.all_classes``) the real classes, otherwise generated ones. ``counts``
    (``{split: {class: n}}``, see ``splits.read_split_counts``) sets the samples of each class in
    each split; without it every class gets ``train_per_class`` / ``eval_per_class``."""
    if split is None:
        names, emb, split_classes = generated_classes(cfg)
    else:
        names, emb, split_classes = split.all_classes, embeddings, split.classes
    assert emb is not None
    mrng = _rng(cfg.seed, _MAPS)
    mods = (_Modality(mrng, cfg.audio_dim), _Modality(mrng, cfg.visual_dim))
    backgrounds = _unit(mrng.standard_normal((NUM_BACKGROUNDS, EMBED_DIM)))
    index = {n: i for i, n in enumerate(names)}
    splits = {}
    for s_idx, split_name in enumerate(SPLIT_NAMES):
        default = cfg.train_per_class if split_name in TRAIN_SPLITS else cfg.eval_per_class
        classes = sorted(split_classes[split_name], key=index.__getitem__)
        per = {c: (counts[split_name][c] if counts is not None else default) for c in classes}
        parts = [_class_samples(cfg, mods, backgrounds, emb[index[c]].astype(np.float64), c, s_idx, per[c])
                 for c in classes]
        labels = np.concatenate([np.full(per[c], index[c], dtype=np.int64) for c in classes])
        splits[split_name] = Split(audio=np.concatenate([p[0] for p in parts]),
                                   visual=np.concatenate([p[1] for p in parts]),
                                   lengths=np.concatenate([p[2] for p in parts]), labels=labels)
    return Benchmark(name=cfg.dataset, class_names=tuple(names),
                     class_embeddings=np.ascontiguousarray(emb, dtype=np.float32),
                     stage_classes=stage_classes_from_names(tuple(names), split_classes), splits=splits,
                     source=source, root=str(root) if root else None,
                     info={"noise": cfg.noise, "seed": cfg.seed,
                           "sizes": "real" if counts is not None else "small"})


def load_synthetic(cfg: DataConfig) -> Benchmark:
    """Resolve ``cfg.root`` (see ``splits.resolve_root``): with a folder, its real class split and
    word2vec; otherwise generated classes. ``cfg.sizes == "real"`` takes the per-class sample counts
    from the folder's per-sample CSV files (ConfigError without a folder)."""
    root = resolve_root(cfg)
    if root is None:
        if cfg.sizes == "real":
            raise ConfigError(f"config: data.sizes=real needs the real {cfg.dataset} class split "
                              "(data.root = a folder with class-split/main_split/stage_*.csv, or auto)")
        return generate(cfg)
    split = read_class_split(root, cfg.dataset)
    counts = read_split_counts(split) if cfg.sizes == "real" else None
    emb = class_embeddings(root, cfg.dataset, split.all_classes)
    label = ", real sizes" if counts is not None else ""
    return generate(cfg, split, emb, source=f"synthetic (real {cfg.dataset} split + word2vec{label})",
                    root=root, counts=counts)
