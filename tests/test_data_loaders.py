"""Class splits, word2vec, and the AVCA (h5) and TCaF (pickle) loaders on tiny datasets written to tmp_path."""
from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np

SPLITS = {
    "stage_1_train": ["Alpha", "Bravo", "Charlie"],
    "stage_1_val_seen": ["Alpha", "Bravo", "Charlie"],
    "stage_1_val_unseen": ["Delta"],
    "stage_2_train": ["Alpha", "Bravo", "Charlie", "Delta"],
    "stage_2_test_seen": ["Alpha", "Bravo", "Charlie", "Delta"],
    "stage_2_test_unseen": ["EchoFox", "Golf"],
}
# Dataset name -> word2vec name; "EchoFox" is spelled "Echofox" in the CSV, as UCF's HandStandPushups.
W2V_NAMES = {"Alpha": "alpha", "Bravo": "bravo", "Charlie": "charlie", "Delta": "delta",
             "Echofox": "echo fox", "Golf": "golf"}


def write_split(root: Path, splits: dict[str, list[str]] = SPLITS, w2v_names: dict[str, str] = W2V_NAMES,
                dataset_key: str = "ucf") -> dict[str, np.ndarray]:
    """``root/class-split`` and ``root/../w2v_features`` like ``shared/data/avgzsl``; returns the w2v dict."""
    folder = root / "class-split" / "main_split"
    folder.mkdir(parents=True, exist_ok=True)
    for name, classes in splits.items():
        (folder / f"{name}.txt").write_text("\n".join(classes) + "\n")
    lines = ["original,manual"] + [f"{k},{v}" for k, v in w2v_names.items()]
    (root / "class-split" / f"{dataset_key}_w2v_class_names.csv").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(0)
    table = {}
    for v in w2v_names.values():
        vec = rng.standard_normal(300).astype(np.float32)
        table[v] = vec / np.linalg.norm(vec)
    w2v = root.parent / "w2v_features"
    w2v.mkdir(parents=True, exist_ok=True)
    np.save(w2v / f"word_embeddings_{dataset_key}_normed.npy", np.array(table, dtype=object), allow_pickle=True)
    return table


def _samples(cls: str, split: str, n: int, width: int, seconds: int | None, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng([seed, len(cls), len(split), n])
    if seconds is None:
        return [rng.standard_normal((1, width)).astype(np.float32) for _ in range(n)]
    return [rng.standard_normal((1 + (i % seconds), width)).astype(np.float32) for i in range(n)]


def write_avca(root: Path, widths=(6, 5), n: int = 2, three_d: bool = False, skip_stage_2_train: bool = True,
               splits: dict[str, list[str]] = SPLITS) -> None:
    """h5 class files under ``root/features/main_features/{audio,video}/<split>/``."""
    for split, classes in splits.items():
        if skip_stage_2_train and split == "stage_2_train":
            continue
        for m, width in zip(("audio", "video"), widths):
            folder = root / "features" / "main_features" / m / split
            folder.mkdir(parents=True, exist_ok=True)
            for cls in classes:
                seqs = _samples(cls, split, n, width, None, 1 if m == "audio" else 2)
                data = np.stack([s[0] for s in seqs])
                if three_d:
                    data = np.repeat(data[:, None, :], 3, axis=1)
                with h5py.File(folder / f"{cls}.h5", "w") as f:
                    f.create_dataset("data", data=data)
                    f.create_dataset("video_urls", data=np.array([f"{cls}_{i}".encode() for i in range(n)]))


def write_tcaf(root: Path, widths=(6, 5), n: int = 3, seconds: int = 4) -> None:
    """Pickled class files under ``root/features/main_features/{audio,video}/<split>/``."""
    for split, classes in SPLITS.items():
        if split == "stage_2_train":
            continue
        for m, width in zip(("audio", "video"), widths):
            folder = root / "features" / "main_features" / m / split
            folder.mkdir(parents=True, exist_ok=True)
            for cls in classes:
                seqs = _samples(cls, split, n, width, seconds, 1 if m == "audio" else 2)
                if m == "video":  # one extra second of video: the loader cuts to the shorter
                    seqs = [np.concatenate([s, s[-1:]]) for s in seqs]
                with (folder / f"{cls}.pkl").open("wb") as f:
                    pickle.dump({"features": seqs, "video_names": [f"{cls}_{i}" for i in range(n)],
                                 "fps": [1.0] * n}, f)


# ---------------------------------------------------------------------------------------------- tests
import dataclasses  # noqa: E402

import pytest  # noqa: E402

from stft_neuro.config import DataConfig  # noqa: E402
from stft_neuro.data import load_benchmark  # noqa: E402
from stft_neuro.data.splits import class_embeddings, read_class_split, resolve_root  # noqa: E402
from stft_neuro.errors import DataError  # noqa: E402


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    ds = tmp_path / "avgzsl" / "UCF"
    ds.mkdir(parents=True)
    write_split(ds)
    return ds


def cfg_for(root: Path, **kw) -> DataConfig:
    return DataConfig(root=str(root), dataset="UCF", **kw)


def test_split_and_embeddings(root: Path) -> None:
    split = read_class_split(root, "UCF")
    assert split.all_classes == ("Alpha", "Bravo", "Charlie", "Delta", "EchoFox", "Golf")
    emb = class_embeddings(root, "UCF", split.all_classes)
    assert emb.shape == (6, 300) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)


