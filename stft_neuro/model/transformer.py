"""Latent semantic reasoning transformer: cross-modal attention, then gated latent knowledge slots.

The paper (Li et al., IEEE TIP 33, 2024; no official code) says only: learnable latent knowledge
slots with gating, refined by self-attention, and a cross-modal transformer over audio and
visual. Everything else here is a choice, written down where it is made:

1. Input: per-second features ``audio (B, S, Da)`` and ``visual (B, S, Dv)``, and a boolean ``mask
   (B, S)`` with True for a valid second. Padded seconds are replaced by zeros before anything else
   (``torch.where``, so that junk, even inf or NaN, in padding cannot leak through ``0 * inf``).
2. Tokens: a linear projection per modality to ``dim``, plus a fixed sinusoidal encoding of the
   second's index (no parameters, any length) and a learned modality embedding.
3. Cross-modal attention (``cfg.layers`` blocks): audio tokens attend the visual tokens and visual
   tokens attend the audio tokens, simultaneously (both read the other's state from before the
   block), each followed by a feed-forward layer. Pre-norm residual blocks; padded seconds are
   excluded as keys (``key_padding_mask``). No self-attention within a modality here (TCAF found
   cross-modal attention is what helps); the slots below see both modalities together.
4. Latent slots (``cfg.layers`` layers): ``cfg.num_latents`` learnable slots (the prior, shared by all
   samples) read all valid tokens of both modalities by cross-attention. A sigmoid gate, computed
   per slot and channel from ``[slot, update]``, mixes the update with the slot's current state (at
   the first layer the learned prior): ``slot <- g * update + (1 - g) * slot``. Then self-attention
   among the slots and a feed-forward layer (pre-norm residual).
5. Output: the mean over slots, then a LayerNorm: ``r (B, dim)``.

Dropout ``cfg.dropout`` is applied inside every attention and on every residual branch. In eval mode
the output of a sample depends only on its valid seconds (tests/test_transformer.py checks padding
invariance and batch consistency).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from stft_neuro.config import TransformerConfig
from stft_neuro.errors import UserError

FF_MULT = 2  # feed-forward hidden width = FF_MULT * dim (small: sized for CPU training)


def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None) -> Tensor:
    """Fixed sinusoidal encoding of positions ``0..length-1``: ``(length, dim)`` (Vaswani et al.)."""
    pos = torch.arange(length, dtype=torch.float32, device=device)[:, None]  # (S, 1)
    half = (dim + 1) // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=device) / half)
    angles = pos * freq[None, :]  # (S, half)
    enc = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)  # (S, 2*half)
    return enc[:, :dim]


class _FeedForward(nn.Module):
    """Pre-norm feed-forward branch: ``x -> Drop(W2 Drop(GELU(W1 LN(x))))`` (residual added by caller)."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, FF_MULT * dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(FF_MULT * dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class CrossModalBlock(nn.Module):
    """Audio attends visual and visual attends audio (simultaneously), then a feed-forward each.

    ``forward(a (B,S,D), v (B,S,D), pad (B,S) bool True=padding) -> (a', v')``, both ``(B, S, D)``.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_a = nn.LayerNorm(dim)
        self.norm_v = nn.LayerNorm(dim)
        self.a_from_v = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.v_from_a = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.ff_a = _FeedForward(dim, dropout)
        self.ff_v = _FeedForward(dim, dropout)

    def forward(self, a: Tensor, v: Tensor, pad: Tensor) -> tuple[Tensor, Tensor]:
        na, nv = self.norm_a(a), self.norm_v(v)  # (B, S, D)
        a_upd, _ = self.a_from_v(na, nv, nv, key_padding_mask=pad, need_weights=False)
        v_upd, _ = self.v_from_a(nv, na, na, key_padding_mask=pad, need_weights=False)
        a = a + self.drop(a_upd)
        v = v + self.drop(v_upd)
        return a + self.ff_a(a), v + self.ff_v(v)


class GatedSlotLayer(nn.Module):
    """Latent knowledge slots read the tokens (gated cross-attention), then attend each other.

    ``forward(slots (B,K,D), tokens (B,N,D), pad (B,N) bool True=padding) -> slots (B,K,D)``::

        u = Drop(CrossAttn(LN(slots), LN(tokens)))          # (B, K, D), padded tokens excluded
        g = sigmoid(W_g [slots, u] + b_g)                   # (B, K, D)
        slots = g * u + (1 - g) * slots                     # gated update
        slots = slots + Drop(SelfAttn(LN(slots)))
        slots = slots + FF(slots)
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_slots = nn.LayerNorm(dim)
        self.norm_tokens = nn.LayerNorm(dim)
        self.read = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.gate = nn.Linear(2 * dim, dim)
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.ff = _FeedForward(dim, dropout)

    def forward(self, slots: Tensor, tokens: Tensor, pad: Tensor) -> Tensor:
        q, kv = self.norm_slots(slots), self.norm_tokens(tokens)
        update, _ = self.read(q, kv, kv, key_padding_mask=pad, need_weights=False)  # (B, K, D)
        update = self.drop(update)
        g = torch.sigmoid(self.gate(torch.cat([slots, update], dim=-1)))  # (B, K, D)
        slots = g * update + (1.0 - g) * slots
        h = self.norm_self(slots)
        slots = slots + self.drop(self.self_attn(h, h, h, need_weights=False)[0])
        return slots + self.ff(slots)


