"""A fast, batched, bit-exact simulator of Loihi 2's fixed-point Dense + LIF arithmetic (torch).

:class:`ReferenceSimulator` implements the step contract of ``stft_neuro/contract.py`` for a
:class:`~stft_neuro.hw_targets.loihi2.plan.DeploymentPlan`. It computes exactly what Lava's
``fixed_pt`` models compute (``hw_targets/loihi2/arithmetic.py`` is the definition; the tests
check the two against each other and against Lava), without autograd, on CPU or CUDA.

How it is fast and still exact:

- **Layer by layer over all T.** The stack is feed-forward and every Dense delays by one step, so
  ``run`` computes layer ``l``'s Dense for all T steps in one matmul ``(T*B, n_in) @ (n_in, n_out)``,
  then steps only the (cheap, elementwise) LIF over t, then moves to layer ``l+1``. This is the same
  arithmetic in a different loop order, so ``run(T) == T x step == run(T1) + run(T2)`` exactly.
- **Exact float matmuls.** The matmul inputs are integers. A float32 matmul is exact when every
  partial sum is an integer of magnitude ``<= 2**24``; the bound ``payload_max * max_j sum_k |W_jk|``
  is computed once from the weights, and a layer whose bound exceeds ``2**24`` uses float64
  (exact below ``2**53``). On CUDA, TF32 matmuls would round: if
  ``torch.backends.cuda.matmul.allow_tf32`` is set, all matmuls use float64.
- **int8 matmuls.** On CPU, when the weights (divided by 2 for mixed signs, where Lava keeps even
  values only) and the payloads fit int8 and the accumulation fits int32, the Dense runs as
  ``torch._int_mm`` (int8 x int8 -> int32, exact; ~4x float32 on AVX512-VNNI).
- **float64 neuron state.** u and v are held in float64, where ``u * (4096 - du - 1) / 4096`` is
  exact (< 2**37), so Lava's decay ``sign(p) * (|p| >> 12)`` is one multiply and one ``trunc``.
- **Static range analysis.** Lava's u wrap is skipped for a layer whose largest possible ``|u|``
  (``64 * max|a| * 4096 / (du + 1)``) stays below ``2**23``; v's clip is always applied.

Spikes are returned as float32 0/1 tensors ``(T, B, n_l)``; the state (:class:`ChipState`) holds
float64 tensors of integer values. ``theta`` is in threshold-mantissa units (integers). Payloads and
thetas are checked against the plan (``plan.check_payload`` / ``plan.check_theta``) before anything
runs: the same errors as the torch deploy mode and Lava.
"""
from __future__ import annotations

import contextlib

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from stft_neuro.hw_targets.errors import ChipInputError
from stft_neuro.hw_targets.loihi2 import constants as C
from stft_neuro.hw_targets.loihi2.arithmetic import FLOAT32_EXACT_MAX, payload_max
from stft_neuro.hw_targets.loihi2.plan import DeploymentPlan
from stft_neuro.hw_targets.loihi2.weights import effective_bias, lava_effective_weights
from stft_neuro.contract import ChipState

STATE_DTYPE = torch.float64
SPIKE_DTYPE = torch.float32


@dataclass(frozen=True)
class _Layer:
    """Precomputed per-layer tensors and constants."""

    w_t: Tensor          # (n_in, n_out) Lava-effective weights, transposed, in mm_dtype
    mm_dtype: torch.dtype
    a_scale: float       # 2**weight_exp (exact power of two)
    floor_a: bool        # weight_exp < 0: floor after scaling
    u_keep: float        # (4096 - du - 1) / 4096, exact dyadic
    v_keep: float        # (4096 - dv) / 4096
    bias: Tensor         # (n_out,) bias_mant << bias_exp, float64
    vth_shifted: float   # vth << 6
    needs_wrap: bool
    n_out: int
    w_t_i8: Tensor | None  # (n_in, n_out) int8 weights / w_step, when the int8 path is exact
    w_step: float          # weight = w_step * w_t_i8


def _layer_bounds(w: np.ndarray, pmax: int, weight_exp: int, du: int) -> tuple[int, int, int]:
    """``(acc_bound, a_bound, u_bound)``: largest possible ``|W @ s|``, ``|a|``, ``|u|``."""
    acc = int(np.abs(w).sum(axis=1).max(initial=0)) * pmax
    a = acc << weight_exp if weight_exp >= 0 else -((-acc) >> -weight_exp)  # ceil for the bound
    u = math.ceil(a * 2 ** C.ACT_SHIFT * C.DECAY_UNITY / (du + C.DS_OFFSET))
    return acc, a, u


