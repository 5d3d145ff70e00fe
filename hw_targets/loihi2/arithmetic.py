"""Loihi 2's fixed-point Dense + LIF arithmetic in torch, bit-exact with Lava's ``fixed_pt`` models.

One definition of the integer arithmetic: :func:`lif_step` (the LIF update) and :func:`dense` /
:func:`shift_floor` (the Dense accumulation and its weight exponent). Used four ways:

1. **Quantization-aware training / torch deploy mode**: inputs are float tensors that hold integer
   values (the plan's weights wrapped by :func:`~stft_neuro.hw_targets.loihi2.quantize.qat_layers`).
   The forward pass is exact; every rounding, shift, wrap and clip has a straight-through backward
   (the gradient of ``y = round(k * x)`` is ``k``; of a wrap/clip, 1). The spike nonlinearity is the
   caller's ``spike_fn`` (a surrogate-gradient Heaviside), applied to ``v - (vth_eff << 6)``.
2. **The reference simulator** (``sim/reference.py``) steps :func:`lif_step` over t for each layer
   and applies :func:`shift_floor` to the products of its exact Dense kernels
   (``sim/dense_kernels.py``, tested equal to :func:`dense`): the same functions, in a loop order
   that batches the Dense over all T steps.
3. **Tests**: stepping :func:`chip_step` over T steps must equal ``ReferenceSimulator`` and Lava;
   :func:`lif_step` equals a transcription of Lava's numpy code (``tests/test_loihi2_arithmetic.py``).
4. **Documentation**: the order of operations below *is* Lava's (lava-nc 0.10.0,
   ``lava/proc/dense/models.py`` ``AbstractPyDenseModelBitAcc.run_spk`` and
   ``lava/proc/lif/models.py`` ``AbstractPyLifModelFixed.subthr_dynamics`` / ``PyLifModelBitAcc``).

Per step, per layer (all integers; constants from ``constants.py``)::

    # LIF (receives a = the Dense output computed at the previous step)
    u = trunc(u * (4096 - (du + 1)) / 4096)          # toward zero; ds_offset = 1
    u = u + (a << 6)                                  # act_shift
    u = u - 2**24 if u > 2**23 else u + 2**24 if u <= -2**23 else u     # wrap (once)
    v = trunc(v * (4096 - dv) / 4096)                 # dm_offset = 0
    v = clip(v + u + bias, -(2**23) + 1, 2**23 - 1)   # bias = bias_mant << bias_exp, NOT << 6
    s = v > ((vth + theta) << 6)                      # theta = STFT threshold modulation (0: Lava)
    v = 0 where s                                     # hard reset
    # Dense (computes what the next layer's LIF receives at the *next* step)
    a_next = floor((W @ s_in) * 2**weight_exp)        # numpy left/right shift; W Lava-effective

Float <-> integer correspondence (Lava's ``floating_pt`` LIF: ``u = u*(1-du_f) + a_f``,
``v = v*(1-dv_f) + u + b_f``, spike ``v > vth_f``, with ``a_f = W_f @ s_prev``). Pick a per-layer
state scale ``S`` (integer LSBs of u and v per float unit; ``quantize.py`` chooses it):

- ``u_int = S * u_f``, ``v_int = S * v_f``, ``bias_mant << bias_exp = S * b_f`` (no ``<< 6``),
- ``vth << 6 = S * vth_f``, i.e. ``vth = S * vth_f / 64``; a threshold modulation of ``theta_f``
  float units is ``theta = S * theta_f / 64`` mantissa units,
- ``(W_int << weight_exp) << 6 = S * W_f * in_scale`` where ``in_scale`` is the float value of one
  payload LSB of the layer's input (1 for binary spikes; the host input's quantization step for the
  graded first layer),
- ``du + 1 = 4096 * du_f`` and ``dv = 4096 * dv_f`` (rounded; so ``du_f = 0`` and ``dv_f = 1`` are
  not representable: the nearest are 1/4096 and 4095/4096).

Preconditions (guaranteed by ``quantize.py`` and checked by the design rules, not here): weights
are Lava-effective (:func:`lava_effective_weights` is the identity on them), ``|a| < 2**25`` so that
``a << 6`` fits Lava's int32, and Dense accumulations fit in int32 (the worst cases are properties
of the layer: ``FixedPointLayer.dense_output_range``, ``accumulation_range``).

Float tensors are computed internally in float64 (exact for all integers below 2**53: the decay
product ``u * 4095`` needs 36 bits) and returned in the input dtype; integer tensors in int64.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from stft_neuro.hw_targets.loihi2 import constants as C
from stft_neuro.hw_targets.loihi2.network import FixedPointLayer, FixedPointNetwork
from stft_neuro.contract import ChipState
from stft_neuro.hw_targets.loihi2.ste import straight_through
from stft_neuro.hw_targets.loihi2.weights import effective_bias, lava_effective_weights

SpikeFn = Callable[[Tensor], Tensor]

#: Largest integer up to which every float32 integer (and every partial sum of a float32 matmul
#: whose partial sums stay within it) is exact.
FLOAT32_EXACT_MAX: int = 2 ** 24


# ----------------------------------------------------------------------------------------------
# Elementwise integer operations with straight-through gradients
# ----------------------------------------------------------------------------------------------

def _work(x: Tensor) -> Tensor:
    """The exact working dtype: float64 for float tensors, int64 for integer/bool tensors."""
    return x.to(torch.float64) if x.is_floating_point() else x.to(torch.int64)


def heaviside(x: Tensor) -> Tensor:
    """The spike nonlinearity of Lava's LIF: 1 where ``x > 0`` (strictly), else 0; no gradient."""
    return (x > 0).to(x.dtype if x.is_floating_point() else torch.int64)


