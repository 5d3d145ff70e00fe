"""A per-step host <-> Lava bridge: ONE Lava network and ONE runtime for a whole batch of samples.

:class:`LavaSession` implements the step contract (``stft_neuro/contract.py``) on Lava's CPU
simulator (``Loihi2SimCfg``, ``fixed_pt``, bit-accurate models), so ``SpikingBranch.drive`` runs its
closed loop of dynamic thresholds through it unchanged. It is the project's only fixed-point Lava
backend: one sample is a session of batch 1. Loading Lava, the process models and the runtime's
life cycle are ``sim/lava_runtime.py``'s (and ``sim/lava_procs.py``'s).

What it builds, once for a capacity of ``B`` samples (``n_l`` the width of layer ``l``)::

    Injector(B*n_in) -> Sparse_0 (graded, block-diag) -> LIF_0 (B*n_1) -> Sparse_1 -> LIF_1 -> ...
                                                           |                             |
                                                       Extractor_0                   Extractor_1 ...
    Injector(B*L) --fan-out--> LIF_0.theta_in, LIF_1.theta_in, ...

- **Many samples in one network.** Every layer's weight matrix ``W`` (n_out, n_in) becomes
  ``kron(eye(B), W)`` (block-diagonal, ``scipy.sparse``) in Lava's ``Sparse`` process with its
  bit-accurate model ``PySparseModelBitAcc``; the LIF populations are ``(B*n,)``, sample ``b``
  owning neurons ``[b*n, (b+1)*n)``. Sparse's fixed-point model clips/truncates the weights by
  their sign mode, which is the same for the block-diagonal matrix as for ``W`` (same values), and
  LIF is elementwise, so B samples run exactly as B separate networks (tested, spike for spike,
  against :class:`~stft_neuro.sim.reference.ReferenceSimulator`).
- **Graded payloads.** Layer 0's ``Sparse`` has ``num_message_bits = plan.input_bits``; the payload
  Injector sends int32 (``lava_procs.IntInjectorModel``: Lava's own sends float64, which a
  fixed-point synapse cannot shift).
- **Threshold modulation.** Lava's LIF has no threshold input. ``lava_procs.BatchThetaLIF`` is Lava's ``LIF``
  with one more port ``theta_in`` of shape ``(B*L + 1,)``: the host's ``theta_t`` ``(B, L)``
  flattened row-major, then the reset flag (below), sent once per step through ONE Injector fanned
  out to every layer. Layer ``l``'s model
  (``PyBatchThetaLifModelBitAcc``, ``PyLifModelBitAcc`` otherwise unchanged) takes column ``l`` and
  broadcasts it over the sample's ``n_l`` neurons: ``effective_vth = repeat(vth + theta[:, l], n_l)
  << 6``. Chosen over a ``(B*n_l,)`` port per layer: one send per step instead of L, and B*L values
  on the channel instead of B*sum(n_l).
- **Per step**: one ``send`` of the payloads ``(B*n_in,)``, one of the thetas ``(B*L,)``, one
  ``receive`` per layer. Each sequence is driven by non-blocking ``RunSteps`` (``plan.num_steps``
  steps for :meth:`step`, the length of ``x`` for :meth:`run`); a sequence longer than one
  ``RunSteps`` simply starts another (Lava keeps the state), so ``run(T1)`` then ``run(T2)`` ==
  ``run(T1 + T2)``. Never a rebuild per step, never ``Var.get``/``Var.set`` per step.
- **Reset between batches, in place, through the data path.** Lava's LIF has no reset port, and
  ``Var.set`` between two ``RunSteps`` works but sends a Var element by element through the
  runtime: zeroing u, v and a_buff cost 3.3 s per reset at B = 64 (measured, 2-core AMD EPYC),
  more than a rebuild (1.8 s). Instead the theta port carries one more element, a reset flag: on
  the first step after :meth:`reset` the theta LIF zeroes u and v and drops that step's synaptic
  input (the Sparse's ``a_buff``, the only other state: the previous sequence's last output in
  flight). That is exactly a fresh network's step 0, costs nothing, and is tested against the
  reference simulator from zero state. A batch smaller than the capacity is
  padded with zero payloads and zero thetas (its extra samples are computed and dropped); a larger
  one rebuilds the network at the new capacity.
- **Early exit: samples drop out of the batch.** :meth:`select_rows` (called by the closed loop,
  ``stft_neuro.closed_loop.select_rows``) keeps the given samples of the current sequence: each
  sample keeps its slot of the block-diagonal network (its neurons and their state), the samples
  that stopped get zero payloads and zero thresholds from then on and their outputs are no longer
  read, and the host sends and receives ``(B_a, ...)`` for the ``B_a`` samples still running.
  Dropping a sample rebuilds nothing and changes no other sample's arithmetic (the blocks are
  independent), so the samples still running stay equal to the reference simulator's (tested).
  When every sample has stopped the host starts the next sequence; the ``RunSteps`` still owed
  are fed zeros at that reset (Lava's CPU simulator needs them; they are not steps of any sample).
- **State.** The neuron state lives in the runtime: :meth:`reset` and :meth:`step` return a
  :class:`SessionState` token (which sequence, which step), not a :class:`ChipState`. A token of an
  earlier sequence is refused (it would silently continue the wrong state). :meth:`read_state`
  reads u, v and the synapses' in-flight outputs back between ``RunSteps`` (tests; ms per Var).
- **Shutdown on every path.** :meth:`close` (also ``with LavaSession(...)``) stops the runtime
  through :class:`~stft_neuro.sim.lava_runtime.LavaRuntime`: after an ordinary exception the owed
  steps are fed zeros and drained, then the runtime is stopped normally; after
  ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM, turned into ``KeyboardInterrupt`` while a runtime
  lives) or a process model that died or failed, the process models are terminated and Lava's
  shared memory released without talking to them. A dead or failed model raises
  :class:`LavaSessionError` (``= LavaRuntimeError``) instead of hanging.

Spikes come back as float32 0/1 tensors ``(B, n_l)`` per layer (per step) or ``(T, B, n_l)`` (run),
like the other backends.
"""
from __future__ import annotations

