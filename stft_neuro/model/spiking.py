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

Two arithmetic modes share this structure: ``"float"`` (training) and ``"deploy"`` (Loihi 2
fixed-point arithmetic with straight-through gradients, added by the Loihi 2 target).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from stft_neuro.sim.backend import ChipState, run_by_steps


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
                 surrogate_slope: float) -> None:
        super().__init__()
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

    def reset(self, batch: int) -> ChipState:
        ref = self.weights[0]
        zeros = tuple(ref.new_zeros(batch, n) for n in self._sizes[1:])
        return ChipState(u=zeros, v=zeros, a=zeros)

    def step(self, x_t: Tensor, theta_t: Tensor | None, state: ChipState
             ) -> tuple[tuple[Tensor, ...], ChipState]:
        """One step: ``x_t`` (B, n_in) input currents, ``theta_t`` (B, L) or None."""
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