def test_split_from_csv_when_txt_missing(root: Path) -> None:
    folder = root / "class-split" / "main_split"
    (folder / "stage_2_test_unseen.txt").unlink()
    (folder / "stage_2_test_unseen.csv").write_text("filename,label,label_code\nv1,Golf,1\nv2,EchoFox,2\nv3,Golf,1\n")
    assert set(read_class_split(root, "UCF").classes["stage_2_test_unseen"]) == {"Golf", "EchoFox"}


def test_resolve_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_root(DataConfig(root="none")) is None
    monkeypatch.setenv("STFT_NEURO_AVGZSL", str(tmp_path))
    (tmp_path / "UCF").mkdir()
    assert resolve_root(DataConfig(root="auto")) == tmp_path / "UCF"
    with pytest.raises(DataError, match="ActivityNet"):
        resolve_root(DataConfig(root="auto", dataset="ActivityNet"))
    with pytest.raises(DataError, match="nowhere"):
        resolve_root(DataConfig(root=str(tmp_path / "nowhere")))


def test_missing_split_file(root: Path) -> None:
    (root / "class-split" / "main_split" / "stage_1_val_unseen.txt").unlink()
    with pytest.raises(DataError, match="stage_1_val_unseen"):
        read_class_split(root, "UCF")


def test_inconsistent_split(root: Path) -> None:
    (root / "class-split" / "main_split" / "stage_2_test_unseen.txt").write_text("Golf\nAlpha\n")
    with pytest.raises(DataError, match="stage_2_test_unseen overlaps"):
        read_class_split(root, "UCF")


def test_class_without_embedding(tmp_path: Path) -> None:
    ds = tmp_path / "UCF"
    ds.mkdir()
    names = {k: v for k, v in W2V_NAMES.items() if k != "Golf"}
    write_split(ds, w2v_names=names)
    with pytest.raises(DataError, match="'Golf'.*word2vec"):
        load_benchmark(cfg_for(ds))


def test_missing_word2vec(root: Path) -> None:
    (root.parent / "w2v_features" / "word_embeddings_ucf_normed.npy").unlink()
    with pytest.raises(DataError, match="word_embeddings_ucf_normed.npy"):
        load_benchmark(cfg_for(root))


def test_synthetic_on_a_split_folder(root: Path) -> None:
    b = load_benchmark(cfg_for(root, audio_dim=8, visual_dim=4, train_per_class=2, eval_per_class=1))
    assert b.class_names[4] == "EchoFox" and len(b.splits["stage_2_test_unseen"]) == 2
    assert b.source.startswith("synthetic (real")


def test_avca_loader(root: Path) -> None:
    write_avca(root)
    b = load_benchmark(cfg_for(root, source="avca"))
    assert (b.audio_dim, b.visual_dim, b.max_seconds) == (6, 5, 1)
    assert len(b.splits["stage_1_train"]) == 6 and len(b.splits["stage_2_test_unseen"]) == 4
    # stage_2_train = union of the stage-1 splits when it has no folder of its own (as AVCA)
    assert len(b.splits["stage_2_train"]) == 6 + 6 + 2
    assert set(b.class_names[i] for i in b.unseen(2)) == {"EchoFox", "Golf"}
    with h5py.File(root / "features/main_features/audio/stage_1_train/Alpha.h5") as f:
        first = f["data"][0]
    sp = b.splits["stage_1_train"]
    np.testing.assert_array_equal(sp.audio[0, 0], first)
    assert sp.labels[0] == b.class_names.index("Alpha") and sp.lengths.tolist() == [1] * 6


