"""The per-timestep contract between the host and whatever runs the spiking branch.

The spiking branch (the chip side: Dense synapses and LIF neurons) is driven by the host one step
at a time. Every backend implements the same three calls; the host side of the model (GLP, TSF,
threshold cues, transformer, fusion) only ever talks to this interface, so the torch module, the
reference simulator and the Lava runner are interchangeable and testable against each other::

    state = backend.reset(batch)
    spikes_t, state = backend.step(x_t, theta_t, state)   # per-layer spikes at step t
    spikes, state = backend.run(x, theta, state)          # == T calls of step

Shapes (B = batch, L = number of LIF layers, n_l = width of layer l, T = steps):
    x_t:      (B, n_in)   what the host sends at step t: input currents (float backends) or
                          graded-spike payloads (integer backends, Loihi units)
    theta_t:  (B, L)      threshold modulation at step t, one value per sample and layer:
                          added to each layer's threshold (float: in threshold units;
                          integer: threshold-mantissa units). ``None`` means zero.

Integer backends run a deployment plan (``hw_targets/loihi2/plan.py``) and expose it as
``backend.plan``: the host converts its float currents and threshold cues with *that* plan
(``plan.encode_input``, ``plan.theta_to_chip``) and never with anything else, and every integer
backend checks what it receives against the same plan (``plan.check_payload``,
``plan.check_theta``), so a bad payload gets the same error whoever runs the chip. A float backend
has ``plan = None``. For the torch chip in deploy mode the plan is built by ``reset`` (from the
current parameters: one plan per sequence during training), so the host reads ``backend.plan``
after ``reset``.
    spikes_t: tuple of L tensors (B, n_l), values 0/1
    x, theta, spikes: the same with a leading T axis.

Timing follows Lava exactly: every Dense adds one step of delay, so the LIF of layer ``l`` at step
``t`` integrates ``W_l @ s_{l-1}[t-1]`` (``s_{-1}`` = x). ``state`` carries the in-flight Dense
outputs as well as the neuron states, so ``run(T)`` == ``run(T1)`` then ``run(T2)`` with the state
handed over, bit for bit.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor


class ChipState(NamedTuple):
    """State of the chip side between steps; every field is a tuple with one (B, n_l) tensor per layer.

    ``u``: synaptic current, ``v``: membrane voltage, ``a``: the Dense output computed at the
    previous step that the LIF receives at this step (Lava's ``a_buff``).
    """

    u: tuple[Tensor, ...]
    v: tuple[Tensor, ...]
    a: tuple[Tensor, ...]


class SpikingBackend(Protocol):
    """What the host needs from anything that runs the spiking branch."""

    @property
    def sizes(self) -> tuple[int, ...]:
        """``(n_in, n_1, ..., n_L)``."""

    @property
    def plan(self) -> Any:
        """The ``DeploymentPlan`` this backend runs (after ``reset``), or None for float units.

        Typed ``Any`` because this module sits below every other module of the project."""

    def reset(self, batch: int) -> ChipState: ...

    def step(self, x_t: Tensor, theta_t: Tensor | None, state: ChipState
             ) -> tuple[tuple[Tensor, ...], ChipState]: ...

    def run(self, x: Tensor, theta: Tensor | None = None, state: ChipState | None = None
            ) -> tuple[tuple[Tensor, ...], ChipState]: ...


def run_by_steps(backend: SpikingBackend, x: Tensor, theta: Tensor | None = None,
                 state: ChipState | None = None) -> tuple[tuple[Tensor, ...], ChipState]:
    """``run`` written as T calls of ``step``: the definition every faster ``run`` must equal."""
    if state is None:
        state = backend.reset(x.shape[1])
    per_step = []
    for t in range(x.shape[0]):
        spikes_t, state = backend.step(x[t], None if theta is None else theta[t], state)
        per_step.append(spikes_t)
    spikes = tuple(torch.stack([s[l] for s in per_step]) for l in range(len(per_step[0])))
    return spikes, state
