"""Temporal-semantic fusion of the transformer vector ``r`` and the spiking vector ``s``.

The paper (Li et al., IEEE TIP 33, 2024; no official code, so as far as its text says):
``y = G x1 (U_r^T r) x2 (U_s^T s) x3 U_o``, core ``G`` of rank around 60 per mode, internal width 512;
"multi-scale" = several such fusions at different ranks, combined.

:class:`TuckerFusion` follows MUTAN (Ben-Younes et al., 2017), the Tucker fusion this formula is::

    r' = Drop(tanh(U_r r + b_r))            in R^rank       (mode-1 factor, rank = the mode's rank)
    s' = Drop(tanh(U_s s + b_s))            in R^rank       (mode-2 factor, same rank)
    z_k = sum_ij G_ijk r'_i s'_j            in R^width      (core G in R^{rank x rank x width})
    y  = U_o Drop(z) + b_o                  in R^out_dim

Choices where the paper is silent:

* Modes 1 and 2 share one rank (``rank``); the core's third mode is the internal width ``width``
  (MUTAN's t_o; the paper's 512), and ``U_o`` maps it to ``out_dim`` (default ``width``).
* tanh on the factor projections and biases on ``U_r``, ``U_s``, ``U_o``, as MUTAN; the core has no
  bias (``b_o`` covers it); no nonlinearity after ``U_o``: the caller maps ``y`` to the embedding.
* ``G`` is initialised N(0, 1/rank^2) (fan-in ``rank^2``).

:class:`MultiScaleTuckerFusion`: one :class:`TuckerFusion` per rank in ``FusionConfig.ranks``
(each with its own factors, core and output map), all with ``width = out_dim = cfg.width``, combined
as a convex sum with learned softmax weights (logits start at 0: an equal mean; with a single rank
the weight is exactly 1). :class:`ConcatFusion` is the ablation: ``MLP([r, s])``.

Parameter counts are analytic (:func:`tucker_parameter_count`, :func:`bilinear_parameter_count`, ...)
and :func:`parameter_table` lists them; tests check each against ``sum(p.numel())`` of the module.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from stft_neuro.config import FusionConfig
from stft_neuro.errors import UserError


class TuckerFusion(nn.Module):
    """One Tucker (MUTAN-style) fusion: ``r (B, dim_r)``, ``s (B, dim_s)`` -> ``y (B, out_dim)``.

    See the module docstring for the equations. ``rank``: rank of modes 1 and 2; ``width``: size of
    the core's third mode; ``out_dim``: output width (default ``width``).
    """

    def __init__(self, dim_r: int, dim_s: int, rank: int, width: int, out_dim: int | None = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        out_dim = width if out_dim is None else out_dim
        for name, value in (("dim_r", dim_r), ("dim_s", dim_s), ("rank", rank), ("width", width),
                            ("out_dim", out_dim)):
            if value < 1:
                raise UserError(f"TuckerFusion: {name}={value} must be >= 1")
        self.dim_r, self.dim_s, self.rank, self.width, self.out_dim = dim_r, dim_s, rank, width, out_dim
        self.proj_r = nn.Linear(dim_r, rank)  # U_r
        self.proj_s = nn.Linear(dim_s, rank)  # U_s
        self.core = nn.Parameter(torch.randn(rank, rank, width) / rank)  # G (R, R, W)
        self.proj_o = nn.Linear(width, out_dim)  # U_o
        self.drop = nn.Dropout(dropout)

    def factors(self, r: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """The mode factors ``r' (B, rank)``, ``s' (B, rank)`` (after tanh and dropout)."""
        return self.drop(torch.tanh(self.proj_r(r))), self.drop(torch.tanh(self.proj_s(s)))

    def forward(self, r: Tensor, s: Tensor) -> Tensor:
        rf, sf = self.factors(r, s)  # (B, R), (B, R)
        outer = (rf[:, :, None] * sf[:, None, :]).flatten(1)  # (B, R*R)
        z = outer @ self.core.reshape(self.rank * self.rank, self.width)  # (B, W)
        return self.proj_o(self.drop(z))  # (B, out_dim)


class MultiScaleTuckerFusion(nn.Module):
    """One :class:`TuckerFusion` per rank in ``cfg.ranks`` -> softmax-weighted sum ``(B, cfg.width)``.

    ``y = sum_i softmax(alpha)_i TuckerFusion_i(r, s)``, ``alpha`` learned, initialised to zeros.
    """

    def __init__(self, dim_r: int, dim_s: int, cfg: FusionConfig) -> None:
        super().__init__()
        if len(cfg.ranks) < 1:
            raise UserError("MultiScaleTuckerFusion: fusion.ranks must list at least one rank")
        self.out_dim = cfg.width
        self.scales = nn.ModuleList(
            TuckerFusion(dim_r, dim_s, rank, cfg.width, cfg.width, cfg.dropout) for rank in cfg.ranks)
        self.scale_logits = nn.Parameter(torch.zeros(len(cfg.ranks)))  # (n_scales,)

    def scale_weights(self) -> Tensor:
        """The combination weights, ``softmax(alpha)``: ``(n_scales,)``, summing to 1."""
        return torch.softmax(self.scale_logits, dim=0)

    def forward(self, r: Tensor, s: Tensor) -> Tensor:
        ys = torch.stack([f(r, s) for f in self.scales], dim=0)  # (n_scales, B, W)
        return torch.einsum("n,nbw->bw", self.scale_weights(), ys)  # (B, W)


class ConcatFusion(nn.Module):
    """Ablation: ``y = W2 Drop(ReLU(W1 [r, s] + b1)) + b2``: ``(B, cfg.width)``.

    ``dim_s = 0`` (no spiking branch) makes it an MLP on ``r`` alone; ``forward`` then accepts
    ``s=None`` (or a ``(B, 0)`` tensor).
    """

    def __init__(self, dim_r: int, dim_s: int, cfg: FusionConfig) -> None:
        super().__init__()
        if dim_r < 1 or dim_s < 0:
            raise UserError(f"ConcatFusion: dim_r={dim_r} must be >= 1 and dim_s={dim_s} >= 0")
        self.dim_r, self.dim_s, self.out_dim = dim_r, dim_s, cfg.width
        self.net = nn.Sequential(
            nn.Linear(dim_r + dim_s, cfg.width),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.width, cfg.width),
        )

    def forward(self, r: Tensor, s: Tensor | None = None) -> Tensor:
        if self.dim_s == 0:
            return self.net(r)  # (B, W)
        if s is None:
            raise UserError(f"ConcatFusion: built with dim_s={self.dim_s} but given no spiking vector")
        return self.net(torch.cat([r, s], dim=-1))  # (B, W)


class _IgnoreSpiking(nn.Module):
    """Wraps a fusion of ``r`` alone so that ``forward(r, s)`` ignores ``s`` (uniform call)."""

    def __init__(self, inner: ConcatFusion) -> None:
        super().__init__()
        self.inner = inner
        self.out_dim = inner.out_dim

    def forward(self, r: Tensor, s: Tensor | None = None) -> Tensor:
        return self.inner(r)


def build_fusion(cfg: FusionConfig, dim_r: int, dim_s: int) -> nn.Module:
    """The fusion the config asks for; every result has ``forward(r, s) -> (B, cfg.width)`` and ``out_dim``.

    * ``dim_s == 0`` (spiking branch disabled): there is nothing to fuse, so whatever ``cfg.kind``
      says, an MLP on ``r`` alone (``ConcatFusion`` with ``dim_s=0``), ignoring ``s``.
    * ``kind == "tucker"``: :class:`MultiScaleTuckerFusion`; ``kind == "concat"``: :class:`ConcatFusion`.
    """
    if dim_s < 0 or dim_r < 1:
        raise UserError(f"build_fusion: dim_r={dim_r} must be >= 1 and dim_s={dim_s} >= 0")
    if dim_s == 0:
        return _IgnoreSpiking(ConcatFusion(dim_r, 0, cfg))
    if cfg.kind == "tucker":
        return MultiScaleTuckerFusion(dim_r, dim_s, cfg)
    if cfg.kind == "concat":
        return ConcatFusion(dim_r, dim_s, cfg)
    raise UserError(f"build_fusion: fusion.kind={cfg.kind!r} must be tucker or concat")


# --- Parameter counts (analytic) ---------------------------------------------------------------

def tucker_parameter_count(dim_r: int, dim_s: int, rank: int, width: int, out_dim: int | None = None) -> int:
    """Parameters of ``TuckerFusion(dim_r, dim_s, rank, width, out_dim)``::

        (dim_r + 1) rank  +  (dim_s + 1) rank  +  rank^2 width  +  (width + 1) out_dim
         U_r, b_r            U_s, b_s             G                 U_o, b_o
    """
    out_dim = width if out_dim is None else out_dim
    return (dim_r + 1) * rank + (dim_s + 1) * rank + rank * rank * width + (width + 1) * out_dim


def multiscale_tucker_parameter_count(dim_r: int, dim_s: int, ranks: tuple[int, ...], width: int) -> int:
    """Parameters of ``MultiScaleTuckerFusion``: the scales' Tucker fusions plus one logit per scale."""
    return sum(tucker_parameter_count(dim_r, dim_s, k, width) for k in ranks) + len(ranks)


