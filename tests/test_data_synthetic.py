"""The synthetic generator: determinism, AVCA split structure, the real UCF split, learnability."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from stft_neuro import protocol
from stft_neuro.config import DataConfig
from stft_neuro.data import SPLIT_NAMES, load_benchmark
from stft_neuro.data.benchmark import Benchmark
from stft_neuro.errors import ConfigError

SHARED_UCF = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "avgzsl" / "UCF"
SMALL = DataConfig(root="none", audio_dim=16, visual_dim=12, train_per_class=3, eval_per_class=2,
                   generated_classes=12, generated_unseen=3, generated_val_unseen=2, max_seconds=6)


def arrays(b: Benchmark) -> list[np.ndarray]:
    out = [b.class_embeddings]
    for name in SPLIT_NAMES:
        sp = b.splits[name]
        out += [sp.audio, sp.visual, sp.lengths, sp.labels]
    return out


def test_deterministic_byte_for_byte() -> None:
    a, b = load_benchmark(SMALL), load_benchmark(SMALL)
    assert a.class_names == b.class_names
    assert all(x.tobytes() == y.tobytes() for x, y in zip(arrays(a), arrays(b)))
    c = load_benchmark(dataclasses.replace(SMALL, seed=1))
    assert c.splits["stage_1_train"].audio.tobytes() != a.splits["stage_1_train"].audio.tobytes()


def test_shapes_and_structure() -> None:
    b = load_benchmark(SMALL)
    assert len(b.class_names) == 12 and b.class_embeddings.shape == (12, 300)
    np.testing.assert_allclose(np.linalg.norm(b.class_embeddings, axis=1), 1.0, atol=1e-6)
    seen1, unseen1, seen2, unseen2 = (set(x.tolist()) for x in (b.seen(1), b.unseen(1), b.seen(2), b.unseen(2)))
    assert (len(seen1), len(unseen1), len(unseen2)) == (7, 2, 3)
    assert not seen1 & unseen1 and not seen2 & unseen2 and seen2 == seen1 | unseen1
    expect = {"stage_1_train": (seen1, 3), "stage_1_val_seen": (seen1, 2), "stage_1_val_unseen": (unseen1, 2),
              "stage_2_train": (seen2, 3), "stage_2_test_seen": (seen2, 2), "stage_2_test_unseen": (unseen2, 2)}
    for name, (classes, per) in expect.items():
        sp = b.splits[name]
        assert set(sp.labels.tolist()) == classes and len(sp) == per * len(classes)
        assert sp.audio.shape == (len(sp), 6, 16) and sp.visual.shape == (len(sp), 6, 12)
        assert sp.audio.dtype == np.float32 and sp.lengths.dtype == np.int64 and sp.labels.dtype == np.int64
        assert sp.lengths.min() >= SMALL.min_seconds and sp.lengths.max() <= 6
        assert not (sp.audio * ~sp.mask()[..., None]).any()  # zero padding
    # val/test samples differ from training samples of the same class
    assert not np.isin(b.splits["stage_1_val_seen"].audio[:, 0, 0], b.splits["stage_1_train"].audio[:, 0, 0]).any()
    s = b.summary()
    assert s["classes"]["stage_2"] == {"seen": 9, "unseen": 3} and s["features"]["visual_dim"] == 12
    assert "stage_2_test_unseen" in b.summary_table()


def test_batches_cover_split() -> None:
    sp = load_benchmark(SMALL).splits["stage_1_train"]
    got = np.concatenate([bt.labels for bt in sp.batches(4, shuffle=True, rng=np.random.default_rng(0))])
    assert sorted(got.tolist()) == sorted(sp.labels.tolist())
    assert [len(bt) for bt in sp.batches(8)] == [8, 8, 5]


def test_bad_generated_counts() -> None:
    with pytest.raises(ConfigError, match="generated_classes"):
        load_benchmark(dataclasses.replace(SMALL, generated_classes=5))


@pytest.mark.skipif(not SHARED_UCF.is_dir(), reason="shared/data/avgzsl not present")
def test_real_ucf_split() -> None:
    """The real UCF-GZSL class split and word2vec (generation speed is measured in bench/, not here)."""
    b = load_benchmark(DataConfig())
    assert b.source.startswith("synthetic (real UCF")
    assert len(b.class_names) == 51 and "HandStandPushups" in b.class_names
    assert (len(b.seen(1)), len(b.unseen(1)), len(b.seen(2)), len(b.unseen(2))) == (30, 12, 42, 9)
    unseen = {b.class_names[i] for i in b.unseen(2)}
    truth = (SHARED_UCF / "class-split/main_split/stage_2_test_unseen.txt").read_text().split()
    assert unseen == set(truth)


def _pool(sp) -> np.ndarray:
    m = sp.mask()[..., None]
    a = (sp.audio * m).sum(1) / sp.lengths[:, None]
    v = (sp.visual * m).sum(1) / sp.lengths[:, None]
    return np.concatenate([a, v], axis=1).astype(np.float64)


def test_linear_baseline_learns_unseen_classes() -> None:
    """Closed-form ridge from mean-pooled features to word2vec on stage_2_train, default benchmark."""
    b = load_benchmark(DataConfig())
    train = b.splits["stage_2_train"]
    x = _pool(train)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xn = (x - mu) / sd
    w = np.linalg.solve(xn.T @ xn + len(xn) * np.eye(xn.shape[1]), xn.T @ b.class_embeddings[train.labels])
    seen, unseen = b.splits["stage_2_test_seen"], b.splits["stage_2_test_unseen"]
    z = ((np.concatenate([_pool(seen), _pool(unseen)]) - mu) / sd) @ w
    labels = np.concatenate([seen.labels, unseen.labels])
    m = protocol.calibrate(z, labels, b.class_embeddings, b.seen(2), b.unseen(2))
    chance = 100.0 / len(b.unseen(2))
    assert m.ZSL > 2 * chance, m          # clearly above chance on unseen classes ...
    assert m.ZSL < 90 and m.S < 99, m     # ... but far from solved
    assert m.HM > 10, m


def test_event_fraction_moves_only_the_event() -> None:
    """data.event_fraction changes the event's share of each clip and nothing else: the same
    lengths, labels and class table; at fraction 1 the class signal covers the clip, so
    mean-pooled features of one class agree far more than at fraction 0.1 (background dominates)."""
    wide = load_benchmark(dataclasses.replace(SMALL, event_fraction=(1.0, 1.0), eval_per_class=12, noise=0.1))
    narrow = load_benchmark(dataclasses.replace(SMALL, event_fraction=(0.1, 0.1), eval_per_class=12, noise=0.1))
    for name in SPLIT_NAMES:
        assert wide.splits[name].lengths.tobytes() == narrow.splits[name].lengths.tobytes()
        assert wide.splits[name].labels.tobytes() == narrow.splits[name].labels.tobytes()
    assert wide.splits["stage_1_train"].audio.tobytes() != narrow.splits["stage_1_train"].audio.tobytes()

    def within_class_agreement(b: Benchmark) -> float:
        sp = b.splits["stage_2_test_seen"]
        m = sp.audio.sum(1) / sp.lengths[:, None]  # mean over valid seconds (padding is zero)
        m = m - m.mean(0)
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        same = sp.labels[:, None] == sp.labels[None, :]
        np.fill_diagonal(same, False)
        return float((m @ m.T)[same].mean())

    assert within_class_agreement(wide) > within_class_agreement(narrow) + 0.2
    default = load_benchmark(SMALL)
    explicit = load_benchmark(dataclasses.replace(SMALL, event_fraction=(0.3, 0.6)))
    assert all(x.tobytes() == y.tobytes() for x, y in zip(arrays(default), arrays(explicit)))
    with pytest.raises(ConfigError, match="event_fraction"):
        from stft_neuro import config as config_mod
        config_mod.load(overrides=["data.event_fraction=0.6,0.3"])
