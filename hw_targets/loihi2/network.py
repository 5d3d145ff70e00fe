"""A spiking network in Loihi 2 units: the contract between quantization and every integer backend.

The spiking branch of STFT is a stack of ``Dense -> LIF`` layers. Quantization turns the trained
float layers into :class:`FixedPointNetwork`; the torch deploy mode, the reference simulator
(``stft_neuro.sim.reference``) and the Lava runner (``stft_neuro.sim.lava_runner``) all consume it,
and the design rules (``rules.py``) and core mapping (``mapping.py``) check it.

Units are Lava's ``fixed_pt`` process parameters (``lava.proc.dense.process.Dense`` and
``lava.proc.lif.process.LIF``): integer mantissas and exponents, decays in 1/4096 per step.
This module is data only; the arithmetic lives in ``arithmetic.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FixedPointLayer:
    """One ``Dense(weight) -> LIF`` layer, in Lava fixed_pt units.

    Attributes:
        name: layer name, used in reports and design-rule messages (e.g. ``"lif1"``).
        weight: ``(n_out, n_in)`` integer weights as given to Lava's ``Dense``. Lava keeps
            ``[-256, 254]`` even values when signs are mixed (an 8-bit signed mantissa times 2),
            ``[0, 255]`` / ``[-255, 0]`` when one-signed (``arithmetic.lava_effective_weights``).
        weight_exp: weight exponent; the Dense output is ``floor((weight @ s) * 2**weight_exp)``,
            and the LIF adds it to ``u`` as ``a << 6`` (see ``arithmetic.py`` for the exact order).
        du: current decay, 12-bit (``u *= (4096 - du - 1) / 4096`` per step, toward zero).
        dv: voltage decay, 12-bit.
        vth: threshold mantissa (Lava's ``vth``; compared against ``v`` after ``<< 6``).
        bias_mant: ``(n_out,)`` integer bias mantissas (13-bit signed).
        bias_exp: bias exponent (3-bit).
        num_message_bits: payload bits of the spikes this layer's Dense receives: 0 for binary
            spikes, >0 for graded spikes (the host's input currents use graded spikes).
    """

    name: str
    weight: np.ndarray
    weight_exp: int
    du: int
    dv: int
    vth: int
    bias_mant: np.ndarray
    bias_exp: int
    num_message_bits: int = 0

    @property
    def n_in(self) -> int:
        return int(self.weight.shape[1])

    @property
    def n_out(self) -> int:
        return int(self.weight.shape[0])


@dataclass(frozen=True)
class FixedPointNetwork:
    """A feed-forward stack of :class:`FixedPointLayer`; layer ``l`` reads layer ``l-1``'s spikes.

    Layer 0 reads what the host sends each step (graded spikes, ``num_message_bits > 0``).
    Every Dense adds one step of delay, exactly as in Lava: the LIF of layer ``l`` at step ``t``
    receives ``Dense_l(s_{l-1}[t-1])``, where ``s_{-1}`` is the host input.
    """

    layers: tuple[FixedPointLayer, ...]

    @property
    def n_in(self) -> int:
        return self.layers[0].n_in

    @property
    def sizes(self) -> tuple[int, ...]:
        """``(n_in, n_1, ..., n_L)``."""
        return (self.n_in, *(layer.n_out for layer in self.layers))