class ReferenceSimulator:
    """Bit-exact batched simulator of a :class:`DeploymentPlan` (the ``SpikingBackend`` contract).

    Args:
        plan: the deployment plan (its network's weights are made Lava-effective here, as Lava does).
        device: torch device for all tensors (``"cpu"``, ``"cuda"``).

    ``x`` is the host's graded-spike payload (integers), ``theta`` the threshold modulation in
    mantissa units (integers, added to each layer's ``vth``), both float or integer tensors.
    """

    def __init__(self, plan: DeploymentPlan, device: str | torch.device = "cpu") -> None:
        if not isinstance(plan, DeploymentPlan):
            raise TypeError(f"ReferenceSimulator takes a DeploymentPlan, got {type(plan).__name__}")
        self.plan = plan
        network = self.network = plan.network
        self.device = torch.device(device)
        tf32 = self.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
        if tf32:
            warnings.warn("ReferenceSimulator: TF32 matmuls are enabled; using float64 matmuls "
                          "to stay exact", RuntimeWarning, stacklevel=2)
        layers = []
        for layer in network.layers:
            w = lava_effective_weights(layer.weight)
            acc, a_bound, u_bound = _layer_bounds(w, payload_max(layer), layer.weight_exp, layer.du)
            if a_bound * 2 ** C.ACT_SHIFT >= 2 ** (C.ACCUM_BITS - 1) or acc >= 2 ** (C.ACCUM_BITS - 1):
                warnings.warn(f"ReferenceSimulator: layer {layer.name}: Dense output bound {a_bound} "
                              "overflows Lava's int32 arithmetic; results may differ from Lava",
                              RuntimeWarning, stacklevel=2)
            mm_dtype = torch.float32 if (acc <= FLOAT32_EXACT_MAX and not tf32) else torch.float64
            layers.append(_Layer(
                w_t=torch.as_tensor(w.T.copy(), device=self.device).to(mm_dtype).contiguous(),
                mm_dtype=mm_dtype,
                a_scale=float(2.0 ** layer.weight_exp),
                floor_a=layer.weight_exp < 0,
                u_keep=(C.DECAY_UNITY - layer.du - C.DS_OFFSET) / C.DECAY_UNITY,
                v_keep=(C.DECAY_UNITY - layer.dv - C.DM_OFFSET) / C.DECAY_UNITY,
                bias=torch.as_tensor(effective_bias(layer.bias_mant, layer.bias_exp),
                                     device=self.device).to(STATE_DTYPE),
                vth_shifted=float(int(layer.vth) << C.VTH_SHIFT),
                needs_wrap=u_bound >= C.UV_MAX_VAL,
                n_out=layer.n_out,
                **self._int8_weights(w, payload_max(layer), acc),
            ))
        self._layers = tuple(layers)

    def _int8_weights(self, w: np.ndarray, pmax: int, acc: int) -> dict:
        """int8 x int8 -> int32 matmul (``torch._int_mm``, ~4x float32 on AVX512-VNNI CPUs) when
        it is exact: weights / step and payloads fit int8, and every int32 partial sum fits."""
        step = C.WEIGHT_MIXED_STEP if (w.size and (w % C.WEIGHT_MIXED_STEP == 0).all()) else 1
        wq = w // step
        ok = (self.device.type == "cpu" and hasattr(torch, "_int_mm") and pmax <= 2 ** 7
              and wq.size > 0 and wq.min() >= -2 ** 7 and wq.max() < 2 ** 7
              and acc < 2 ** (C.ACCUM_BITS - 1))
        if not ok:
            return {"w_t_i8": None, "w_step": 1.0}
        return {"w_t_i8": torch.as_tensor(wq.T.copy(), dtype=torch.int8, device=self.device),
                "w_step": float(step)}

    # ------------------------------------------------------------------ contract
    @property
    def sizes(self) -> tuple[int, ...]:
        return self.network.sizes

    def reset(self, batch: int) -> ChipState:
        z = tuple(torch.zeros(batch, lay.n_out, dtype=STATE_DTYPE, device=self.device)
                  for lay in self._layers)
        return ChipState(u=z, v=tuple(t.clone() for t in z), a=tuple(t.clone() for t in z))

    def step(self, x_t: Tensor, theta_t: Tensor | None, state: ChipState
             ) -> tuple[tuple[Tensor, ...], ChipState]:
        self.plan.check_payload(x_t)  # checked as sent, so errors name (B, n) indices
        if theta_t is not None:
            self.plan.check_theta(theta_t)
        spikes, state = self.run(x_t[None], None if theta_t is None else theta_t[None], state)
        return tuple(s[0] for s in spikes), state

    @torch.inference_mode()
    def run(self, x: Tensor, theta: Tensor | None = None, state: ChipState | None = None
            ) -> tuple[tuple[Tensor, ...], ChipState]:
        """``x``: ``(T, B, n_in)``; ``theta``: ``(T, B, L)`` or None. Returns ``(spikes, state)``.

        Does not modify ``state`` (or any argument).
        """
        self.plan.check_payload(x)
        if x.dim() != 3:
            raise ChipInputError(f"payload: run takes (T, B, {self.plan.n_in}), got {tuple(x.shape)}")
        if theta is not None:
            self.plan.check_theta(theta)
            if tuple(theta.shape[:2]) != tuple(x.shape[:2]):
                raise ChipInputError(f"theta: shape {tuple(theta.shape)} does not match the "
                                     f"payload's (T, B) = {tuple(x.shape[:2])}")
        B = int(x.shape[1])
        if state is None:
            state = self.reset(B)
        inp = x.to(self.device)
        spikes, us, vs, as_ = [], [], [], []
        for l, lay in enumerate(self._layers):
            th = None if theta is None else theta[:, :, l].to(self.device, STATE_DTYPE)
            s, u, v, a_last = self._run_layer(lay, inp, th, state.u[l], state.v[l], state.a[l])
            spikes.append(s)
            us.append(u)
            vs.append(v)
            as_.append(a_last)
            inp = s
        return tuple(spikes), ChipState(u=tuple(us), v=tuple(vs), a=tuple(as_))

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _accumulate(lay: _Layer, inp: Tensor) -> Tensor:
        """``inp @ W.T`` (without ``w_step`` on the int8 path), exact, as float64."""
        if lay.w_t_i8 is not None:
            # Shapes _int_mm does not support (RuntimeError) take the float path below.
            with contextlib.suppress(RuntimeError):
                return torch._int_mm(inp.to(torch.int8), lay.w_t_i8).to(STATE_DTYPE)
            return (inp.to(lay.mm_dtype) @ lay.w_t).to(STATE_DTYPE).div_(lay.w_step)
        return (inp.to(lay.mm_dtype) @ lay.w_t).to(STATE_DTYPE)

    def _run_layer(self, lay: _Layer, inp: Tensor, theta: Tensor | None, u0: Tensor, v0: Tensor,
                   a0: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        T, B = int(inp.shape[0]), int(inp.shape[1])
        n = lay.n_out
        # Dense for all T at once; a_in[t] is what the LIF receives at step t (one-step delay).
        a_in = torch.empty(T + 1, B, n, dtype=STATE_DTYPE, device=self.device)
        a_in[0].copy_(a0)
        acc = self._accumulate(lay, inp.reshape(T * B, -1)).view(T, B, n)    # (T, B, n) float64
        if lay.a_scale * lay.w_step != 1.0:
            acc.mul_(lay.a_scale * lay.w_step)
            if lay.floor_a:
                acc.floor_()
        a_in[1:].copy_(acc)
        a_last = a_in[T].clone()
        a64 = a_in[:T].mul_(float(2 ** C.ACT_SHIFT))                              # (T, B, n)
        if theta is None:
            thr = torch.full((T, 1, 1), lay.vth_shifted, dtype=STATE_DTYPE, device=self.device)
        else:
            thr = theta.mul(float(2 ** C.VTH_SHIFT)).add_(lay.vth_shifted).unsqueeze(-1)  # (T,B,1)
        u = u0.to(self.device, STATE_DTYPE).clone()
        v = v0.to(self.device, STATE_DTYPE).clone()
        out = torch.empty(T, B, n, dtype=SPIKE_DTYPE, device=self.device)
        m = float(C.UV_MAX_VAL)
        for t in range(T):
            u.mul_(lay.u_keep).trunc_().add_(a64[t])
            if lay.needs_wrap:
                u = torch.where(u > m, u - 2 * m, u)
                u = torch.where(u <= -m, u + 2 * m, u)
            v.mul_(lay.v_keep).trunc_().add_(u).add_(lay.bias).clamp_(C.V_MIN, C.V_MAX)
            fired = v > thr[t]
            out[t].copy_(fired)
            v.masked_fill_(fired, C.V_RESET)
        return out, u, v, a_last
