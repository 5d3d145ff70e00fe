"""The closed loop between a host and a spiking backend: the one definition every host drives.

The host (the torch ``SpikingBranch``, or the exported ONNX graphs in onnxruntime) encodes the
features once; the loop then sends the chip side one step at a time through the step contract
(``stft_neuro/contract.py``) and, with dynamic thresholds, computes each next step's threshold
modulation from every layer's spikes of this step::

    state    = backend.reset(B)
    sent     = host.chip_input(x, backend.plan)               # (T, B, n_in), the backend's units
    theta_0  = host.chip_theta0(g, backend.plan)              # (B, L)
    for t in 0..T-1:
        spikes_t, state = backend.step(sent[t], theta_t, state)
        theta_{t+1} = host.chip_theta(spikes_t, g, backend.plan)   # (t < T-1)

With static thresholds the whole sequence goes in one ``backend.run(sent, None, state)`` (equal to
T ``step`` calls by the contract). The host converts with the plan the backend runs, read after
``reset`` (the torch chip in deploy mode builds its plan there); ``plan`` is None for a float
backend. What crossed the bridge is returned as a :class:`SpikeRecord`: the spikes received, the
thresholds and the payloads sent, so nobody has to recompute them.

Counters drive the same loop: :class:`Replay` is a backend that hands back spikes received
elsewhere, so ``closed_loop(host, Replay(spikes, plan), x, g)`` is what ``host`` sends given those
spikes (used to compare two hosts value for value, and to count the host's compute per step).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import torch
from torch import Tensor

from stft_neuro.contract import SpikingBackend


@dataclass
class SpikeRecord:
    """What crossed the bridge in one closed loop.

    ``spikes``: per layer (T, B, n_l), 0/1, as received; ``theta``: (T, B, L) threshold modulation
    sent, in the backend's units (mantissa offsets for integer backends; None with static
    thresholds); ``sent``: (T, B, n_in) what the host sent, graded payloads (integer backends) or
    float currents (float backends)."""

    spikes: tuple[Tensor, ...]
    theta: Tensor | None
    sent: Tensor | None = None


class LoopHost(Protocol):
    """What the loop needs from a host. Every method returns torch tensors in the units of
    ``plan`` (the backend's ``DeploymentPlan``; None: float units)."""

    @property
    def dynamic_threshold(self) -> bool:
        """True when the host modulates the thresholds every step (closed loop)."""

    def chip_input(self, x: Any, plan: Any) -> Tensor:
        """Encoded input ``x`` (T, B, n_in) -> what is sent, (T, B, n_in)."""

    def chip_theta0(self, g: Any, plan: Any) -> Tensor:
        """Threshold modulation of step 0 (no spikes yet) from the GLP cue ``g`` (B,) -> (B, L)."""

    def chip_theta(self, spikes_t: Sequence[Tensor], g: Any, plan: Any) -> Tensor:
        """Threshold modulation of step t+1 from every layer's spikes of step t (L x (B, n_l))."""


def closed_loop(host: LoopHost, backend: SpikingBackend, x: Any, g: Any) -> SpikeRecord:
    """Drive ``backend`` from ``host`` for one batch; the loop of the module docstring.

    ``x``: the host's encoded input (T, B, n_in) (float currents for the torch host, already
    converted payloads for the ONNX host: ``host.chip_input`` knows which), ``g``: the GLP cue (B,)."""
    state = backend.reset(int(x.shape[1]))
    plan = backend.plan
    sent = host.chip_input(x, plan)
    if not host.dynamic_threshold:
        spikes, _ = backend.run(sent, None, state)
        return SpikeRecord(spikes=tuple(spikes), theta=None, sent=sent)
    steps = int(sent.shape[0])
    theta_t = host.chip_theta0(g, plan)
    per_step, thetas = [], []
    for t in range(steps):
        thetas.append(theta_t)
        spikes_t, state = backend.step(sent[t], theta_t, state)
        per_step.append(spikes_t)
        if t + 1 < steps:
            theta_t = host.chip_theta(spikes_t, g, plan)
    spikes = tuple(torch.stack([s[l] for s in per_step]) for l in range(len(per_step[0])))
    return SpikeRecord(spikes=spikes, theta=torch.stack(thetas), sent=sent)


class Replay:
    """A step-contract backend that hands back a recorded spike train instead of computing one.

    ``spikes``: per layer (T, B, n_l) (torch or numpy); ``plan``: the plan the recorded run's
    backend ran (the host converts with it). ``step`` returns step t's spikes of every layer
    whatever it is sent, so a host driven by it sends what it would have sent had it received
    those spikes. The state is the next step's index (an int: there is no chip state to carry)."""

    def __init__(self, spikes: Sequence[Any], plan: Any = None) -> None:
        self.spikes = tuple(torch.as_tensor(s) for s in spikes)
        self._plan = plan

    @property
    def sizes(self) -> tuple[int, ...]:
        return (0, *(int(s.shape[-1]) for s in self.spikes))

    @property
    def plan(self) -> Any:
        return self._plan

    def reset(self, batch: int) -> int:
        if batch != int(self.spikes[0].shape[1]):
            raise ValueError(f"Replay: recorded batch {int(self.spikes[0].shape[1])}, asked for {batch}")
        return 0

    def step(self, x_t: Tensor, theta_t: Tensor | None, state: int) -> tuple[tuple[Tensor, ...], int]:
        if state >= int(self.spikes[0].shape[0]):
            raise ValueError(f"Replay: the record has {int(self.spikes[0].shape[0])} steps, step {state} asked")
        return tuple(s[state] for s in self.spikes), state + 1

    def run(self, x: Tensor, theta: Tensor | None = None, state: int | None = None
            ) -> tuple[tuple[Tensor, ...], int]:
        t0 = 0 if state is None else state
        t1 = t0 + int(x.shape[0])
        if t1 > int(self.spikes[0].shape[0]):
            raise ValueError(f"Replay: the record has {int(self.spikes[0].shape[0])} steps, {t1} asked")
        return tuple(s[t0:t1] for s in self.spikes), t1
