"""What Lava's fixed_pt Dense and LIF do to the parameters they are given: numpy only, no torch.

Shared by the arithmetic (``arithmetic.py``), quantization and the design rules (``rules.py``), so
that Lava's sign-mode rules for 8-bit weights are written once.
"""
from __future__ import annotations

import numpy as np

from stft_neuro.hw_targets.loihi2 import constants as C


def weight_sign_mode(weight: np.ndarray) -> str:
    """``"excitatory"`` (all >= 0, incl. all zero), ``"inhibitory"`` (all <= 0) or ``"mixed"``.

    Lava: ``lava/utils/weightutils.py`` ``determine_sign_mode`` (l.21-43).
    """
    w = np.asarray(weight)
    if w.size == 0 or w.min() >= 0:
        return "excitatory"
    if w.max() <= 0:
        return "inhibitory"
    return "mixed"


def weight_range(sign_mode: str) -> tuple[int, int, int]:
    """``(min, max, step)`` of the weights Lava's Dense keeps unchanged in ``sign_mode``."""
    if sign_mode == "excitatory":
        return 0, C.WEIGHT_MAX_UNSIGNED, 1
    if sign_mode == "inhibitory":
        return -C.WEIGHT_MAX_UNSIGNED, 0, 1
    if sign_mode == "mixed":
        return C.WEIGHT_MIN_MIXED, C.WEIGHT_MAX_MIXED, C.WEIGHT_MIXED_STEP
    raise ValueError(f"weight_range: unknown sign_mode {sign_mode!r}")


def lava_effective_weights(weight: np.ndarray) -> np.ndarray:
    """The int64 weights Lava's fixed_pt Dense actually uses for ``weight`` (8-bit, default sign mode).

    Reproduces ``clip_weights(w, mode, num_bits=8)`` then ``truncate_weights(w, mode, 8)``
    (``lava/proc/dense/models.py`` l.83-90): the sign mode comes from the whole matrix; mixed-sign
    weights are clipped to ``[-256, 255]`` and floored to even values; one-signed weights are
    clipped to ``[0, 255]`` / ``[-255, 0]``. Non-integer input is truncated toward zero first, as
    Lava's int32 ``Var`` does.
    """
    w = np.trunc(np.asarray(weight, dtype=np.float64)).astype(np.int64)
    mode = weight_sign_mode(w)
    lo, hi, _ = weight_range("mixed" if mode == "mixed" else "excitatory")
    if mode == "inhibitory":
        return -np.clip(-w, 0, C.WEIGHT_MAX_UNSIGNED)
    w = np.clip(w, lo, C.WEIGHT_MAX_UNSIGNED if mode == "mixed" else hi)
    if mode == "mixed":
        w = (w >> 1) << 1  # truncate_weights: one bit for the sign (floor, as numpy >>)
    return w


def effective_bias(bias_mant: np.ndarray, bias_exp: int) -> np.ndarray:
    """``bias_mant << bias_exp`` (right shift = floor for a negative exponent), int64.

    Lava: ``AbstractPyLifModelFixed.scale_bias`` (``lava/proc/lif/models.py`` l.110-122).
    """
    b = np.asarray(bias_mant).astype(np.int64)
    e = int(bias_exp)
    return b << e if e >= 0 else b >> (-e)
