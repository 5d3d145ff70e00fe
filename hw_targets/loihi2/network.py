"""A spiking network in Loihi 2 units: the contract between quantization and every integer backend.

The spiking branch of STFT is a stack of ``Dense -> LIF`` layers. Quantization turns the trained
float layers into :class:`FixedPointNetwork`; the torch deploy mode, the reference simulator
(``stft_neuro.sim.reference``) and the Lava session (``stft_neuro.sim.lava_session``) all consume it,
and the design rules (``rules.py``) and core mapping (``mapping.py``) check it.

Units are Lava's ``fixed_pt`` process parameters (``lava.proc.dense.process.Dense`` and
``lava.proc.lif.process.LIF``): integer mantissas and exponents, decays in 1/4096 per step.
This module is data plus the worst-case bounds that follow from it; the arithmetic itself lives in
``arithmetic.py``.

The bounds are defined here once, as properties of :class:`FixedPointLayer`, and every consumer
(quantization report, design rules, reference simulator, Dense kernels, netx runner, plan checks)
reads them from here:

- :class:`PayloadRange` / :attr:`FixedPointLayer.payload`: what one input of a layer's Dense can be;
- :attr:`FixedPointLayer.accumulation_range` / :attr:`FixedPointLayer.dense_output_range`: the exact
  worst case of Lava's Dense over every legal input (attained, not just an upper bound);
- :attr:`FixedPointLayer.u_sustained_bound` / :attr:`FixedPointLayer.u_can_wrap`: the largest ``|u|``
  under that worst case held every step, and whether Lava's u wrap can then ever act.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from stft_neuro.hw_targets.loihi2 import constants as C
from stft_neuro.hw_targets.loihi2.weights import lava_effective_weights


class _Range(NamedTuple):
    lo: int
    hi: int


class PayloadRange(_Range):
    """Inclusive integer range ``(lo, hi)`` of one input value of a Dense (a tuple: unpacks as one).

    Binary spikes are ``(0, 1)``. Graded spikes of ``b`` message bits, as the host sends them
    (``DeploymentPlan.encode_input``: signed ``b``-bit), are ``(-2**(b-1), 2**(b-1) - 1)``. Lava's
    Dense multiplies whatever integers it receives (``lava/proc/dense/models.py`` l.97-101); the
    range is this project's contract, checked by ``DeploymentPlan.check_payload``.
    """

    __slots__ = ()

    def __new__(cls, lo: int, hi: int) -> "PayloadRange":
        if int(lo) > int(hi):
            raise ValueError(f"PayloadRange: lo={lo} > hi={hi}")
        return super().__new__(cls, int(lo), int(hi))

    @classmethod
    def for_message_bits(cls, num_message_bits: int) -> "PayloadRange":
        """The input range of a Dense with ``num_message_bits``: binary for 0, else signed."""
        b = int(num_message_bits)
        if b < 0:
            raise ValueError(f"PayloadRange.for_message_bits: {b} < 0")
        return cls(0, 1) if b == 0 else cls(-(2 ** (b - 1)), 2 ** (b - 1) - 1)

    @property
    def abs_max(self) -> int:
        """Largest ``|value|`` (``2**(b-1)`` for ``b`` graded bits, 1 for binary spikes)."""
        return max(abs(self.lo), abs(self.hi))

    @property
    def binary(self) -> bool:
        return self.lo == 0 and self.hi == 1


def lava_dense_shift(acc: int, weight_exp: int) -> int:
    """Lava Dense's weight exponent on one integer: ``acc << e``, or ``acc >> -e`` (floor) for
    ``e < 0`` (``np.left_shift`` / ``np.right_shift``, ``lava/proc/dense/models.py`` l.103-107)."""
    e = int(weight_exp)
    return int(acc) << e if e >= 0 else int(acc) >> -e


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

    # ------------------------------------------------------------------ worst-case bounds
    @property
    def payload(self) -> PayloadRange:
        """The range of one input of this layer's Dense (:meth:`PayloadRange.for_message_bits`)."""
        return PayloadRange.for_message_bits(self.num_message_bits)

    @property
    def accumulation_range(self) -> tuple[int, int]:
        """Exact worst case ``(min, max)``, over neurons and every input vector in :attr:`payload`,
        of Lava's Dense accumulation ``W @ s`` with the weights Lava uses
        (:func:`~stft_neuro.hw_targets.loihi2.weights.lava_effective_weights`).

        Per neuron ``j`` with positive-weight sum ``P_j`` and negative-weight sum ``N_j``, the
        maximum is ``P_j * hi + N_j * lo`` and the minimum ``P_j * lo + N_j * hi`` (each input picks
        its extreme independently, so both are attained). Python integers: no overflow. ``(0, 0)``
        for an empty matrix. This full-sum range is what Lava's int32 accumulator must hold
        (int32 wraps modulo ``2**32``, so partial sums do not matter there).
        """
        w = lava_effective_weights(self.weight)
        if w.size == 0:
            return 0, 0
        lo_s, hi_s = self.payload
        pos = np.clip(w, 0, None).sum(axis=1, dtype=np.int64)   # (n_out,) P_j
        neg = np.clip(w, None, 0).sum(axis=1, dtype=np.int64)   # (n_out,) N_j
        hi = max(int(p) * hi_s + int(n) * lo_s for p, n in zip(pos, neg))
        lo = min(int(p) * lo_s + int(n) * hi_s for p, n in zip(pos, neg))
        return lo, hi

    @property
    def dense_output_range(self) -> tuple[int, int]:
        """Exact worst case ``(min, max)`` of the Dense output ``a_out``: :attr:`accumulation_range`
        through the weight exponent as Lava applies it (:func:`lava_dense_shift`; monotone, so the
        extremes map to the extremes)."""
        lo, hi = self.accumulation_range
        return lava_dense_shift(lo, self.weight_exp), lava_dense_shift(hi, self.weight_exp)

    @property
    def dense_output_abs_max(self) -> int:
        """Largest possible ``|a_out|`` (attained): ``max(|min|, |max|)`` of :attr:`dense_output_range`."""
        lo, hi = self.dense_output_range
        return max(-lo, hi)

    @property
    def u_sustained_bound(self) -> int:
        """Largest ``|u|`` when every step adds the worst ``|a_out| << 6`` (and u starts at 0):
        ``floor(A * 4096 / (du + 1))`` with ``A = dense_output_abs_max << ACT_SHIFT``.

        Why it holds (Lava's ``u <- trunc(u * (4095 - du) / 4096) + (a << 6)``, ``lif/models.py``
        l.145-158): with ``M`` this bound, ``|u| <= M`` gives ``|u'| <= M - ceil(M (du+1) / 4096) + A``,
        and ``M (du+1) / 4096 > A - 1``, so ``|u'| <= M``: an invariant of the update.
        """
        a = self.dense_output_abs_max << C.ACT_SHIFT
        return a * C.DECAY_UNITY // (int(self.du) + C.DS_OFFSET)

    @property
    def u_can_wrap(self) -> bool:
        """Whether Lava's u wrap (``u > 2**23`` or ``u <= -2**23``, ``lif/models.py`` l.161-170) can
        act for some input: False when :attr:`u_sustained_bound` ``< 2**23``."""
        return self.u_sustained_bound >= C.UV_MAX_VAL


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


