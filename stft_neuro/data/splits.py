"""AVCA class splits and word2vec class embeddings, and where to find them.

Layout (AVCA repository, ``avgzsl_benchmark_datasets/<DS>``; ``../shared/data/avgzsl/<DS>`` here)::

    <root>/class-split/{main_split|cls_split}/stage_{1_train,1_val_seen,1_val_unseen,
                                                   2_train,2_test_seen,2_test_unseen}.txt
    <root>/class-split/<ds>_w2v_class_names.csv      columns original,manual[,category]
    <root>/../w2v_features/word_embeddings_<key>_normed.npy      (shared layout), or
    <root>/w2v_features/..., or <root>/features/<kind>/text/...   (AVCA's own layout)

Each ``.txt`` lists one class per line (VGGSound names hold commas and spaces, so lines, not CSV).
Where only the ``.csv`` (one row per video, column ``label``) exists, its distinct labels are used.

The word2vec file is a pickled ``dict[str, float32[300]]`` saved with ``np.save``, so loading it needs
``allow_pickle=True``. It is the benchmark's own published file (MIT licence, AVCA repository); this
module loads it only under the three known file names above, never a file named by the user.

Dataset class names map to word2vec keys through the CSV (``original`` -> ``manual``). As in AVCA's
UCF and ActivityNet loaders, a name that does not match exactly is matched case-insensitively (the
UCF split says ``HandStandPushups``, the CSV ``HandstandPushups``).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stft_neuro.config import DataConfig
from stft_neuro.data.benchmark import SPLIT_NAMES
from stft_neuro.errors import DataError

# Dataset name -> the key in ``word_embeddings_<key>_normed.npy``: the only files ever loaded.
W2V_KEYS: dict[str, str] = {"UCF": "ucf", "ActivityNet": "activity", "VGGSound": "vggsound"}
ENV_VAR = "STFT_NEURO_AVGZSL"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ClassSplit:
    """Class names of each of the six split files (in file order) of one dataset."""

    dataset: str
    folder: Path
    classes: dict[str, tuple[str, ...]]

    @property
    def all_classes(self) -> tuple[str, ...]:
        """The sorted union of all split classes: the benchmark's class list."""
        return tuple(sorted({c for names in self.classes.values() for c in names}))


def resolve_root(cfg: DataConfig) -> Path | None:
    """The dataset folder ``cfg.root`` names: a path; ``"auto"`` -> ``$STFT_NEURO_AVGZSL/<dataset>``
    if that variable is set, else ``<repo>/../shared/data/avgzsl/<dataset>`` if it exists, else None;
    ``"none"`` -> None. A path that is given but missing raises DataError."""
    if cfg.root == "none":
        return None
    if cfg.root == "auto":
        env = os.environ.get(ENV_VAR)
        if env:
            path = Path(env) / cfg.dataset
            if not path.is_dir():
                raise DataError(f"${ENV_VAR}/{cfg.dataset}: folder {path} does not exist")
            return path
        path = REPO_ROOT.parent / "shared" / "data" / "avgzsl" / cfg.dataset
        return path if path.is_dir() else None
    path = Path(cfg.root).expanduser()
    if not path.is_dir():
        raise DataError(f"data.root: folder {path} does not exist")
    return path


def _read_split_file(folder: Path, split: str) -> tuple[str, ...]:
    txt, csv_path = folder / f"{split}.txt", folder / f"{split}.csv"
    if txt.is_file():
        names = [line.strip() for line in txt.read_text(encoding="utf-8").splitlines()]
        names = [n for n in names if n]
        where = txt
    elif csv_path.is_file():
        with csv_path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "label" not in reader.fieldnames:
                raise DataError(f"split file {csv_path}: no 'label' column")
            names = list(dict.fromkeys(row["label"].strip() for row in reader if row["label"].strip()))
        where = csv_path
    else:
        raise DataError(f"split file {txt} (or .csv) is missing")
    if not names:
        raise DataError(f"split file {where} lists no classes")
    if len(set(names)) != len(names):
        raise DataError(f"split file {where} lists a class twice")
    return tuple(names)


def read_class_split(root: Path, dataset: str, kind: str = "main") -> ClassSplit:
    """Read ``<root>/class-split/<kind>_split/stage_*.{txt,csv}`` and check AVCA's structure:
    val-seen classes = stage-1 train classes; stage-2 train = stage-1 train + val-unseen classes;
    test-seen = stage-2 train; seen and unseen classes disjoint in each stage."""
    folder = Path(root) / "class-split" / f"{kind}_split"
    if not folder.is_dir():
        raise DataError(f"class split folder {folder} does not exist")
    classes = {split: _read_split_file(folder, split) for split in SPLIT_NAMES}
    s = {k: set(v) for k, v in classes.items()}
    checks = [
        (s["stage_1_val_seen"] == s["stage_1_train"], "stage_1_val_seen must list the stage_1_train classes"),
        (not s["stage_1_train"] & s["stage_1_val_unseen"], "stage_1_val_unseen overlaps stage_1_train"),
        (s["stage_2_train"] == s["stage_1_train"] | s["stage_1_val_unseen"],
         "stage_2_train must be stage_1_train + stage_1_val_unseen"),
        (s["stage_2_test_seen"] == s["stage_2_train"], "stage_2_test_seen must list the stage_2_train classes"),
        (not s["stage_2_train"] & s["stage_2_test_unseen"], "stage_2_test_unseen overlaps stage_2_train"),
    ]
    for ok, message in checks:
        if not ok:
            raise DataError(f"class split {folder}: {message}")
    return ClassSplit(dataset=dataset, folder=folder, classes=classes)