def shift_floor(x: Tensor, exp: int) -> Tensor:
    """``x << exp`` for ``exp >= 0``, ``x >> -exp`` (floor, like numpy) for ``exp < 0``.

    Straight-through gradient ``2**exp``. Lava: Dense ``a_buff`` (``dense/models.py`` l.103-107).
    """
    w = _work(x)
    if exp >= 0:
        y = w * (2 ** exp)
    elif w.is_floating_point():
        y = torch.floor(w / (2 ** -exp))
    else:
        y = torch.bitwise_right_shift(w, -exp)
    return straight_through(x, y, 2.0 ** exp).to(x.dtype if x.is_floating_point() else torch.int64)


def decay(x: Tensor, decay_const: int) -> Tensor:
    """``trunc(x * (4096 - decay_const) / 4096)``: Lava's decay, rounded toward zero.

    ``decay_const`` is ``du + ds_offset`` for u, ``dv + dm_offset`` for v
    (``lif/models.py`` l.145-153, l.174-184). Straight-through gradient ``(4096 - decay_const)/4096``.
    """
    keep = C.DECAY_UNITY - int(decay_const)
    w = _work(x.detach())
    if w.is_floating_point():
        # (w * keep) / 4096 == w * (keep / 4096) exactly: |w * keep| < 2**37 and keep / 4096 is
        # dyadic, so the one rounding of the product has nothing to round.
        y = (w * (keep / C.DECAY_UNITY)).trunc_()
    else:
        p = w * keep
        y = torch.sign(p) * torch.bitwise_right_shift(p.abs(), C.DECAY_SHIFT)
    y = straight_through(x, y, keep / C.DECAY_UNITY)
    out = x.dtype if x.is_floating_point() else torch.int64
    return y if y.dtype == out else y.to(out)


def wrap_u(u: Tensor) -> Tensor:
    """Lava's single wrap of u into ``(-2**23, 2**23]`` (``lif/models.py`` l.161-170); gradient 1."""
    y = torch.where(u > C.UV_MAX_VAL, u - C.U_WRAP, u)
    y = torch.where(y <= -C.UV_MAX_VAL, y + C.U_WRAP, y)
    return straight_through(u, y)


