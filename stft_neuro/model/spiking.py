"""The chip side of the spiking branch: Dense synapses and LIF neurons, one step at a time.

This module is exactly what a neuromorphic backend takes over: it implements the step contract of
``stft_neuro.sim.backend`` (``reset`` / ``step`` / ``run``), and holds nothing that belongs to the
host (GLP, TSF and threshold cues live in ``host.py``).

Neuron model: Lava's LIF (``lava.proc.lif``), current-based, hard reset to zero::

    u[t] = u[t-1] * (1 - du) + a[t]            # a[t] = W @ s_prev[t-1]: the Dense output, one step late
    v[t] = v[t-1] * (1 - dv) + u[t] + bias
    s[t] = v[t] > vth + theta[t]               # theta: threshold modulation sent by the host
    v[t] = 0 where s[t]

Every Dense adds one step of delay, as in Lava: the LIF of layer ``l`` at step ``t`` integrates the
spikes that layer ``l-1`` emitted at ``t-1`` (layer 0 integrates the host's input of ``t-1``).
Choices where the paper is silent: the spike's surrogate gradient is the sigmoid derivative with
slope k (``SpikingConfig.surrogate_slope``); the reset is detached from the graph (as in snnTorch's
default), so gradients flow through the membrane, not through the reset.

Two arithmetic modes share this structure (``ChipNetwork.mode``):

- ``"float"``: the equations above in float32 (Lava's ``floating_pt`` LIF); ``x_t`` are input
  currents and ``theta_t`` is in threshold units.
- ``"deploy"``: exactly what Lava's ``fixed_pt`` Dense and LIF compute
  (``hw_targets/loihi2/arithmetic.py``), with the weights, bias, decays and threshold quantized
  per forward pass from the float parameters (``quantize.qat_layer_arith``: straight-through
  gradients, surrogate spikes normalised by each layer's state scale). ``x_t`` are graded-spike
  payloads (integers in ``input_bits``) and ``theta_t`` threshold-mantissa offsets (integers), the
  same inputs the reference simulator and Lava take; ``to_fixed_point()`` gives the network they run.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from stft_neuro.hw_targets.loihi2 import arithmetic, quantize
from stft_neuro.hw_targets.loihi2.network import FixedPointNetwork
from stft_neuro.sim.backend import ChipState, run_by_steps

MODES = ("float", "deploy")


class SigmoidSurrogateSpike(torch.autograd.Function):
    """Heaviside ``x > 0`` forward; ``k sig(kx)(1 - sig(kx))`` backward."""

    @staticmethod
    def forward(ctx, x: Tensor, slope: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.slope = slope
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        sig = torch.sigmoid(ctx.slope * x)
        return grad * ctx.slope * sig * (1 - sig), None


def spike(x: Tensor, slope: float) -> Tensor:
    """Surrogate-gradient spike of ``x = v - vth``: 1.0 where ``x > 0``."""
    return SigmoidSurrogateSpike.apply(x, slope)


class ChipNetwork(nn.Module):
    """Stack of ``Dense -> LIF`` layers: sizes ``(n_in, n_1, ..., n_L)``.

    Parameters (float mode): ``weights[l]`` (n_{l+1}, n_l), ``biases[l]`` (n_{l+1},), and shared
    ``du``, ``dv``, ``threshold`` (fixed, not trained: they are hardware registers chosen up front).
    """

    def __init__(self, sizes: tuple[int, ...], du: float, dv: float, threshold: float,
                 surrogate_slope: float, input_bits: int = 8) -> None:
        super().__init__()
        self.mode = "float"
        self.input_bits = int(input_bits)
        # Float value of one input payload LSB (deploy mode); 0 until calibrated on data.
        self.register_buffer("input_scale", torch.zeros(()))
        self._deploy_cache: tuple | None = None
        self._active: tuple | None = None  # deploy parameters of the current sequence
        if len(sizes) < 2:
            raise ValueError(f"ChipNetwork needs at least one layer, got sizes {sizes}")
        self._sizes = tuple(int(n) for n in sizes)
        self.du, self.dv, self.threshold = float(du), float(dv), float(threshold)
        self.surrogate_slope = float(surrogate_slope)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for n_in, n_out in zip(self._sizes[:-1], self._sizes[1:]):
            # Scaled so that a layer receiving ~10% active inputs reaches threshold in a few steps.
            w = torch.empty(n_out, n_in)
            nn.init.normal_(w, mean=0.0, std=2.0 * threshold / n_in ** 0.5)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(n_out)))

    @property
    def sizes(self) -> tuple[int, ...]:
        return self._sizes

    @property
    def num_layers(self) -> int:
        return len(self._sizes) - 1

    # -- deploy mode (Loihi 2 fixed point) ----------------------------------------------------
    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"ChipNetwork.set_mode: mode must be one of {MODES}, got {mode!r}")
        if mode == "deploy" and float(self.input_scale) <= 0:
            raise ValueError("ChipNetwork: deploy mode needs input_scale (calibrate_input first)")
        self.mode = mode

    def float_layers(self) -> list[quantize.FloatLayer]:
        return [quantize.FloatLayer(name=f"lif{l + 1}", weight=w.detach().cpu().double().numpy(),
                                    bias=b.detach().cpu().double().numpy(), du=self.du, dv=self.dv,
                                    threshold=self.threshold)
                for l, (w, b) in enumerate(zip(self.weights, self.biases))]

    def deploy_arith(self) -> tuple[list[arithmetic.LayerArith], list[quantize.LayerScales]]:
        """Per-layer integer parameters (differentiable, straight-through) and their scales.

        Without gradients they are cached until a weight, bias or the input scale changes. With
        gradients they are part of the autograd graph of one sequence: ``reset`` computes them
        afresh, and the steps of that sequence share them (so a sequence starts with ``reset``).
        """
        key = tuple(p._version for p in (*self.weights, *self.biases)) + (
            float(self.input_scale), str(self.weights[0].device))
        if self._deploy_cache is not None and self._deploy_cache[0] == key and not torch.is_grad_enabled() \
                and not self._deploy_cache[1]:
            return self._deploy_cache[2]
        arith, scales = [], []
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            a, sc = quantize.qat_layer_arith(
                w, b, self.du, self.dv, self.threshold,
                in_scale=float(self.input_scale) if l == 0 else 1.0,
                num_message_bits=self.input_bits if l == 0 else 0)
            arith.append(a)
            scales.append(sc)
        self._deploy_cache = (key, torch.is_grad_enabled(), (arith, scales))
        return arith, scales

    def active_arith(self) -> tuple[list[arithmetic.LayerArith], list[quantize.LayerScales]]:
        """The deploy parameters of the current sequence (those ``reset`` prepared)."""
        return self._active if self._active is not None else self.deploy_arith()

    def to_fixed_point(self) -> tuple[FixedPointNetwork, quantize.QuantizationReport]:
        """The network in Loihi 2 units, for the reference simulator and Lava. Pure: the module
        is not changed. Equal, integer for integer, to what deploy mode computes with."""
        if float(self.input_scale) <= 0:
            raise ValueError("ChipNetwork.to_fixed_point: calibrate the input scale first")
        return quantize.quantize_network(self.float_layers(), float(self.input_scale), self.input_bits)

    def reset(self, batch: int) -> ChipState:
        if self.mode == "deploy":
            self._deploy_cache = None if torch.is_grad_enabled() else self._deploy_cache
            self._active = self.deploy_arith()
        ref = self.weights[0]
        zeros = tuple(ref.new_zeros(batch, n) for n in self._sizes[1:])
        return ChipState(u=zeros, v=zeros, a=zeros)

    def step(self, x_t: Tensor, theta_t: Tensor | None, state: ChipState
             ) -> tuple[tuple[Tensor, ...], ChipState]:
        """One step: ``x_t`` (B, n_in) input currents (float) or payloads (deploy), ``theta_t``
        (B, L) or None."""
        if self.mode == "deploy":
            arith, scales = self.active_arith()
            slope = self.surrogate_slope
            fns = [lambda x, s=sc.state_scale: spike(x / s, slope) for sc in scales]
            spikes, state = arithmetic.chip_step(x_t, theta_t, state, arith, spike_fn=fns)
            return tuple(sp.to(x_t.dtype) for sp in spikes), state
        spikes, us, vs, new_a = [], [], [], []
        pre = x_t
        for l in range(self.num_layers):
            # The Dense of layer l receives this step's presynaptic spikes and delivers them next step.
            new_a.append(pre @ self.weights[l].t())  # (B, n_l)
            u = state.u[l] * (1.0 - self.du) + state.a[l]
            v = state.v[l] * (1.0 - self.dv) + u + self.biases[l]
            vth = self.threshold if theta_t is None else self.threshold + theta_t[:, l:l + 1]
            s = spike(v - vth, self.surrogate_slope)
            v = v * (1.0 - s.detach())
            spikes.append(s)
            us.append(u)
            vs.append(v)
            pre = s
        return tuple(spikes), ChipState(u=tuple(us), v=tuple(vs), a=tuple(new_a))

    def run(self, x: Tensor, theta: Tensor | None = None, state: ChipState | None = None
            ) -> tuple[tuple[Tensor, ...], ChipState]:
        """``x`` (T, B, n_in), ``theta`` (T, B, L) or None -> per-layer spikes (T, B, n_l)."""
        return run_by_steps(self, x, theta, state)
