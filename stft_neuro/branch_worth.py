"""What the spiking branch is worth to a trained STFT's prediction (issue #16).

For an evaluation pair of splits (stage 1: ``stage_1_val_{seen,unseen}``; stage 2:
``stage_2_test_{seen,unseen}``) the model's transformer vector ``r (N, dim)`` and spiking vector
``s (N, n_L)`` are computed once (eval mode, the model's own chip), then the readout
(``STFT.joint_from``) is applied three ways:

* ``as_trained``: ``joint_from(r, s)``;
* ``zeroed``: ``joint_from(r, 0)``: the chip sends nothing;
* ``shuffled``: ``joint_from(r, s[perm])`` with one seeded permutation of all evaluated samples:
  the chip's output keeps its distribution but carries no information about the sample. The
  difference ``as_trained - shuffled`` is what the prediction takes from the branch; ``zeroed``
  also moves the readout off its operating point, so it can cost more than the information does.

All three are scored at the same calibration ``b`` (the caller's, e.g. the run's stage-1 b), so the
differences are the branch's, not a re-calibration's.
"""
from __future__ import annotations

import numpy as np
import torch

from stft_neuro import protocol
from stft_neuro.data.benchmark import Benchmark
from stft_neuro.model.host import valid_mask
from stft_neuro.model.stft import STFT

_PAIRS = {1: ("stage_1_val_seen", "stage_1_val_unseen"), 2: ("stage_2_test_seen", "stage_2_test_unseen")}


@torch.no_grad()
def parts(model: STFT, audio: np.ndarray, visual: np.ndarray, lengths: np.ndarray,
          batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``r (N, dim)`` and ``s (N, n_L)`` of numpy arrays, in eval mode, batched."""
    model.eval()
    rs, ss = [], []
    for i in range(0, len(lengths), batch_size):
        a, v, n = (torch.as_tensor(x[i:i + batch_size]) for x in (audio, visual, lengths))
        r = model.transformer(a, v, valid_mask(n, a.shape[1]))
        s = model.spiking(a, v, n)[0] if model.spiking is not None else r.new_zeros(r.shape[0], 0)
        rs.append(r)
        ss.append(s)
    return torch.cat(rs), torch.cat(ss)


@torch.no_grad()
def branch_worth(model: STFT, bench: Benchmark, stage: int, bias: float, seed: int = 0) -> dict[str, dict]:
    """``{"as_trained" | "zeroed" | "shuffled": GZSLMetrics dict}`` at calibration ``bias``."""
    names = _PAIRS[stage]
    splits = [bench.splits[n] for n in names]
    r, s = parts(model, *(np.concatenate([getattr(sp, k) for sp in splits])
                          for k in ("audio", "visual", "lengths")))
    labels = np.concatenate([sp.labels for sp in splits])
    class_emb = model.embed_classes(torch.as_tensor(bench.class_embeddings)).numpy()
    perm = torch.as_tensor(np.random.default_rng(seed).permutation(len(labels)))
    out = {}
    for name, s_used in (("as_trained", s), ("zeroed", torch.zeros_like(s)), ("shuffled", s[perm])):
        joint = model.joint_from(r, s_used).numpy()
        out[name] = protocol.evaluate(joint, labels, class_emb, bench.seen(stage), bench.unseen(stage),
                                      bias=bias).to_dict()
    return out