def clip_v(v: Tensor) -> Tensor:
    """Lava's saturation of v to ``[-(2**23) + 1, 2**23 - 1]`` (``lif/models.py`` l.186); gradient 1."""
    return straight_through(v, v.clamp(C.V_MIN, C.V_MAX))


# ----------------------------------------------------------------------------------------------
# Dense and LIF
# ----------------------------------------------------------------------------------------------

def matmul_is_float32_exact(n_in: int, payload_max: int,
                            weight_max: int = -C.WEIGHT_MIN_MIXED) -> bool:
    """Whether ``s @ W.T`` in float32 is exact for every input: every partial sum is an integer of
    magnitude ``<= n_in * payload_max * weight_max <= 2**24`` (then no rounding can occur, in any
    summation order, on any BLAS; TF32 must be off on CUDA)."""
    return n_in * payload_max * weight_max <= FLOAT32_EXACT_MAX


def dense(s: Tensor, weight: Tensor, weight_exp: int, payload_max: int = 1) -> Tensor:
    """Lava's fixed_pt Dense accumulation: ``floor((s @ weight.T) * 2**weight_exp)``.

    Args:
        s: ``(B, n_in)`` spikes (0/1) or graded payloads, integer-valued.
        weight: ``(n_out, n_in)`` Lava-effective integer weights (float holding ints for QAT).
        weight_exp: Dense weight exponent.
        payload_max: largest ``|s|`` (1 for binary spikes); decides whether float32 is exact
            (:func:`matmul_is_float32_exact`); otherwise the product is computed in float64.

    Returns ``(B, n_out)`` in ``s``'s dtype (float) or int64 (integer input). Gradients flow to
    ``s`` and ``weight`` through the matmul and straight through the shift (slope ``2**weight_exp``).
    """
    if s.is_floating_point() or weight.is_floating_point():
        dt = s.dtype if s.is_floating_point() else weight.dtype
        if dt != torch.float64 and not matmul_is_float32_exact(weight.shape[1], payload_max):
            dt = torch.float64
        acc = s.to(dt) @ weight.to(dt).T
        return shift_floor(acc, weight_exp).to(s.dtype if s.is_floating_point() else dt)
    acc = (s.to(torch.float64) @ weight.to(torch.float64).T).to(torch.int64)  # exact < 2**53
    return shift_floor(acc, weight_exp)


