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
- **Exact matmul kernels, chosen by measurement.** The matmul inputs are integers. Each layer's
  Dense runs on the fastest of the kernels that are exact for it (``sim/dense_kernels.py``: float32
  when every partial sum stays within ``2**24``, int8 ``torch._int_mm`` when weights and payloads
  fit int8 and the backend passes an exactness self-test, float64 always), timed once per process on
  the layer's shape and the run's ``T*B`` (a power-of-two bucket). On an AVX512-VNNI CPU that is
  int8 (~3x float32); on an AVX2-only CPU, where ``_int_mm`` is a naive loop ~30x slower, float32.
  ``STFT_NEURO_DENSE_KERNEL=float32|float64|int8`` forces one (an inexact choice is refused).
- **One LIF definition.** Each step of each layer is ``arithmetic.lif_step`` on float64 state
  (exact: every value is an integer below ``2**53``); the Dense exponent is ``arithmetic.shift_floor``
  on the kernel's exact product. Nothing of Lava's update order is written here.
- **Static range analysis.** Lava's u wrap is skipped for a layer where it provably never acts
  (``FixedPointLayer.u_can_wrap``: the sustained worst-case ``|u|`` stays below ``2**23``);
  v's clip is always applied.

Spikes are returned as float32 0/1 tensors ``(T, B, n_l)``; the state (:class:`ChipState`) holds
float64 tensors of integer values. ``theta`` is in threshold-mantissa units (integers). Payloads and
thetas are checked against the plan (``plan.check_payload`` / ``plan.check_theta``) before anything
runs: the same errors as the torch deploy mode and Lava.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from stft_neuro.hw_targets.loihi2 import arithmetic as A
from stft_neuro.hw_targets.loihi2 import constants as C
from stft_neuro.hw_targets.loihi2.network import PayloadRange
from stft_neuro.hw_targets.loihi2.plan import DeploymentPlan
from stft_neuro.hw_targets.loihi2.weights import effective_bias, lava_effective_weights
from stft_neuro.contract import ChipState
from stft_neuro.sim.dense_kernels import DenseKernel, choose_kernel

STATE_DTYPE = torch.float64
SPIKE_DTYPE = torch.float32


@dataclass
class _Layer:
    """Precomputed per-layer tensors and constants."""

    weight: np.ndarray   # (n_out, n_in) Lava-effective integer weights
    payload: PayloadRange
    weight_exp: int
    du: int
    dv: int
    vth: int
    bias: Tensor         # (n_out,) bias_mant << bias_exp, float64
    u_can_wrap: bool
    n_out: int
    kernels: dict = field(default_factory=dict)  # rows bucket -> DenseKernel


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
        layers = []
        for layer in network.layers:
            acc_lo, acc_hi = layer.accumulation_range
            a_lo, a_hi = layer.dense_output_range
            int32 = 2 ** (C.ACCUM_BITS - 1)
            if not (-int32 <= acc_lo and acc_hi < int32
                    and -int32 <= a_lo << C.ACT_SHIFT and a_hi << C.ACT_SHIFT < int32):
                warnings.warn(f"ReferenceSimulator: layer {layer.name}: worst-case accumulation "
                              f"[{acc_lo}, {acc_hi}] or Dense output [{a_lo}, {a_hi}] << "
                              f"{C.ACT_SHIFT} overflows Lava's int32 arithmetic; results may "
                              "differ from Lava", RuntimeWarning, stacklevel=2)
            layers.append(_Layer(
                weight=lava_effective_weights(layer.weight), payload=layer.payload,
                weight_exp=int(layer.weight_exp), du=int(layer.du), dv=int(layer.dv),
                vth=int(layer.vth),
                bias=torch.as_tensor(effective_bias(layer.bias_mant, layer.bias_exp),
                                     device=self.device).to(STATE_DTYPE),
                u_can_wrap=layer.u_can_wrap,
                n_out=layer.n_out,
            ))
        self._layers = tuple(layers)

    def kernel(self, layer: int, rows: int, input_dtype: torch.dtype = torch.float32) -> DenseKernel:
        """The Dense kernel layer ``layer`` uses for ``rows = T * B`` rows (measured once per
        power-of-two bucket of ``rows``; see ``sim/dense_kernels.py``)."""
        lay = self._layers[layer]
        key = (max(1, int(rows)).bit_length(), input_dtype)
        if key not in lay.kernels:
            lay.kernels[key] = choose_kernel(lay.weight, lay.payload, rows, self.device,
                                             input_dtype=input_dtype)
        return lay.kernels[key]

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
        x, theta = self.plan.check_run(x, theta)
        B = int(x.shape[1])
        if state is None:
            state = self.reset(B)
        inp = x.to(self.device)
        spikes, us, vs, as_ = [], [], [], []
        for l, lay in enumerate(self._layers):
            th = None if theta is None else theta[:, :, l].to(self.device, STATE_DTYPE)
            s, u, v, a_last = self._run_layer(l, lay, inp, th, state.u[l], state.v[l], state.a[l])
            spikes.append(s)
            us.append(u)
            vs.append(v)
            as_.append(a_last)
            inp = s
        return tuple(spikes), ChipState(u=tuple(us), v=tuple(vs), a=tuple(as_))

    # ------------------------------------------------------------------ internals
    def _run_layer(self, l: int, lay: _Layer, inp: Tensor, theta: Tensor | None, u0: Tensor, v0: Tensor,
                   a0: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        T, B = int(inp.shape[0]), int(inp.shape[1])
        n = lay.n_out
        # Dense for all T at once; a_in[t] is what the LIF receives at step t (one-step delay).
        flat = inp.reshape(T * B, -1)
        kernel = self.kernel(l, T * B, flat.dtype)
        acc = kernel.accumulate(flat).view(T, B, n)                             # (T, B, n) exact
        a_in = torch.cat([a0.to(self.device, STATE_DTYPE)[None], A.shift_floor(acc, lay.weight_exp)])
        # The threshold mantissa of every step: vth, or vth + theta (B,) per step.
        vth = [lay.vth] * T if theta is None else list(theta.add(lay.vth).unbind(0))
        u = u0.to(self.device, STATE_DTYPE)
        v = v0.to(self.device, STATE_DTYPE)
        out = torch.empty(T, B, n, dtype=SPIKE_DTYPE, device=self.device)
        for t in range(T):
            s, u, v = A.lif_step(a_in[t], u, v, du=lay.du, dv=lay.dv, bias=lay.bias, vth=vth[t],
                                 u_can_wrap=lay.u_can_wrap)
            out[t].copy_(s)
        return out, u, v, a_in[T].clone()
