"""Spike-driven temporal pooling: the chip says *when* a sample's evidence is, the host reads *what*.

Why (issue #16, BENCHMARKS.md "The chip as a saliency detector"): on the synthetic benchmark a
class event fills 30-60 % of a clip and background fills the rest; pooling the per-second features
by the mean dilutes the event, and a linear map from mean-pooled features (the ridge baseline)
beat every STFT recipe that read the chip's spikes as a class code, because a LIF layer's rates
lose most of the class information of their input (probe HM 23 -> 11). Whether a second is event
or background is a one-bit question, which spikes answer well, and the backgrounds are shared by
all classes, so the answer transfers to unseen classes.

Definitions (B batch, T chip steps, L chip layers, K = T - L host bins, D = Da + Dv, H heads)::

    binned  (B, K, D)   the raw per-second features averaged into K bins of each sample's length
                        (``host.bin_matrix``); bin k is sent as input currents at step k, and
                        steps K..T-1 carry zero currents, so the last layer's response to bin k
                        arrives at step k + L (one step of delay per Dense)
    w[b, k, h] = softmax_k( score_h . s_L[k + L, b] + beta[k, h] )     (B, K, H)
    pooled   = sum_k w[:, k, 0] binned[:, k]                       (H = 1)
             = [sum_k w[:, k, 0] binned[:, k, :Da], sum_k w[:, k, 1] binned[:, k, Da:]]   (H = 2)

With the chip's output zeroed, ``w`` is ``softmax(beta)`` for every sample; shuffled across
samples, each sample is pooled with another's weights (``branch_worth.py``).
The paper is silent on this: the STFT's TSF weights the chip's own output over steps; here the
same kind of spike-driven softmax over steps weights the host's features instead.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class SaliencyPool(nn.Module):
    """Softmax over bins of a linear score of the last layer's spikes, per head; pools features."""

    def __init__(self, n_last: int, heads: int, bins: int, latency: int, audio_dim: int) -> None:
        super().__init__()
        if heads not in (1, 2) or bins < 1 or latency < 1:
            raise ValueError(f"SaliencyPool: heads 1 or 2, bins >= 1, latency >= 1; got {heads}, {bins}, {latency}")
        self.heads, self.bins, self.latency, self.audio_dim = heads, bins, latency, audio_dim
        self.score = nn.Linear(n_last, heads)
        self.step_bias = nn.Parameter(torch.zeros(bins, heads))

    def weights(self, out_spikes: Tensor) -> Tensor:
        """Last layer's spikes ``(T, B, n_L)`` (T >= bins + latency) -> weights ``(B, K, H)``,
        each head's summing to 1 over the K bins."""
        s = out_spikes[self.latency:self.latency + self.bins]  # (K, B, n_L): bin k's response
        scores = self.score(s) + self.step_bias[:, None, :]  # (K, B, H)
        return torch.softmax(scores, dim=0).permute(1, 0, 2)

    def pool(self, w: Tensor, binned: Tensor) -> Tensor:
        """Weights ``(B, K, H)`` and binned features ``(B, K, D)`` -> pooled ``(B, D)``."""
        if self.heads == 1:
            return (w * binned).sum(1)
        da = self.audio_dim
        return torch.cat([(w[..., :1] * binned[..., :da]).sum(1), (w[..., 1:] * binned[..., da:]).sum(1)], dim=-1)

    def forward(self, out_spikes: Tensor, binned: Tensor) -> Tensor:
        return self.pool(self.weights(out_spikes), binned)