# ------------------------------------------------------------------------------------------------
# Any graph: populations and the Dense projections between them


#: The graph input's name as a projection source (the host's graded payloads).
GRAPH_INPUT: str = "input"


@dataclass(frozen=True)
class Population:
    """One Lava ``LIF`` process: neurons of one graph layer that share ``du``, ``dv`` and ``vth``.

    Lava's fixed-point LIF holds one ``du``, ``dv``, ``vth`` (and ``bias_exp``) per process and a
    bias mantissa per neuron (``lava/proc/lif/process.py``), so a layer whose neurons differ in
    those is split into one population per distinct integer profile ``(du, dv, vth)``.

    Attributes:
        name: ``"<layer>"`` for a single-profile layer, else ``"<layer>#<k>"``.
        layer: the graph layer (NIR neuron node) it belongs to.
        index: ``(n,)`` positions of its neurons in the layer's flat output (ascending).
        du, dv, vth, bias_exp: as :class:`FixedPointLayer`.
        bias_mant: ``(n,)`` bias mantissas (13-bit signed), added to v from Lava step 0.
        readout: a leaky integrator (NIR ``LI``/``CubaLI``): Lava's LIF arithmetic without
            threshold and reset (never spikes, ``vth`` unused, 0); what it sends each step is its
            membrane ``v`` (a graded spike, int32), one value per neuron per step. A readout
            feeds no projection (only the host reads it).
        state_scale: integer LSBs of ``u`` and ``v`` per float unit of the layer (the quantizer's
            ``S``): a readout's ``v / state_scale`` is its value in the float graph's units.
        v_reset: ``(n,)`` where a spiking neuron's v goes (24-bit integers), or None for Lava's
            LIF's 0 (NIR ``v_reset != 0``: Lava runs it on ``sim/lava_procs.ResetLIF``).
    """

    name: str
    layer: str
    index: np.ndarray
    du: int
    dv: int
    vth: int
    bias_mant: np.ndarray
    bias_exp: int
    readout: bool = False
    state_scale: float = 1.0
    v_reset: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.index.size)


