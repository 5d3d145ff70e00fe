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
T ``step`` calls by the contract), unless samples may stop early.

**Early exit** (issue 17): given ``stop``, a sample stops stepping once its readout is settled.
After step ``t`` the loop asks ``stop(t, out_spikes, rows)`` which of the samples still running
(``rows``, their indices in the batch) stop now (``out_spikes``: their last layer's spikes of steps
``0..t``, ``(t+1, B_a, n_L)``); those drop out of the batch: the backend's state keeps only the
other rows (:func:`select_rows`: a ``ChipState``'s rows for the state-passing backends, the
backend's own ``select_rows`` for one that holds its state, the Lava session), and the host sends
payloads and thresholds, and computes cues, only for the samples still running. The record then
says per sample how many steps ran (``SpikeRecord.steps``); spikes, thetas and payloads of the
steps a sample did not run are zeros (nothing was sent or received). A sample's spikes of the steps
it ran are exactly those of the full run (samples are independent; the spikes of step ``t`` do not
depend on later steps). The host converts with the plan the backend runs, read after
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

import numpy as np
import torch
from torch import Tensor

from stft_neuro.contract import ChipState, SpikingBackend


@dataclass
class SpikeRecord:
    """What crossed the bridge in one closed loop.

    ``spikes``: per layer (T, B, n_l), 0/1, as received; ``theta``: (T, B, L) threshold modulation
    sent, in the backend's units (mantissa offsets for integer backends; None with static
    thresholds); ``sent``: (T, B, n_in) what the host sent, graded payloads (integer backends) or
    float currents (float backends); ``steps``: (B,) steps each sample ran with early exit (its
    spikes, thetas and payloads after them are zeros), None when every sample ran all T."""

    spikes: tuple[Tensor, ...]
    theta: Tensor | None
    sent: Tensor | None = None
    #: (B,) int64 steps each sample ran (1..T) when the loop had a stop rule; None: all T ran.
    steps: Tensor | None = None


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


class StopRule(Protocol):
    """Which of the running samples stop after step ``t``: ``(t, out_spikes (t+1, B_a, n_L),
    rows (B_a,) int64 indices in the batch) -> (B_a,) bool``."""

    def __call__(self, t: int, out_spikes: Tensor, rows: Tensor) -> Tensor: ...


class StopAfter:
    """A stop rule from a known number of steps per sample: sample ``b`` stops after ``steps[b]``
    steps (1..T). Replays an early-exit record's schedule (``SpikeRecord.steps``) through another
    host or backend, so that "what would this host send, given these spikes" holds with early exit
    too; also a fixed per-sample budget."""

    def __init__(self, steps: Any) -> None:
        self.steps = torch.as_tensor(steps, dtype=torch.int64)

    def __call__(self, t: int, out_spikes: Tensor, rows: Tensor) -> Tensor:
        return self.steps[rows] <= t + 1


def select_rows(backend: SpikingBackend, state: Any, keep: Tensor) -> Any:
    """The backend state of the samples ``keep`` (indices into the state's current rows, int64):
    the backend's own ``select_rows(state, keep)`` when it holds the state itself (the Lava session,
    :class:`Replay`), else the rows of a :class:`~stft_neuro.contract.ChipState` (the reference
    simulator, the torch chip: the state is passed explicitly, one row per sample)."""
    own = getattr(backend, "select_rows", None)
    if own is not None:
        return own(state, keep)
    if isinstance(state, ChipState):
        return ChipState(*(tuple(t[keep.to(t.device)] for t in field) for field in state))
    raise TypeError(f"early exit: cannot drop samples from a {type(backend).__name__}: its state is a "
                    f"{type(state).__name__}, not a ChipState, and it has no select_rows")


def _rows_of(a: Any, rows: Tensor) -> Any:
    """Rows ``rows`` of a per-sample host value (torch or numpy, batch first)."""
    return a[rows] if isinstance(a, Tensor) else np.asarray(a)[rows.numpy()]


def closed_loop(host: LoopHost, backend: SpikingBackend, x: Any, g: Any,
                stop: StopRule | None = None) -> SpikeRecord:
    """Drive ``backend`` from ``host`` for one batch; the loop of the module docstring.

    ``x``: the host's encoded input (T, B, n_in) (float currents for the torch host, already
    converted payloads for the ONNX host: ``host.chip_input`` knows which), ``g``: the GLP cue (B,).
    ``stop``: an early-exit rule (:class:`StopRule`), None: every sample runs all T steps."""
    state = backend.reset(int(x.shape[1]))
    plan = backend.plan
    sent = host.chip_input(x, plan)
    if stop is not None:
        return _early_exit_loop(host, backend, sent, g, stop, state, plan)
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


def _early_exit_loop(host: LoopHost, backend: SpikingBackend, sent: Tensor, g: Any, stop: StopRule,
                     state: Any, plan: Any) -> SpikeRecord:
    """The loop with early exit (module docstring): step by step, the finished samples dropped."""
    T, B = int(sent.shape[0]), int(sent.shape[1])
    dynamic = host.dynamic_threshold
    rows = torch.arange(B)                                   # the samples still running
    ran = torch.full((B,), T, dtype=torch.int64)
    spikes: list[Tensor] | None = None                       # per layer (T, B, n_l), zeros = not run
    theta: Tensor | None = None                              # (T, B, L)
    theta_t = host.chip_theta0(g, plan) if dynamic else None
    for t in range(T):
        spikes_t, state = backend.step(sent[t, rows], theta_t, state)
        if spikes is None:
            spikes = [torch.zeros((T, B, *s.shape[1:]), dtype=s.dtype) for s in spikes_t]
            if dynamic:
                theta = torch.zeros((T, B, *theta_t.shape[1:]), dtype=theta_t.dtype)
        for full, s in zip(spikes, spikes_t):
            full[t, rows] = s.to(full.device)
        if dynamic:
            theta[t, rows] = theta_t
        if t + 1 == T:
            break
        done = torch.as_tensor(stop(t, spikes[-1][:t + 1, rows], rows), dtype=torch.bool).reshape(-1)
        if done.shape[0] != rows.shape[0]:
            raise ValueError(f"early exit: the stop rule answered for {done.shape[0]} samples, "
                             f"{rows.shape[0]} are running")
        if bool(done.any()):
            ran[rows[done]] = t + 1
            keep = torch.nonzero(~done).reshape(-1)
            rows = rows[keep]
            if rows.numel() == 0:
                break
            state = select_rows(backend, state, keep)
            spikes_t = tuple(s[keep.to(s.device)] for s in spikes_t)
        if dynamic:
            theta_t = host.chip_theta(spikes_t, _rows_of(g, rows), plan)
    steps_idx = torch.arange(T)[:, None]
    not_sent = steps_idx >= ran[None, :]                     # (T, B): steps a sample did not run
    sent = sent.masked_fill(not_sent[..., None].to(sent.device), 0)
    return SpikeRecord(spikes=tuple(spikes), theta=theta, sent=sent, steps=ran)


class Replay:
    """A step-contract backend that hands back a recorded spike train instead of computing one.

    ``spikes``: per layer (T, B, n_l) (torch or numpy); ``plan``: the plan the recorded run's
    backend ran (the host converts with it). ``step`` returns step t's spikes of every layer
    whatever it is sent, so a host driven by it sends what it would have sent had it received
    those spikes. The state is the next step's index (an int: there is no chip state to carry), or
    after :meth:`select_rows` (early exit) ``(step, rows)``, the recorded rows still running."""

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

    def step(self, x_t: Tensor, theta_t: Tensor | None, state: Any) -> tuple[tuple[Tensor, ...], Any]:
        t, rows = (state, None) if isinstance(state, int) else state
        if t >= int(self.spikes[0].shape[0]):
            raise ValueError(f"Replay: the record has {int(self.spikes[0].shape[0])} steps, step {t} asked")
        if rows is None:
            return tuple(s[t] for s in self.spikes), t + 1
        return tuple(s[t][rows] for s in self.spikes), (t + 1, rows)

    def select_rows(self, state: Any, keep: Tensor) -> tuple[int, Tensor]:
        """Early exit: keep the running rows ``keep`` (indices among the current ones)."""
        t, rows = (state, torch.arange(int(self.spikes[0].shape[1]))) if isinstance(state, int) else state
        return t, rows[keep]

    def run(self, x: Tensor, theta: Tensor | None = None, state: int | None = None
            ) -> tuple[tuple[Tensor, ...], int]:
        t0 = 0 if state is None else state
        t1 = t0 + int(x.shape[0])
        if t1 > int(self.spikes[0].shape[0]):
            raise ValueError(f"Replay: the record has {int(self.spikes[0].shape[0])} steps, {t1} asked")
        return tuple(s[t0:t1] for s in self.spikes), t1
