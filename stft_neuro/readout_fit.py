"""Fitting an STFT's ridge readout (``fusion.readout = ridge``; ``model/ridge_readout.py``).

Stage 1 (``member`` None): the readout features ``f = [h, p]`` of ``stage_1_train`` and of the
stage-1 validation pair are computed once (eval mode, the model's own chip); every member of the
ridge family (``baselines.ridge.FAMILY``) is fitted on the training features and calibrated on
validation, and the member with the best validation HM is loaded into the model. Stage 2 and QAT
(``member`` given): that member is fitted on the stage's training split and loaded. Test data is
never read here.
"""
from __future__ import annotations

import numpy as np
import torch

from stft_neuro import protocol
from stft_neuro.baselines.ridge import FAMILY, RidgeMap, RidgeVariant, Design
from stft_neuro.data.benchmark import Benchmark, Split
from stft_neuro.model.stft import STFT

_VAL = ("stage_1_val_seen", "stage_1_val_unseen")


@torch.no_grad()
def readout_features(model: STFT, split: Split, device: torch.device | str = "cpu",
                     batch_size: int = 256) -> np.ndarray:
    """``(N, width + Da + Dv)`` float64 readout features of a split (eval mode, own chip)."""
    model.eval()
    rows = []
    for i in range(0, len(split.labels), batch_size):
        a, v, n = (torch.as_tensor(x[i:i + batch_size], device=device)
                   for x in (split.audio, split.visual, split.lengths))
        host = model.host_part(a, v, n)
        out_spikes = model.spiking(a, v, n)[1].spikes[-1] if model.spiking is not None else None
        rows.append(model.readout_features(host, out_spikes).double().cpu().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, model.ridge.mu.shape[0]))


def fit_readout(model: STFT, bench: Benchmark, stage: int, device: torch.device | str = "cpu",
                member: RidgeVariant | None = None) -> tuple[RidgeVariant, float | None]:
    """Fit the model's ridge readout on ``stage_{stage}_train``; returns the member and, when it
    was chosen here (``member`` None, stage 1), its validation HM."""
    if model.ridge is None:
        raise ValueError("fit_readout: the model has no ridge readout (fusion.readout = trained)")
    train = bench.splits[f"stage_{stage}_train"]
    x = readout_features(model, train, device)
    design = Design(x)
    if member is not None:
        table = member.table(bench.class_embeddings)
        model.ridge.set_map(RidgeMap.fit(x, table[train.labels], member.lam, member.intercept, design),
                            member.geometry)
        return member, None
    val = [bench.splits[n] for n in _VAL]
    x_val = np.concatenate([readout_features(model, sp, device) for sp in val])
    labels = np.concatenate([sp.labels for sp in val])
    best: tuple[float, RidgeVariant, RidgeMap] | None = None
    for v in FAMILY:
        table = v.table(bench.class_embeddings)
        fitted = RidgeMap.fit(x, table[train.labels], v.lam, v.intercept, design)
        hm = protocol.calibrate(fitted(x_val), labels, table, bench.seen(1), bench.unseen(1)).HM
        if best is None or hm > best[0]:  # the first on ties, as baselines.ridge.select_and_run
            best = (hm, v, fitted)
    hm, v, fitted = best
    model.ridge.set_map(fitted, v.geometry)
    return v, hm