def bilinear_parameter_count(dim_r: int, dim_s: int, width: int) -> int:
    """Parameters of a full bilinear fusion ``y = W x1 r x2 s + b``, ``W in R^{dim_r x dim_s x width}``
    (``torch.nn.Bilinear(dim_r, dim_s, width)``): ``dim_r dim_s width + width``."""
    return dim_r * dim_s * width + width


def concat_parameter_count(dim_r: int, dim_s: int, width: int) -> int:
    """Parameters of ``ConcatFusion``: ``(dim_r + dim_s + 1) width + (width + 1) width``."""
    return (dim_r + dim_s + 1) * width + (width + 1) * width


def parameter_table(cfg: FusionConfig, dim_r: int, dim_s: int) -> list[dict[str, Any]]:
    """Rows ``{"fusion", "ranks", "width", "parameters", "vs_bilinear"}`` comparing the fusions.

    One row per Tucker scale, the multi-scale total, the concat ablation, and the full bilinear
    fusion; ``vs_bilinear`` = parameters / full bilinear parameters.
    """
    bilinear = bilinear_parameter_count(dim_r, dim_s, cfg.width)
    rows: list[dict[str, Any]] = []

    def row(name: str, ranks: tuple[int, ...], n: int) -> None:
        rows.append({"fusion": name, "ranks": list(ranks), "width": cfg.width, "parameters": n,
                     "vs_bilinear": n / bilinear})

    for k in cfg.ranks:
        row("tucker", (k,), tucker_parameter_count(dim_r, dim_s, k, cfg.width))
    row("tucker-multiscale", tuple(cfg.ranks),
        multiscale_tucker_parameter_count(dim_r, dim_s, tuple(cfg.ranks), cfg.width))
    row("concat", (), concat_parameter_count(dim_r, dim_s, cfg.width))
    row("bilinear", (), bilinear)
    return rows