@dataclass(frozen=True)
class Projection:
    """One Lava ``Dense``/``Sparse`` process from a source to a :class:`Population`.

    ``src`` is a population name, :data:`GRAPH_INPUT` (the host's graded payloads, ``(n_in,)``)
    or ``"bias:<layer>@<step>"`` (a constant 1 from the layer's reference step ``step`` on: a
    bias into the synaptic current ``u``). ``weight`` ``(n_dst, n_src)`` holds the integers Lava
    computes with (Lava-effective for this projection's own sign mode). Every projection delivers
    one step late (Lava's ``a_buff``); one whose source is its destination's own layer is a
    recurrent connection (snnTorch's ``RLeaky``: the previous step's spikes).
    """

    src: str
    dst: str
    weight: np.ndarray
    weight_exp: int
    num_message_bits: int = 0
    #: a convolution (``converters/nir_fixed._conv_projection``): ``kernel`` (C_out, C_in/groups,
    #: kh, kw) integers whose unrolled matrix is ``weight``, and its geometry (``stride``,
    #: ``padding``, ``dilation``, ``groups``, ``in_shape`` (C, H, W), ``out_shape``). Lava runs it
    #: on its ``Conv`` process (kernel x 2^weight_exp, since that model has no exponent); every
    #: other consumer uses ``weight``.
    conv: dict | None = None

    def as_layer(self, dst: Population) -> FixedPointLayer:
        """This Dense and its destination as a :class:`FixedPointLayer` (for its bounds and the
        per-layer design rules)."""
        return FixedPointLayer(name=f"{self.src}->{self.dst}", weight=self.weight,
                               weight_exp=self.weight_exp, du=dst.du, dv=dst.dv, vth=dst.vth,
                               bias_mant=dst.bias_mant, bias_exp=dst.bias_exp,
                               num_message_bits=self.num_message_bits)


@dataclass(frozen=True)
class FixedPointGraph:
    """A spiking graph in Lava fixed_pt units: populations, and Dense projections between them.

    ``layers`` maps each graph layer (NIR neuron node, in computation order) to its flat size;
    ``depth`` gives the Lava steps between input time and the layer's time (a layer at depth ``d``
    computes reference step ``t`` at Lava step ``t + d``); ``bias_inputs`` lists the constant
    sources ``"bias:<layer>@<step>"``: source ``k`` sends 1 from Lava step ``depth + step - 1`` on
    (so its projection delivers from the layer's reference step ``step``). The host sends the
    graded payloads ``(n_in,)`` at each Lava step.
    """

    n_in: int
    input_bits: int
    layers: tuple[tuple[str, int], ...]
    depth: tuple[tuple[str, int], ...]
    populations: tuple[Population, ...]
    projections: tuple[Projection, ...]
    bias_inputs: tuple[str, ...] = ()

    def population(self, name: str) -> Population:
        for p in self.populations:
            if p.name == name:
                return p
        raise KeyError(name)

    def of_layer(self, layer: str) -> tuple[Population, ...]:
        return tuple(p for p in self.populations if p.layer == layer)

    def source_size(self, src: str) -> int:
        if src == GRAPH_INPUT:
            return self.n_in
        if src.startswith("bias:"):
            return 1
        return self.population(src).n

    def bias_start(self, src: str) -> int:
        """Lava step from which the constant source ``src`` sends 1 (see the class doc)."""
        layer, step = src[len("bias:"):].rsplit("@", 1)
        return dict(self.depth)[layer] + int(step) - 1
