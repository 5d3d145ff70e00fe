"""The geometry of the class word embeddings that every model (and the linear baselines) sees.

word2vec class vectors are unit-normalised, but they share a large common component: on the real
UCF-GZSL table the mean of the 51 unit vectors has norm 0.57, so about a third of every vector's
energy (0.57^2) points the same way for every class. A map trained on the seen classes learns that
component well and the class-specific rest poorly, and unseen classes, which differ from the seen
ones only in the rest, are confused with each other (issue #16: the validation-selected linear
baseline picks the centred, unit-normalised table on almost every seed).

``GEOMETRIES``:

* ``raw``: the table as loaded (L2-normalised word2vec);
* ``centred``: minus the mean over the classes of the table, ``w_c - mean_k w_k``;
* ``centred_unit``: centred, then each row L2-normalised again.

The mean is taken over the rows passed in: callers pass the benchmark's whole class table
(``Benchmark.class_embeddings``, seen and unseen classes alike: class names are known in
generalised zero-shot learning; no sample of an unseen class is used). The transform is a fixed
function of that table, so the same class always maps to the same vector in training, evaluation
and export.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

GEOMETRIES: tuple[str, ...] = ("raw", "centred", "centred_unit")
_NORM_EPS = 1e-12


def apply(w2v: Tensor, geometry: str) -> Tensor:
    """``(C, D)`` class table -> ``(C, D)`` in ``geometry`` (module doc)."""
    if geometry not in GEOMETRIES:
        raise ValueError(f"word geometry {geometry!r}: expected one of {', '.join(GEOMETRIES)}")
    if geometry == "raw":
        return w2v
    centred = w2v - w2v.mean(dim=0, keepdim=True)
    if geometry == "centred":
        return centred
    return centred / centred.norm(dim=1, keepdim=True).clamp_min(_NORM_EPS)


def apply_np(w2v: np.ndarray, geometry: str) -> np.ndarray:
    """:func:`apply` for a numpy table (float64 out)."""
    return apply(torch.as_tensor(np.asarray(w2v, dtype=np.float64)), geometry).numpy()