import time
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from stft_neuro.contract import ChipState
from stft_neuro.hw_targets.errors import ChipInputError
from stft_neuro.hw_targets.loihi2.plan import DeploymentPlan
from stft_neuro.hw_targets.loihi2.weights import lava_effective_weights
from stft_neuro.sim.lava_runtime import (LavaRuntime, LavaRuntimeError, LavaTiming,
                                         LavaUnavailableError, load, must_force)

__all__ = ["LavaSession", "SessionState", "LavaSessionError", "SessionTiming", "block_diagonal",
           "LavaUnavailableError"]

#: The session's failures are the runtime's (a process model died or failed, a step timed out).
LavaSessionError = LavaRuntimeError
#: The session's timing is the runtime's :class:`~stft_neuro.sim.lava_runtime.LavaTiming`.
SessionTiming = LavaTiming


class SessionState(NamedTuple):
    """The host's handle on the state held inside a running :class:`LavaSession`.

    ``session``: id of the session; ``sequence``: how many resets it has seen; ``step``: steps
    run since that reset; ``batch``: samples of this sequence."""

    session: int
    sequence: int
    step: int
    batch: int


def block_diagonal(weight: np.ndarray, batch: int) -> sp.csr_matrix:
    """``kron(eye(batch), weight)`` as CSR int32: ``(batch*n_out, batch*n_in)``, sample ``b`` on the
    ``b``-th diagonal block (zeros of ``weight`` are not stored; Lava's Sparse ignores them)."""
    w = sp.csr_matrix(np.asarray(weight, dtype=np.int32))
    return sp.kron(sp.identity(batch, dtype=np.int32, format="csr"), w, format="csr")