def test_avca_three_d_and_own_stage_2_folder(root: Path) -> None:
    write_avca(root, three_d=True, skip_stage_2_train=False)
    b = load_benchmark(cfg_for(root, source="avca"))
    assert b.max_seconds == 3 and len(b.splits["stage_2_train"]) == 8


def test_avca_wrong_width(root: Path) -> None:
    write_avca(root)
    bad = root / "features/main_features/audio/stage_1_val_seen/Bravo.h5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("data", data=np.zeros((2, 7), np.float32))
        f.create_dataset("video_urls", data=np.array([b"a", b"b"]))
    with pytest.raises(DataError, match="Bravo.h5.*width 7 differs from 6"):
        load_benchmark(cfg_for(root, source="avca"))


def test_avca_empty_and_missing_and_stray_files(root: Path) -> None:
    write_avca(root)
    folder = root / "features/main_features/video/stage_2_test_unseen"
    with h5py.File(folder / "Golf.h5", "w") as f:
        f.create_dataset("data", data=np.zeros((0, 5), np.float32))
        f.create_dataset("video_urls", data=np.array([], dtype="S1"))
    with pytest.raises(DataError, match="Golf.h5 holds no samples"):
        load_benchmark(cfg_for(root, source="avca"))
    (folder / "Golf.h5").unlink()
    with pytest.raises(DataError, match="class 'Golf' missing"):
        load_benchmark(cfg_for(root, source="avca"))
    write_avca(root)
    (folder / "Hotel.h5").write_bytes(b"")
    with pytest.raises(DataError, match="Hotel.h5 names a class"):
        load_benchmark(cfg_for(root, source="avca"))


def test_avca_missing_folders(tmp_path: Path, root: Path) -> None:
    with pytest.raises(DataError, match="main_features"):
        load_benchmark(cfg_for(root, source="avca"))
    with pytest.raises(DataError, match="data.root"):
        load_benchmark(DataConfig(source="avca", root="none"))
    with pytest.raises(DataError, match="missing"):
        load_benchmark(cfg_for(tmp_path / "missing", source="avca"))


def test_tcaf_needs_permission(root: Path) -> None:
    write_tcaf(root)
    with pytest.raises(DataError, match="pickle.*allow_pickle=true.*--allow-pickle"):
        load_benchmark(cfg_for(root, source="tcaf"))


def test_tcaf_loader(root: Path) -> None:
    write_tcaf(root)
    b = load_benchmark(cfg_for(root, source="tcaf", allow_pickle=True))
    sp = b.splits["stage_1_train"]
    assert b.max_seconds == 3 and (b.audio_dim, b.visual_dim) == (6, 5)
    assert sp.lengths[:3].tolist() == [1, 2, 3]  # video had one more second: cut to the audio's
    assert not sp.audio[1, 2:].any() and sp.audio[1, :2].any()
    assert len(b.splits["stage_2_train"]) == 9 + 9 + 3


def test_tcaf_mismatched_videos(root: Path) -> None:
    write_tcaf(root)
    path = root / "features/main_features/video/stage_1_val_unseen/Delta.pkl"
    with path.open("rb") as f:
        obj = pickle.load(f)
    obj["video_names"] = obj["video_names"][::-1]
    with path.open("wb") as f:
        pickle.dump(obj, f)
    with pytest.raises(DataError, match="Delta.pkl list different videos"):
        load_benchmark(cfg_for(root, source="tcaf", allow_pickle=True))


def test_unknown_dataset_has_no_word2vec(tmp_path: Path) -> None:
    ds = tmp_path / "Other"
    ds.mkdir()
    write_split(ds)
    cfg = dataclasses.replace(cfg_for(ds), dataset="Other")
    with pytest.raises(DataError, match="no word2vec file known for dataset 'Other'"):
        load_benchmark(cfg)
