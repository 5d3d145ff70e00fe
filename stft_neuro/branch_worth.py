"""What the spiking branch is worth to a trained STFT's prediction (issue #16).

For an evaluation pair of splits (stage 1: ``stage_1_val_{seen,unseen}``; stage 2:
``stage_2_test_{seen,unseen}``) the model's host part ``h`` (``STFT.host_part``: the transformer
vector and the features) and the chip's last-layer spikes ``z (T, N, n_L)`` are computed once (eval
mode, the model's own chip), then the readout (``STFT.readout``: the TSF vector, the spike-pooled
features of ``spiking.saliency``, the fusion and the projection) is applied three ways:

* ``as_trained``: ``readout(h, z)``;
* ``zeroed``: ``readout(h, 0)``: the chip sends nothing;
* ``shuffled``: ``readout(h, z[:, perm])`` with one seeded permutation of all evaluated samples:
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
from stft_neuro.model.stft import STFT, HostPart

_PAIRS = {1: ("stage_1_val_seen", "stage_1_val_unseen"), 2: ("stage_2_test_seen", "stage_2_test_unseen")}


@torch.no_grad()
def parts(model: STFT, audio: np.ndarray, visual: np.ndarray, lengths: np.ndarray,
          batch_size: int = 256) -> tuple[HostPart, torch.Tensor | None]:
    """The host part of all samples and the chip's last-layer spikes ``(T, N, n_L)`` (None without
    a spiking branch), in eval mode, batched."""
    model.eval()
    hosts, zs = [], []
    for i in range(0, len(lengths), batch_size):
        a, v, n = (torch.as_tensor(x[i:i + batch_size]) for x in (audio, visual, lengths))
        hosts.append(model.host_part(a, v, n))
        if model.spiking is not None:
            zs.append(model.spiking(a, v, n)[1].spikes[-1])
    host = HostPart(torch.cat([h.r for h in hosts]), torch.cat([h.mean for h in hosts]),
                    None if hosts[0].binned is None else torch.cat([h.binned for h in hosts]))
    return host, (torch.cat(zs, dim=1) if zs else None)


@torch.no_grad()
def branch_worth(model: STFT, bench: Benchmark, stage: int, bias: float, seed: int = 0) -> dict[str, dict]:
    """``{"as_trained" | "zeroed" | "shuffled": GZSLMetrics dict}`` at calibration ``bias``."""
    names = _PAIRS[stage]
    splits = [bench.splits[n] for n in names]
    host, z = parts(model, *(np.concatenate([getattr(sp, k) for sp in splits])
                             for k in ("audio", "visual", "lengths")))
    labels = np.concatenate([sp.labels for sp in splits])
    class_emb = model.embed_classes(torch.as_tensor(bench.class_embeddings)).numpy()
    perm = torch.as_tensor(np.random.default_rng(seed).permutation(len(labels)))
    out = {}
    variants = (("as_trained", z), ("zeroed", None if z is None else torch.zeros_like(z)),
                ("shuffled", None if z is None else z[:, perm]))
    for name, z_used in variants:
        joint = model.readout(host, z_used).numpy()
        out[name] = protocol.evaluate(joint, labels, class_emb, bench.seen(stage), bench.unseen(stage),
                                      bias=bias).to_dict()
    return out
