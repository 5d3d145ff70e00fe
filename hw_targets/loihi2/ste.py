"""Straight-through wrappers: exact integer values forward, a chosen linear slope backward.

The one place where quantization meets autograd. Quantization itself (``quantize.py``) and the
host -> chip conversions (``plan.py``) compute the exact integers without gradients (float64,
numpy or torch); these wrappers attach them to the float tensors they came from so that
quantization-aware training can backpropagate through them.

``straight_through(x, exact, slope)`` returns a tensor whose *value* is ``exact`` bit for bit
(``exact + (lin - lin.detach())`` adds an exact zero) and whose gradient w.r.t. ``x`` is ``slope``.
The more common ``lin + (exact - lin).detach()`` is not exact in floating point when ``exact`` and
``lin`` are far apart (a saturated weight, a clamped threshold).
"""
from __future__ import annotations

from torch import Tensor


def straight_through(x: Tensor, exact: Tensor, slope: float | Tensor = 1.0) -> Tensor:
    """Value ``exact`` (in ``exact``'s dtype), gradient ``slope`` w.r.t. ``x``.

    Args:
        x: the float tensor the exact values were computed from (may require grad).
        exact: the exact result, same shape as ``x`` (or broadcastable), no gradient needed.
        slope: d(result)/dx of the linear surrogate (e.g. the quantization scale ``k``).
    """
    exact = exact.detach()
    if not (x.is_floating_point() and x.requires_grad):
        return exact
    lin = x.to(exact.dtype) * slope
    return exact + (lin - lin.detach())
