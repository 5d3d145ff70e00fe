"""data.sizes=real: the synthetic generator draws exactly the real split's per-class sample counts."""
from __future__ import annotations

import csv
import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stft_neuro import config as config_mod
from stft_neuro.config import DataConfig
from stft_neuro.data import SPLIT_NAMES, load_benchmark
from stft_neuro.data.splits import read_class_split, read_split_counts
from stft_neuro.errors import ConfigError, DataError
from test_data_loaders import SPLITS, write_split  # tests/ is on sys.path (pytest rootdir insertion)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "avgzsl"
TINY = dict(audio_dim=6, visual_dim=5, max_seconds=4, min_seconds=2)


def csv_counts(folder: Path, split: str) -> Counter:
    with (folder / f"{split}.csv").open(newline="") as f:
        return Counter(row["label"] for row in csv.DictReader(f))


def write_csvs(root: Path, counts: dict[str, dict[str, int]]) -> None:
    folder = root / "class-split" / "main_split"
    for split, per in counts.items():
        lines = ["filename,label,label_code"]
        lines += [f"v_{c}_{i},{c},{j}" for j, (c, n) in enumerate(per.items()) for i in range(n)]
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")


def label_counts(bench, split: str) -> dict[str, int]:
    labels = bench.splits[split].labels
    return {bench.class_names[i]: int(n) for i, n in zip(*np.unique(labels, return_counts=True))}


@pytest.mark.skipif(not (SHARED / "UCF").is_dir(), reason="shared/data/avgzsl not present")
def test_real_ucf_counts_equal_the_csv_files() -> None:
    """(Generation time is measured by bench/bench_quality_sizes.py, not asserted here.)"""
    b = load_benchmark(DataConfig(sizes="real", **TINY))
    folder = SHARED / "UCF" / "class-split" / "main_split"
    for split in SPLIT_NAMES:
        assert label_counts(b, split) == dict(csv_counts(folder, split)), split
    sizes = {s: len(b.splits[s]) for s in SPLIT_NAMES}
    assert sizes == {"stage_1_train": 3174, "stage_1_val_seen": 353, "stage_1_val_unseen": 1467,
                     "stage_2_train": 4994, "stage_2_test_seen": 555, "stage_2_test_unseen": 1267}
    assert b.info["sizes"] == "real" and "real sizes" in b.source


@pytest.mark.skipif(not (SHARED / "VGGSound").is_dir(), reason="shared/data/avgzsl not present")
def test_vggsound_without_train_csv_is_one_clear_error() -> None:
    with pytest.raises(DataError, match="stage_1_train.csv, which is missing"):
        load_benchmark(DataConfig(dataset="VGGSound", sizes="real", **TINY))


@settings(max_examples=8, deadline=None)
@given(counts=st.lists(st.integers(1, 5), min_size=6, max_size=6), seed=st.integers(0, 2**32))
def test_counts_followed_and_byte_identical(tmp_path_factory, counts: list[int], seed: int) -> None:
    root = tmp_path_factory.mktemp("ds") / "UCF"
    write_split(root)
    classes = sorted({c for cs in SPLITS.values() for c in cs})
    want = {s: {c: counts[(i + j) % 6] for j, c in enumerate(SPLITS[s])} for i, s in enumerate(SPLITS)}
    want["stage_2_train"] = {c: sum(want[p].get(c, 0) for p in ("stage_1_train", "stage_1_val_seen",
                                                              "stage_1_val_unseen"))
                             for c in SPLITS["stage_2_train"]}
    write_csvs(root, {s: v for s, v in want.items() if s != "stage_2_train"})  # stage 2 train: derived
    cfg = DataConfig(root=str(root), sizes="real", seed=seed, **TINY)
    a, b = load_benchmark(cfg), load_benchmark(cfg)
    assert a.class_names == tuple(classes)
    for split in SPLIT_NAMES:
        assert label_counts(a, split) == want[split]
        for x, y in zip((a.splits[split].audio, a.splits[split].visual, a.splits[split].lengths,
                         a.splits[split].labels),
                        (b.splits[split].audio, b.splits[split].visual, b.splits[split].lengths,
                         b.splits[split].labels)):
            assert x.tobytes() == y.tobytes()
    other = load_benchmark(dataclasses.replace(cfg, seed=seed + 1))
    assert other.splits["stage_1_train"].audio.tobytes() != a.splits["stage_1_train"].audio.tobytes()


def test_mismatched_csv_is_a_data_error(tmp_path: Path) -> None:
    root = tmp_path / "UCF"
    write_split(root)
    counts = {s: {c: 2 for c in cs} for s, cs in SPLITS.items()}
    counts["stage_2_test_unseen"] = {"EchoFox": 1, "Alpha": 1}  # Alpha is not an unseen class; Golf missing
    write_csvs(root, counts)
    with pytest.raises(DataError, match="do not match the split's classes"):
        read_split_counts(read_class_split(root, "UCF"))


def test_sizes_switch_validated_and_small_stays_default(tmp_path: Path) -> None:
    assert DataConfig().sizes == "small"
    with pytest.raises(ConfigError, match="data.sizes must be small or real"):
        config_mod.load(overrides=["data.sizes=huge"])
    with pytest.raises(ConfigError, match="data.sizes=real needs the real"):
        load_benchmark(DataConfig(root="none", sizes="real", **TINY))
    root = tmp_path / "UCF"
    write_split(root)  # .txt files only: no per-sample CSV
    with pytest.raises(DataError, match="per-sample split file"):
        load_benchmark(DataConfig(root=str(root), sizes="real", **TINY))