class LavaSession:
    """The step contract on Lava ``fixed_pt``: one network and one runtime for ``batch`` samples.

    Args:
        plan: the deployment plan; payloads and thetas are checked against it
            (``plan.check_payload`` / ``plan.check_theta``: the same errors as every backend).
        batch: the capacity B (samples per network); a larger batch at :meth:`reset` rebuilds.
        step_timeout_s: the longest one step may take before the session gives up
            (:class:`LavaSessionError`); it also checks every ``0.25 s`` for dead process models.

    Use as a context manager (or call :meth:`close`): the runtime's process models and shared
    memory live until then.
    """

    _ids = 0

    def __init__(self, plan: DeploymentPlan, batch: int, *, step_timeout_s: float = 120.0) -> None:
        if not isinstance(plan, DeploymentPlan):
            raise TypeError(f"LavaSession takes a DeploymentPlan, got {type(plan).__name__}")
        if int(batch) < 1:
            raise ValueError(f"LavaSession: batch must be >= 1, got {batch}")
        self.plan = plan
        self.network = plan.network
        self.capacity = int(batch)
        self.step_timeout_s = float(step_timeout_s)
        self.timing = LavaTiming()
        LavaSession._ids += 1
        self._id = LavaSession._ids
        self._net: dict[str, Any] | None = None
        self._runtime: LavaRuntime | None = None
        self._sequence = 0
        self._step = 0
        self._batch = 0
        self._slots = np.zeros(0, dtype=np.int64)  # the network slot of each running sample
        self._dirty = False      # state differs from zero (a reset must clear it)
        self._reset_next = False # the next step carries the reset flag

    # ------------------------------------------------------------------ contract
    @property
    def sizes(self) -> tuple[int, ...]:
        return self.network.sizes

    def reset(self, batch: int) -> SessionState:
        """Start the next sequence of ``batch`` samples: zero the state in place (or build the
        network on first use / for a larger batch). Returns the sequence's :class:`SessionState`."""
        batch = int(batch)
        if batch < 1:
            raise ChipInputError(f"LavaSession.reset: batch must be >= 1, got {batch}")
        if self._net is not None and batch > self.capacity:
            self.close()
        if self._net is None:
            self.capacity = max(self.capacity, batch)
            self._build()
        elif self._dirty:
            t0 = time.perf_counter()
            self._finish_sequence()
            self._reset_next = True
            self.timing.reset_s += time.perf_counter() - t0
            self.timing.resets += 1
        self._sequence += 1
        self._step = 0
        self._batch = batch
        self._slots = np.arange(batch, dtype=np.int64)
        self._dirty = False
        return SessionState(self._id, self._sequence, 0, batch)

    def select_rows(self, state: SessionState, keep: Any) -> SessionState:
        """Early exit: keep only the samples ``keep`` (int indices among this sequence's running
        samples, in order) -> the state token of the ``len(keep)`` samples left. The others keep
        their slots with zero input from now on; their outputs are no longer read (module doc)."""
        self._check_state(state, None, None)
        keep = np.asarray(keep.detach().cpu().numpy() if isinstance(keep, Tensor) else keep, dtype=np.int64)
        if keep.ndim != 1 or keep.size < 1 or (np.diff(keep) <= 0).any() or keep[0] < 0 \
                or keep[-1] >= self._batch:
            raise ChipInputError(f"LavaSession.select_rows: keep must be increasing indices among the "
                                 f"{self._batch} running samples, at least one; got {keep.tolist()}")
        self._slots = self._slots[keep]
        self._batch = int(keep.size)
        return state._replace(batch=self._batch)

    def step(self, x_t: Tensor, theta_t: Tensor | None, state: SessionState
             ) -> tuple[tuple[Tensor, ...], SessionState]:
        """One step: ``x_t`` ``(B, n_in)`` payloads, ``theta_t`` ``(B, L)`` or None (zeros).
        Returns every layer's spikes ``(B, n_l)`` (float32 0/1) and the next state token."""
        self.plan.check_payload(x_t)
        if theta_t is not None:
            self.plan.check_theta(theta_t)
        self._check_state(state, x_t, theta_t)
        spikes = self._exchange(_as_int(x_t), None if theta_t is None else _as_int(theta_t),
                                chunk=int(self.plan.num_steps))
        return tuple(torch.from_numpy(s) for s in spikes), state._replace(step=self._step)

    def run(self, x: Tensor, theta: Tensor | None = None, state: SessionState | None = None
            ) -> tuple[tuple[Tensor, ...], SessionState]:
        """``x`` ``(T, B, n_in)``, ``theta`` ``(T, B, L)`` or None; ``state`` None starts a new
        sequence. Returns spikes ``(T, B, n_l)`` per layer and the state token."""
        x, theta = self.plan.check_run(x, theta)
        T, B = int(x.shape[0]), int(x.shape[1])
        if state is None:
            state = self.reset(B)
        self._check_state(state, x[0], None if theta is None else theta[0])
        xs = _as_int(x)
        th = None if theta is None else _as_int(theta)
        out = [np.zeros((T, B, n), dtype=np.float32) for n in self.sizes[1:]]
        for t in range(T):
            spikes = self._exchange(xs[t], None if th is None else th[t], chunk=T - t)
            for l, s in enumerate(spikes):
                out[l][t] = s
        return tuple(torch.from_numpy(o) for o in out), state._replace(step=self._step)

    def read_state(self) -> ChipState:
        """The neuron state of the current sequence's samples, read from the paused runtime:
        ``u``, ``v`` per layer ``(B, n_l)`` and ``a`` (the synapse's output in flight, what layer
        ``l`` receives at the next step) ``(B, n_l)``, float64 tensors of integers, like
        :class:`~stft_neuro.sim.reference.ReferenceSimulator`'s state.

        Only between ``RunSteps`` (after :meth:`run`, or after :meth:`step` at the end of a
        ``plan.num_steps`` chunk): elsewhere reading would need the owed steps run with zeros,
        which would change the state, so it is refused. Costs ``Var.get`` per variable (ms each)."""
        rt = self._runtime
        if rt is None or self._batch == 0:
            raise ChipInputError("LavaSession.read_state: no sequence is running (call reset)")
        if rt.pending:
            raise ChipInputError(f"LavaSession.read_state: {rt.pending} steps of this RunSteps are "
                                 "still to come; read the state at the end of a run")
        B, slots = self._batch, self._slots
        sizes = self.sizes[1:]
        if self._reset_next or not self._dirty:   # a fresh sequence: the reset flag is still due
            z = tuple(torch.zeros(B, n, dtype=torch.float64) for n in sizes)
            return ChipState(u=z, v=tuple(t.clone() for t in z), a=tuple(t.clone() for t in z))
        rt.finish()  # (nothing owed: only waits for the RunSteps to end)
        net = self._net

        def read(var: Any, n: int) -> Tensor:
            return torch.from_numpy(rt.get(var).reshape(self.capacity, n)[slots]).to(torch.float64)

        return ChipState(u=tuple(read(p.u, n) for p, n in zip(net["lifs"], sizes)),
                         v=tuple(read(p.v, n) for p, n in zip(net["lifs"], sizes)),
                         a=tuple(read(q.a_buff, n) for q, n in zip(net["sparses"], sizes)))

    # ------------------------------------------------------------------ life cycle
    def __enter__(self) -> "LavaSession":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(force=exc is not None and must_force(exc))

    def close(self, force: bool = False) -> None:
        """Stop the runtime (no process model, no shared memory left): drained and stopped
        normally, or with ``force`` (after an interruption or a failed process model) terminated
        without draining (:meth:`~stft_neuro.sim.lava_runtime.LavaRuntime.stop`). Idempotent."""
        rt, self._runtime, self._net = self._runtime, None, None
        if rt is not None:
            rt.stop(force=force)

    def reset_timing(self) -> None:
        self.timing = LavaTiming()
        if self._runtime is not None:
            self._runtime.timing = self.timing

    # ------------------------------------------------------------------ internals
    def _check_state(self, state: Any, x_t: Tensor, theta_t: Tensor | None) -> None:
        if not isinstance(state, SessionState):
            raise TypeError("LavaSession keeps the neuron state inside the Lava runtime: pass the "
                            f"SessionState its reset/step returned, not {type(state).__name__}")
        if state.session != self._id or state.sequence != self._sequence or self._net is None:
            raise ChipInputError("LavaSession: this state belongs to an earlier sequence or another "
                                 "session (call reset for a new sequence)")
        if state.batch != self._batch:
            raise ChipInputError(f"LavaSession: this state is of {state.batch} samples; {self._batch} "
                                 "are running (a token from before select_rows)")
        if x_t is not None and int(x_t.shape[-2]) != state.batch:
            raise ChipInputError(f"payload: batch {int(x_t.shape[-2])} does not match the "
                                 f"{state.batch} samples of this sequence")
        if theta_t is not None and int(theta_t.shape[-2]) != state.batch:
            raise ChipInputError(f"theta: batch {int(theta_t.shape[-2])} does not match the "
                                 f"{state.batch} samples of this sequence")

    def _build(self) -> None:
        lv = load()
        B, L = self.capacity, len(self.network.layers)
        inj = lv.Injector(shape=(B * self.network.n_in,))
        th_inj = lv.Injector(shape=(B * L + 1,))
        sparses, lifs, exts = [], [], []
        src = inj.out_port
        for l, layer in enumerate(self.network.layers):
            # Lava-effective weights (what Dense/Sparse compute with); the model would derive the
            # same values from the raw ones, this makes the block-diagonal matrix's sign mode
            # independent of B for certain.
            w = block_diagonal(lava_effective_weights(layer.weight), B)
            syn = lv.Sparse(weights=w, weight_exp=int(layer.weight_exp),
                            num_message_bits=int(layer.num_message_bits), name=f"sparse_{l}")
            lif = lv.BatchThetaLIF(layer=l, num_layers=L, batch=B, shape=(B * layer.n_out,),
                                   du=int(layer.du), dv=int(layer.dv), vth=int(layer.vth),
                                   bias_mant=np.tile(np.asarray(layer.bias_mant), B),
                                   bias_exp=int(layer.bias_exp), name=layer.name)
            src.connect(syn.s_in)
            syn.a_out.connect(lif.a_in)
            th_inj.out_port.connect(lif.theta_in)
            ext = lv.Extractor(shape=(B * layer.n_out,))
            lif.s_out.connect(ext.in_port)
            sparses.append(syn)
            lifs.append(lif)
            exts.append(ext)
            src = lif.s_out
        cfg = lv.Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map={
            lv.Injector: lv.IntInjectorModel, lv.Extractor: lv.PyLoihiExtractorModel,
            lv.BatchThetaLIF: lv.PyBatchThetaLifModelBitAcc, lv.Sparse: lv.PySparseModelBitAcc})
        runtime = LavaRuntime(lifs[-1], cfg, [inj, th_inj], exts,
                              step_timeout_s=self.step_timeout_s, timing=self.timing)
        # Compile and start the process models now (a 1-step no-op would change the state); the
        # first RunSteps starts stepping. On failure start() has stopped what it started.
        runtime.start()
        self._runtime = runtime
        self._net = dict(inj=inj, th_inj=th_inj, sparses=sparses, lifs=lifs, exts=exts,
                         anchor=lifs[-1], cfg=cfg,
                         x_buf=np.zeros(B * self.network.n_in, dtype=np.int32),
                         th_buf=np.zeros(B * L + 1, dtype=np.int32))

    def _exchange(self, x_t: np.ndarray, theta_t: np.ndarray | None, chunk: int) -> list[np.ndarray]:
        """Send one step (``x_t`` (B, n_in), ``theta_t`` (B, L) integers), receive every layer's
        spikes; returns ``[(B, n_l)]`` float32."""
        t0 = time.perf_counter()
        net, rt = self._net, self._runtime
        if rt.pending == 0:
            rt.run_steps(chunk)
        B, cap, slots = self._batch, self.capacity, self._slots
        xs, ths = net["x_buf"], net["th_buf"]    # the channel copies what is sent: reusable
        L = len(self.network.layers)
        if B == self._slots_full():              # every sample of the sequence still runs
            xs[:B * self.network.n_in] = x_t.reshape(-1)
            ths[:-1] = 0
            if theta_t is not None:
                ths[:B * L] = theta_t.reshape(-1)
        else:                                    # early exit: the stopped samples' slots get zeros
            xs[:] = 0
            xs.reshape(cap, self.network.n_in)[slots] = x_t
            ths[:] = 0
            if theta_t is not None:
                ths[:-1].reshape(cap, L)[slots] = theta_t
        ths[-1] = 1 if self._reset_next else 0
        self._reset_next = False
        self._dirty = True
        received = rt.step((xs, ths))
        out = [r.reshape(cap, n)[slots].astype(np.float32) for r, n in zip(received, self.sizes[1:])]
        self._step += 1
        self.timing.steps += 1
        self.timing.sample_steps += B
        self.timing.steps_s += time.perf_counter() - t0
        return out

    def _slots_full(self) -> int:
        """The running samples when none has dropped out (slots 0..B-1), else -1."""
        n = int(self._slots.size)
        return n if n == 0 or int(self._slots[-1]) == n - 1 else -1

    def _finish_sequence(self) -> None:
        """Before a reset: complete (with zeros) and wait for the current RunSteps."""
        try:
            self._runtime.finish()
        except BaseException as exc:
            self.close(force=must_force(exc))
            raise


def _as_int(t: Tensor | np.ndarray) -> np.ndarray:
    """Checked payloads / thetas (``plan.check_*`` ran first) as int32 numpy."""
    a = t.detach().cpu().numpy() if isinstance(t, Tensor) else np.asarray(t)
    return np.rint(a).astype(np.int32) if a.dtype.kind == "f" else a.astype(np.int32)