def _w2v_file(root: Path, dataset: str) -> Path:
    if dataset not in W2V_KEYS:
        raise DataError(f"no word2vec file known for dataset {dataset!r} (known: {', '.join(W2V_KEYS)})")
    name = f"word_embeddings_{W2V_KEYS[dataset]}_normed.npy"
    candidates = [root.parent / "w2v_features" / name, root / "w2v_features" / name]
    candidates += [root / "features" / kind / "text" / name for kind in ("main_features", "cls_features")]
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(f"word2vec file {name} not found in {', '.join(str(p.parent) for p in candidates)}")


def load_word2vec(root: Path, dataset: str) -> dict[str, np.ndarray]:
    """The dataset's word2vec dict ``{w2v name: float32[300]}`` (a pickled dict; see module doc)."""
    path = _w2v_file(Path(root), dataset)
    try:
        raw = np.load(path, allow_pickle=True)  # the benchmark's own file, known name only
        table = raw.item() if raw.dtype == object and raw.shape == () else None
    except (OSError, ValueError) as exc:
        raise DataError(f"word2vec file {path}: cannot read ({exc})") from None
    if not isinstance(table, dict) or not table:
        raise DataError(f"word2vec file {path}: expected a pickled dict of class name -> vector")
    out = {}
    for key, vec in table.items():
        arr = np.asarray(vec, dtype=np.float32).reshape(-1)
        if arr.shape != (300,) or not np.isfinite(arr).all():
            raise DataError(f"word2vec file {path}: entry {key!r} is not a finite 300-d vector")
        out[str(key)] = arr
    return out


def _name_map(root: Path) -> tuple[dict[str, str], Path | None]:
    files = sorted((Path(root) / "class-split").glob("*_w2v_class_names.csv"))
    if not files:
        return {}, None
    if len(files) > 1:
        raise DataError(f"{Path(root) / 'class-split'}: several *_w2v_class_names.csv files; keep one")
    with files[0].open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"original", "manual"} <= set(reader.fieldnames):
            raise DataError(f"{files[0]}: expected columns original,manual")
        return {row["original"].strip(): row["manual"].strip() for row in reader}, files[0]


def _lookup(name: str, table: dict[str, str] | dict[str, np.ndarray]) -> str | None:
    if name in table:
        return name
    folded = [k for k in table if k.lower() == name.lower()]
    return folded[0] if len(folded) == 1 else None


def class_embeddings(root: Path, dataset: str, class_names: tuple[str, ...]) -> np.ndarray:
    """``(C, 300)`` float32 L2-normalised word2vec rows for ``class_names`` (dataset names)."""
    w2v = load_word2vec(root, dataset)
    names, csv_path = _name_map(root)
    rows = []
    for cls in class_names:
        key = None
        original = _lookup(cls, names) if names else None
        if original is not None:
            key = _lookup(names[original], w2v)
        if key is None:
            key = _lookup(cls, w2v)
        if key is None:
            where = f" (via {csv_path})" if csv_path else ""
            raise DataError(f"class {cls!r} of {dataset} has no word2vec embedding in "
                            f"{_w2v_file(Path(root), dataset)}{where}")
        rows.append(w2v[key])
    emb = np.stack(rows).astype(np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    if (norms == 0).any():
        raise DataError(f"word2vec file {_w2v_file(Path(root), dataset)}: a class embedding is all zeros")
    return (emb / norms).astype(np.float32)


# AVCA builds stage 2's training set from all stage-1 samples (UCF: 3,174 + 353 + 1,467 = 4,994, the
# row count of its stage_2_train.csv; ActivityNet: 9,204 + 1,023 + 4,307 = 14,534 likewise).
STAGE_2_TRAIN_PARTS: tuple[str, ...] = ("stage_1_train", "stage_1_val_seen", "stage_1_val_unseen")


def _count_csv(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "label" not in reader.fieldnames:
            raise DataError(f"split file {path}: no 'label' column")
        for row in reader:
            label = (row["label"] or "").strip()
            if not label:
                raise DataError(f"split file {path}: line {reader.line_num} has an empty label")
            counts[label] = counts.get(label, 0) + 1
    return counts


def read_split_counts(split: ClassSplit) -> dict[str, dict[str, int]]:
    """Per split, the number of samples of each class in the real split's per-sample CSV files
    (``<split.folder>/stage_*.csv``, one row per video, column ``label``): ``{split: {class: n}}``.

    ``stage_2_train.csv``, where missing, is the sum of the three stage-1 files (AVCA's
    construction, see ``STAGE_2_TRAIN_PARTS``). Every class of a split must have at least one row
    and no row may name a class outside the split, else DataError (the counts would not describe
    this split). Another missing CSV is a DataError naming it: VGGSound's ``main_split`` has no
    ``stage_1_train.csv`` or ``stage_2_train.csv``, so its real training sizes are unknown here."""
    out: dict[str, dict[str, int]] = {}
    for name in SPLIT_NAMES:
        path = split.folder / f"{name}.csv"
        if path.is_file():
            counts = _count_csv(path)
        elif name == "stage_2_train" and all(p in out for p in STAGE_2_TRAIN_PARTS):
            counts = {}
            for part in STAGE_2_TRAIN_PARTS:
                for cls, n in out[part].items():
                    counts[cls] = counts.get(cls, 0) + n
        else:
            raise DataError(f"data.sizes=real needs the per-sample split file {path}, which is missing")
        expected = set(split.classes[name])
        extra, missing = sorted(set(counts) - expected), sorted(expected - set(counts))
        if extra or missing:
            raise DataError(f"split file {path}: its labels do not match the split's classes "
                            f"(not in the split: {extra[:3]}; no samples: {missing[:3]})")
        out[name] = counts
    return out