def lif_step(a_in: Tensor, u: Tensor, v: Tensor, *, du: int, dv: int, bias: Tensor,
             vth: int | Tensor, spike_fn: SpikeFn = heaviside, detach_reset: bool = True,
             u_can_wrap: bool = True, v_reset: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One step of Lava's ``PyLifModelBitAcc`` with a per-sample threshold: the one LIF update.

    Args:
        a_in: ``(B, n)`` Dense output computed at the previous step (Lava's ``a_in``).
        u, v: ``(B, n)`` current and voltage (24-bit integers).
        du, dv: 12-bit decays (Lava units; ``du`` gets ``ds_offset = 1`` added here).
        bias: ``(n,)`` effective bias ``bias_mant << bias_exp`` (:func:`effective_bias`).
        vth: effective threshold mantissa: an int, or a ``(B,)``/``(B, 1)`` tensor
            ``vth + theta_t[:, l]`` (STFT's dynamic threshold; ``theta = 0`` is Lava's LIF).
            Compared as ``v > vth << 6``.
        spike_fn: maps ``v - (vth << 6)`` (in v's integer LSBs; divide by ``vth << 6`` yourself if
            your surrogate wants a normalised argument) to spikes; must return exactly
            ``(x > 0)`` in the forward pass.
        detach_reset: if True, the reset ``v * (1 - s)`` does not backpropagate through ``s``.
        u_can_wrap: False only where it is proven that no input can make Lava's u wrap act
            (``FixedPointLayer.u_can_wrap``): the wrap is then skipped, a no-op by that proof.
        v_reset: ``(n,)`` integers a spiking neuron's v becomes instead of 0 (NIR ``v_reset``;
            Lava: ``sim/lava_procs.PyResetLifModelBitAcc``), or None (Lava's LIF: 0).

    Returns ``(s, u, v)`` in the dtype of ``u`` (``s`` in ``spike_fn``'s dtype).
    """
    out_dtype = u.dtype if u.is_floating_point() else torch.int64
    # The in-place ops below act on tensors this function has just made (the decays' results),
    # never on an argument, and none of them overwrites a value autograd saved: exact, and the
    # same gradients as their out-of-place forms. u + (a << 6) is one op (integers below 2**53).
    u = _work(decay(u, du + C.DS_OFFSET)).add_(_work(a_in), alpha=2 ** C.ACT_SHIFT)
    if u_can_wrap:
        u = wrap_u(u)
    v = clip_v(_work(decay(v, dv + C.DM_OFFSET)).add_(u).add_(_work(bias)))
    if isinstance(vth, Tensor):
        thr = _work(vth).reshape(-1, 1) * (2 ** C.VTH_SHIFT)
    else:
        thr = int(vth) * (2 ** C.VTH_SHIFT)
    s = spike_fn(v - thr)
    keep = torch.rsub(s.detach() if detach_reset else s, 1)
    v = v * (keep if keep.dtype == v.dtype else keep.to(v.dtype))
    if v_reset is not None:
        fired = s.detach() if detach_reset else s
        v = v + (fired if fired.dtype == v.dtype else fired.to(v.dtype)) * _work(v_reset).to(v.dtype)
    if u.dtype != out_dtype:
        u, v = u.to(out_dtype), v.to(out_dtype)
    return s.to(out_dtype) if not s.is_floating_point() else s, u, v


#: A threshold mantissa that no 24-bit ``v`` exceeds: ``(2**17) << 6 = 2**23 > V_MAX``.
NO_SPIKE_VTH: int = (C.V_MAX >> C.VTH_SHIFT) + 1


def li_step(a_in: Tensor, u: Tensor, v: Tensor, *, du: int, dv: int, bias: Tensor
            ) -> tuple[Tensor, Tensor]:
    """One step of a leaky-integrator readout (NIR ``LI``/``CubaLI`` on Loihi 2): :func:`lif_step`'s
    arithmetic (decays, ``a << 6``, u wrap, v clip) with no threshold and no reset; ``v`` is what
    the neuron sends (a graded spike). Exactly ``lif_step`` with a threshold ``v`` cannot reach
    (:data:`NO_SPIKE_VTH`). Returns ``(u, v)``; Lava: ``sim/lava_procs.PyLIReadoutModelBitAcc``."""
    _, u, v = lif_step(a_in, u, v, du=du, dv=dv, bias=bias, vth=NO_SPIKE_VTH)
    return u, v


# ----------------------------------------------------------------------------------------------
# The whole chip side, one step (the definition every backend must equal)
# ----------------------------------------------------------------------------------------------

class LayerArith(NamedTuple):
    """One layer's parameters as :func:`chip_step` needs them.

    ``weight``: ``(n_out, n_in)`` Lava-effective integer weights (float tensor holding ints for QAT,
    e.g. ``quantize.qat_layers(...)``; int64 otherwise). ``bias``: ``(n_out,)`` effective bias
    (``bias_mant << bias_exp``). ``payload_max``: largest ``|input|`` (1 for binary spikes).
    """

    weight: Tensor
    weight_exp: int
    du: int
    dv: int
    vth: int
    bias: Tensor
    payload_max: int = 1


def layer_arith(layer: FixedPointLayer, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float64) -> LayerArith:
    """:class:`LayerArith` of a :class:`FixedPointLayer` (weights made Lava-effective)."""
    return LayerArith(
        weight=torch.as_tensor(lava_effective_weights(layer.weight), device=device).to(dtype),
        weight_exp=int(layer.weight_exp), du=int(layer.du), dv=int(layer.dv), vth=int(layer.vth),
        bias=torch.as_tensor(effective_bias(layer.bias_mant, layer.bias_exp),
                             device=device).to(dtype),
        payload_max=layer.payload.abs_max)


def network_arith(network: FixedPointNetwork, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float64) -> tuple[LayerArith, ...]:
    return tuple(layer_arith(layer, device, dtype) for layer in network.layers)


def zero_state(layers: Sequence[LayerArith], batch: int, dtype: torch.dtype | None = None,
               device: str | torch.device | None = None) -> ChipState:
    """All-zero :class:`ChipState` (Lava's initial u, v and ``a_buff``)."""
    dtype = dtype or layers[0].weight.dtype
    device = device or layers[0].weight.device
    z = tuple(torch.zeros(batch, lay.weight.shape[0], dtype=dtype, device=device) for lay in layers)
    return ChipState(u=z, v=tuple(t.clone() for t in z), a=tuple(t.clone() for t in z))


def chip_step(x_t: Tensor, theta_t: Tensor | None, state: ChipState,
              layers: Sequence[LayerArith], spike_fn: SpikeFn | Sequence[SpikeFn] = heaviside,
              detach_reset: bool = True) -> tuple[tuple[Tensor, ...], ChipState]:
    """One timestep of the Dense -> LIF stack, as Lava runs it (the step contract of
    ``stft_neuro/contract.py``).

    Args:
        x_t: ``(B, n_in)`` graded-spike payloads from the host (integers).
        theta_t: ``(B, L)`` threshold modulation in mantissa units, or None (zero).
        state: ``ChipState``; ``state.a[l]`` is what LIF ``l`` receives now (Dense delay).
        layers: per-layer parameters (:func:`network_arith`, or QAT tensors).
        spike_fn: one spike function for all layers, or one per layer (QAT normalises each
            layer's surrogate by its own state scale).

    Returns ``(spikes, new_state)``; ``spikes[l]`` is ``(B, n_l)``.
    """
    spikes, us, vs, as_ = [], [], [], []
    fns = [spike_fn] * len(layers) if callable(spike_fn) else list(spike_fn)
    inp = x_t
    for l, lay in enumerate(layers):
        vth = lay.vth if theta_t is None else lay.vth + theta_t[:, l]
        s, u, v = lif_step(state.a[l], state.u[l], state.v[l], du=lay.du, dv=lay.dv,
                           bias=lay.bias, vth=vth, spike_fn=fns[l], detach_reset=detach_reset)
        a_next = dense(inp, lay.weight, lay.weight_exp, lay.payload_max)
        spikes.append(s)
        us.append(u)
        vs.append(v)
        as_.append(a_next.to(u.dtype))
        inp = s
    return tuple(spikes), ChipState(u=tuple(us), v=tuple(vs), a=tuple(as_))


def chip_run(x: Tensor, theta: Tensor | None, state: ChipState | None,
             layers: Sequence[LayerArith], spike_fn: SpikeFn | Sequence[SpikeFn] = heaviside,
             detach_reset: bool = True) -> tuple[tuple[Tensor, ...], ChipState]:
    """T calls of :func:`chip_step`; ``x``: ``(T, B, n_in)``, ``theta``: ``(T, B, L)`` or None."""
    if state is None:
        state = zero_state(layers, x.shape[1], dtype=x.dtype if x.is_floating_point() else None,
                           device=x.device)
    per_step = []
    for t in range(x.shape[0]):
        s, state = chip_step(x[t], None if theta is None else theta[t], state, layers,
                             spike_fn, detach_reset)
        per_step.append(s)
    return tuple(torch.stack([p[l] for p in per_step]) for l in range(len(layers))), state