class LatentSemanticTransformer(nn.Module):
    """Audio-visual sequences ``(B, S, Da)``, ``(B, S, Dv)`` -> pooled semantic vector ``(B, cfg.dim)``.

    See the module docstring for the architecture and the choices made where the paper is silent.
    ``mask (B, S)`` bool, True = valid second; ``None`` means every second is valid. Every sample
    needs at least one valid second (a :class:`UserError` otherwise).
    """

    def __init__(self, audio_dim: int, visual_dim: int, cfg: TransformerConfig) -> None:
        super().__init__()
        if cfg.dim % cfg.heads != 0:
            raise UserError(f"LatentSemanticTransformer: transformer.dim={cfg.dim} is not a multiple "
                            f"of transformer.heads={cfg.heads}")
        if cfg.layers < 1 or cfg.num_latents < 1:
            raise UserError(f"LatentSemanticTransformer: transformer.layers={cfg.layers} and "
                            f"transformer.num_latents={cfg.num_latents} must be >= 1")
        self.cfg = cfg
        self.audio_dim, self.visual_dim = audio_dim, visual_dim
        d = cfg.dim
        self.proj_a = nn.Linear(audio_dim, d)
        self.proj_v = nn.Linear(visual_dim, d)
        self.modality = nn.Parameter(torch.randn(2, d) * 0.02)  # (2, D): audio, visual
        self.in_drop = nn.Dropout(cfg.dropout)
        self.cross = nn.ModuleList(CrossModalBlock(d, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.latents = nn.Parameter(torch.randn(cfg.num_latents, d) * 0.02)  # (K, D) slot prior
        self.slots = nn.ModuleList(GatedSlotLayer(d, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.out_norm = nn.LayerNorm(d)

    @property
    def out_dim(self) -> int:
        """Width of the pooled output ``r``: ``cfg.dim``."""
        return self.cfg.dim

    def _check(self, audio: Tensor, visual: Tensor, mask: Tensor | None) -> Tensor:
        if audio.dim() != 3 or audio.shape[-1] != self.audio_dim:
            raise UserError(f"LatentSemanticTransformer: audio must be (B, S, {self.audio_dim}), "
                            f"got {tuple(audio.shape)}")
        if visual.dim() != 3 or visual.shape[-1] != self.visual_dim:
            raise UserError(f"LatentSemanticTransformer: visual must be (B, S, {self.visual_dim}), "
                            f"got {tuple(visual.shape)}")
        if audio.shape[:2] != visual.shape[:2]:
            raise UserError(f"LatentSemanticTransformer: audio {tuple(audio.shape)} and visual "
                            f"{tuple(visual.shape)} differ in batch or seconds")
        if mask is None:
            return torch.ones(audio.shape[:2], dtype=torch.bool, device=audio.device)
        if mask.shape != audio.shape[:2]:
            raise UserError(f"LatentSemanticTransformer: mask must be {tuple(audio.shape[:2])}, "
                            f"got {tuple(mask.shape)}")
        mask = mask.to(torch.bool)
        if not bool(mask.any(dim=1).all()):
            empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
            raise UserError(f"LatentSemanticTransformer: samples {empty} have no valid second in mask")
        return mask

    def forward(self, audio: Tensor, visual: Tensor, mask: Tensor | None = None) -> Tensor:
        mask = self._check(audio, visual, mask)  # (B, S) True = valid
        pad = ~mask  # (B, S) True = ignore
        keep = mask[..., None]  # (B, S, 1)
        audio = torch.where(keep, audio, torch.zeros((), dtype=audio.dtype, device=audio.device))
        visual = torch.where(keep, visual, torch.zeros((), dtype=visual.dtype, device=visual.device))
        pos = sinusoidal_positions(audio.shape[1], self.cfg.dim, audio.device).to(audio.dtype)  # (S, D)
        a = self.in_drop(self.proj_a(audio) + pos + self.modality[0])  # (B, S, D)
        v = self.in_drop(self.proj_v(visual) + pos + self.modality[1])  # (B, S, D)
        for block in self.cross:
            a, v = block(a, v, pad)
        tokens = torch.cat([a, v], dim=1)  # (B, 2S, D)
        token_pad = torch.cat([pad, pad], dim=1)  # (B, 2S)
        slots = self.latents.expand(audio.shape[0], -1, -1)  # (B, K, D)
        for layer in self.slots:
            slots = layer(slots, tokens, token_pad)
        return self.out_norm(slots.mean(dim=1))  # (B, D)
