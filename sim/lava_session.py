"""A per-step host <-> Lava bridge: ONE Lava network and ONE runtime for a whole batch of samples.

:class:`LavaSession` implements the step contract (``stft_neuro/contract.py``) on Lava's CPU
simulator (``Loihi2SimCfg``, ``fixed_pt``, bit-accurate models), so ``SpikingBranch.drive`` runs its
closed loop of dynamic thresholds through it unchanged. It replaces :class:`LavaRunner`'s one
network per sample (and, in the closed loop, one network per step).

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
  Injector sends int32 (``lava_runner._IntInjectorModel``: Lava's own sends float64, which a
  fixed-point synapse cannot shift).
- **Threshold modulation.** Lava's LIF has no threshold input. ``BatchThetaLIF`` is Lava's ``LIF``
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
- **State.** The neuron state lives in the runtime: :meth:`reset` and :meth:`step` return a
  :class:`SessionState` token (which sequence, which step), not a :class:`ChipState`. A token of an
  earlier sequence is refused (it would silently continue the wrong state).
- **Shutdown on every path.** :meth:`close` (also ``with LavaSession(...)``) stops the runtime. On
  an ordinary exception between Lava calls the pending steps are fed zeros and drained, then the
  runtime is stopped normally; after ``KeyboardInterrupt`` (Ctrl-C, and SIGTERM, which the session
  turns into ``KeyboardInterrupt`` in its own process while a runtime lives) or a process model
  that died or failed, the process models are terminated and Lava's shared memory released without
  talking to them (:func:`stft_neuro.sim.lava_runner.force_stop`). Every receive waits with a
  timeout and, while waiting, checks that every process model is alive and that the runtime has
  not reported an error: a dead or failed model raises :class:`LavaSessionError` instead of hanging.

Spikes come back as float32 0/1 tensors ``(B, n_l)`` per layer (per step) or ``(T, B, n_l)`` (run),
like the other backends.
"""
from __future__ import annotations

import functools
import os
import queue
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from stft_neuro.hw_targets.errors import ChipInputError
from stft_neuro.hw_targets.loihi2.plan import DeploymentPlan
from stft_neuro.hw_targets.loihi2.weights import lava_effective_weights
from stft_neuro.sim import lava_runner

_SESSION_LAVA: dict[str, Any] = {}
#: Seconds one step may take before the session looks for a dead or failed process model again.
_POLL_S = 0.25


class LavaSessionError(RuntimeError):
    """The Lava runtime failed (a process model died or raised, or a step timed out)."""


class SessionState(NamedTuple):
    """The host's handle on the state held inside a running :class:`LavaSession`.

    ``session``: id of the session; ``sequence``: how many resets it has seen; ``step``: steps
    run since that reset; ``batch``: samples of this sequence."""

    session: int
    sequence: int
    step: int
    batch: int


@dataclass
class SessionTiming:
    """Wall-clock seconds of a session, cumulated over its life (reset by :meth:`LavaSession.reset_timing`).

    ``build_s``: process creation + compile + runtime start (once per capacity);
    ``reset_s``: resets between sequences (finishing a partly run RunSteps with zeros; the state
    itself is cleared by a flag on the next step, at no cost);
    ``steps_s``: the per-step send/receive calls, host side included (validation, conversion);
    ``wait_s``: ``wait`` at the end of each ``RunSteps``; ``teardown_s``: stopping.
    ``steps`` counts Lava steps, ``sample_steps`` the real (unpadded) samples x steps."""

    build_s: float = 0.0
    reset_s: float = 0.0
    steps_s: float = 0.0
    wait_s: float = 0.0
    teardown_s: float = 0.0
    builds: int = 0
    resets: int = 0
    steps: int = 0
    sample_steps: int = 0


def _lava() -> dict[str, Any]:
    """Lava's classes (from ``lava_runner._lava``) plus the batched theta LIF, defined once at
    module level (Lava's forked process models find them by name)."""
    if _SESSION_LAVA:
        return _SESSION_LAVA
    lv = lava_runner._lava()  # (also settles multiprocessing's start method for Lava)  # raises LavaUnavailableError with the reason
    from lava.magma.core.decorator import implements, requires, tag
    from lava.magma.core.model.py.ports import PyInPort
    from lava.magma.core.model.py.type import LavaPyType
    from lava.magma.core.process.ports.ports import InPort
    from lava.magma.core.resources import CPU
    from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
    from lava.proc.lif.models import PyLifModelBitAcc
    from lava.proc.sparse.models import PySparseModelBitAcc
    from lava.proc.sparse.process import Sparse

    class BatchThetaLIF(lv["LIF"]):
        """Lava's LIF ``(B*n,)`` for B samples of n neurons with a threshold-modulation input
        ``theta_in`` ``(B*L,)``: the thetas of all L layers, of which it uses column ``layer``."""

        def __init__(self, *, layer: int, num_layers: int, batch: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.theta_in = InPort(shape=(batch * num_layers + 1,))
            self.proc_params["theta_layer"] = int(layer)
            self.proc_params["theta_layers"] = int(num_layers)
            self.proc_params["theta_batch"] = int(batch)

    class PyBatchThetaLifModelBitAcc(PyLifModelBitAcc):
        """``PyLifModelBitAcc`` whose threshold mantissa is ``vth + theta_t[b, layer]`` for the
        neurons of sample ``b``, at every step, and which starts a new sequence from zero state when
        the last element of ``theta_in`` (the reset flag) is non-zero: u = v = 0 and the synaptic
        input of that step (the Sparse's in-flight output of the previous sequence) is dropped,
        which is exactly the state of a freshly built network at its step 0.

        ``run_spk`` is ``AbstractPyLifModelFixed.run_spk`` (lava 0.10, lif/models.py) with those
        two additions, in the same order of operations."""

        theta_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)

        def run_spk(self) -> None:
            p = self.proc_params
            a_in_data = self.a_in.recv()
            raw = self.theta_in.recv()
            if raw[-1] != 0:                       # reset flag: first step of a new sequence
                a_in_data = np.zeros_like(a_in_data)
                self.u[:] = 0
                self.v[:] = 0
            theta = raw[:-1].reshape(p["theta_batch"], p["theta_layers"])
            n = self.v.shape[0] // p["theta_batch"]
            vth = np.int64(self.vth) + theta[:, p["theta_layer"]].astype(np.int64)    # (B,)
            self.scale_bias()
            self.effective_vth = np.left_shift(np.repeat(vth, n), self.vth_shift)      # (B*n,)
            self.isthrscaled = True
            self.subthr_dynamics(activation_in=a_in_data)
            self.s_out_buff = self.spiking_activation()
            self.reset_voltage(spike_vector=self.s_out_buff)
            self.s_out.send(self.s_out_buff)

    # ``implements`` refuses a subclass of a model of another process; the attribute is reset first.
    PyBatchThetaLifModelBitAcc.implements_process = None
    tag("fixed_pt")(requires(CPU)(implements(proc=BatchThetaLIF, protocol=LoihiProtocol)(
        PyBatchThetaLifModelBitAcc)))
    for cls in (BatchThetaLIF, PyBatchThetaLifModelBitAcc):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
        globals()[cls.__name__] = cls
    _SESSION_LAVA.update(lv, Sparse=Sparse, PySparseModelBitAcc=PySparseModelBitAcc,
                         BatchThetaLIF=BatchThetaLIF,
                         PyBatchThetaLifModelBitAcc=PyBatchThetaLifModelBitAcc)
    return _SESSION_LAVA


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
        self.timing = SessionTiming()
        LavaSession._ids += 1
        self._id = LavaSession._ids
        self._net: dict[str, Any] | None = None
        self._sequence = 0
        self._step = 0
        self._batch = 0
        self._pending = 0        # steps of the current RunSteps not yet sent
        self._running = False    # a non-blocking RunSteps was started and not yet waited for
        self._dirty = False      # state differs from zero (a reset must clear it)
        self._reset_next = False # the next step carries the reset flag
        self._old_term: Any = None

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
        self._dirty = False
        return SessionState(self._id, self._sequence, 0, batch)

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

    # ------------------------------------------------------------------ life cycle
    def __enter__(self) -> "LavaSession":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(force=exc_type is not None and not issubclass(exc_type, Exception))

    def close(self, force: bool = False) -> None:
        """Stop the runtime (no process model, no shared memory left). ``force``: terminate the
        process models without draining (after an interruption). Idempotent."""
        net = self._net
        if net is None:
            return
        t0 = time.perf_counter()
        try:
            runtime = getattr(net["anchor"], "runtime", None)
            if runtime is not None:
                if force:
                    lava_runner.force_stop(runtime)
                else:
                    try:
                        self._drain(net)
                        net["anchor"].stop()
                    except BaseException:
                        lava_runner.force_stop(runtime)
                        raise
        finally:
            self._net = None
            self._running = False
            self._pending = 0
            self._restore_sigterm()
            self.timing.teardown_s += time.perf_counter() - t0

    def reset_timing(self) -> None:
        self.timing = SessionTiming()

    # ------------------------------------------------------------------ internals
    def _check_state(self, state: Any, x_t: Tensor, theta_t: Tensor | None) -> None:
        if not isinstance(state, SessionState):
            raise TypeError("LavaSession keeps the neuron state inside the Lava runtime: pass the "
                            f"SessionState its reset/step returned, not {type(state).__name__}")
        if state.session != self._id or state.sequence != self._sequence or self._net is None:
            raise ChipInputError("LavaSession: this state belongs to an earlier sequence or another "
                                 "session (call reset for a new sequence)")
        if int(x_t.shape[-2]) != state.batch:
            raise ChipInputError(f"payload: batch {int(x_t.shape[-2])} does not match the "
                                 f"{state.batch} samples of this sequence")
        if theta_t is not None and int(theta_t.shape[-2]) != state.batch:
            raise ChipInputError(f"theta: batch {int(theta_t.shape[-2])} does not match the "
                                 f"{state.batch} samples of this sequence")

    def _build(self) -> None:
        lv = _lava()
        t0 = time.perf_counter()
        B, L = self.capacity, len(self.network.layers)
        inj = lv["Injector"](shape=(B * self.network.n_in,))
        th_inj = lv["Injector"](shape=(B * L + 1,))
        sparses, lifs, exts = [], [], []
        src = inj.out_port
        for l, layer in enumerate(self.network.layers):
            # Lava-effective weights (what Dense/Sparse compute with); the model would derive the
            # same values from the raw ones, this makes the block-diagonal matrix's sign mode
            # independent of B for certain.
            w = block_diagonal(lava_effective_weights(layer.weight), B)
            syn = lv["Sparse"](weights=w, weight_exp=int(layer.weight_exp),
                               num_message_bits=int(layer.num_message_bits), name=f"sparse_{l}")
            lif = lv["BatchThetaLIF"](layer=l, num_layers=L, batch=B, shape=(B * layer.n_out,),
                                      du=int(layer.du), dv=int(layer.dv), vth=int(layer.vth),
                                      bias_mant=np.tile(np.asarray(layer.bias_mant), B),
                                      bias_exp=int(layer.bias_exp), name=layer.name)
            src.connect(syn.s_in)
            syn.a_out.connect(lif.a_in)
            th_inj.out_port.connect(lif.theta_in)
            ext = lv["Extractor"](shape=(B * layer.n_out,))
            lif.s_out.connect(ext.in_port)
            sparses.append(syn)
            lifs.append(lif)
            exts.append(ext)
            src = lif.s_out
        cfg = lv["Loihi2SimCfg"](select_tag="fixed_pt", exception_proc_model_map={
            lv["Injector"]: lv["IntInjectorModel"], lv["Extractor"]: lv["PyLoihiExtractorModel"],
            lv["BatchThetaLIF"]: lv["PyBatchThetaLifModelBitAcc"],
            lv["Sparse"]: lv["PySparseModelBitAcc"]})
        self._net = net = dict(inj=inj, th_inj=th_inj, sparses=sparses, lifs=lifs, exts=exts,
                               anchor=lifs[-1], cfg=cfg,
                               zeros_x=np.zeros(B * self.network.n_in, dtype=np.int32),
                               zeros_th=np.zeros(B * L + 1, dtype=np.int32))
        self._install_sigterm()
        try:
            # Compile and start the process models now (a 1-step no-op would change the state):
            # create_runtime builds them; the first RunSteps starts stepping.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Cannot import module", category=UserWarning)
                net["anchor"].create_runtime(run_cfg=cfg)
        except BaseException:
            self.close(force=True)
            raise
        self.timing.build_s += time.perf_counter() - t0
        self.timing.builds += 1

    def _start(self, steps: int) -> None:
        """Start a non-blocking ``RunSteps(steps)`` (after the previous one has finished)."""
        net = self._net
        if self._running:
            self._wait()
        net["anchor"].run(condition=_lava()["RunSteps"](num_steps=int(steps), blocking=False),
                          run_cfg=net["cfg"])
        self._running = True
        self._pending = int(steps)

    def _wait(self, net: dict[str, Any] | None = None) -> None:
        t0 = time.perf_counter()
        (net or self._net)["anchor"].wait()
        self._running = False
        self.timing.wait_s += time.perf_counter() - t0

    def _exchange(self, x_t: np.ndarray, theta_t: np.ndarray | None, chunk: int) -> list[np.ndarray]:
        """Send one step (``x_t`` (B, n_in), ``theta_t`` (B, L) integers), receive every layer's
        spikes; returns ``[(B, n_l)]`` float32."""
        t0 = time.perf_counter()
        net = self._net
        if self._pending == 0:
            self._start(chunk)
        B, cap = self._batch, self.capacity
        xs = net["zeros_x"].copy()
        xs[:B * self.network.n_in] = x_t.reshape(-1)
        ths = net["zeros_th"].copy()
        if theta_t is not None:
            ths[:B * theta_t.shape[-1]] = theta_t.reshape(-1)
        if self._reset_next:
            ths[-1] = 1
            self._reset_next = False
        self._dirty = True
        net["inj"].send(xs)
        net["th_inj"].send(ths)
        self._pending -= 1
        out = []
        for ext, n in zip(net["exts"], self.sizes[1:]):
            out.append(self._receive(ext).reshape(cap, n)[:B].astype(np.float32))
        self._step += 1
        self.timing.steps += 1
        self.timing.sample_steps += B
        self.timing.steps_s += time.perf_counter() - t0
        return out

    def _receive(self, ext: Any) -> np.ndarray:
        """``ext.receive()``, waiting in slices of ``_POLL_S`` and checking between them that no
        process model died or reported an error (else :class:`LavaSessionError`)."""
        port = ext.out_port.external_pipe_csp_recv_port
        deadline = time.monotonic() + self.step_timeout_s
        while True:
            try:
                port._queue.get(timeout=_POLL_S, peek=True)
                return ext.receive()
            except queue.Empty:
                self._check_alive()
                if time.monotonic() > deadline:
                    raise LavaSessionError(f"Lava: no output for {self.step_timeout_s:.0f} s at step "
                                           f"{self._step}; giving up") from None

    def _check_alive(self) -> None:
        runtime = getattr(self._net["anchor"], "runtime", None)
        infra = getattr(runtime, "_messaging_infrastructure", None)
        for a in list(getattr(infra, "actors", []) or []):
            if not a.is_alive():
                raise LavaSessionError(f"a Lava process model died ({a.name}, pid {a.pid}, exit code "
                                       f"{a.exitcode}) at step {self._step}")
        for p in getattr(runtime, "service_to_runtime", []) or []:
            if p.probe():  # the runtime services answer only at the end of a run, or on an error
                raise LavaSessionError(f"a Lava process model failed at step {self._step} (the "
                                       "runtime reported an error; see Lava's log)")

    def _drain(self, net: dict[str, Any]) -> None:
        """Feed zeros for the pending steps of the current RunSteps and discard the outputs, then
        wait: the runtime is paused and can be stopped or reset."""
        for _ in range(self._pending):
            net["inj"].send(net["zeros_x"])
            net["th_inj"].send(net["zeros_th"])
            for ext in net["exts"]:
                self._receive(ext)
        self._pending = 0
        if self._running:
            self._wait(net)

    def _finish_sequence(self) -> None:
        """Before a reset: complete (with zeros) and wait for the current RunSteps."""
        try:
            self._drain(self._net)
        except BaseException as exc:
            self.close(force=not isinstance(exc, Exception) or isinstance(exc, LavaSessionError))
            raise

    def _install_sigterm(self) -> None:
        """SIGTERM -> KeyboardInterrupt in this process while a runtime lives (so ``finally`` and
        ``close`` run); Lava's forked process models keep the default action (exit)."""
        if threading.current_thread() is threading.main_thread() and self._old_term is None:
            self._old_term = signal.signal(signal.SIGTERM,
                                           functools.partial(on_sigterm, os.getpid()))

    def _restore_sigterm(self) -> None:
        if self._old_term is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._old_term)
        self._old_term = None


def on_sigterm(owner: int, signum: int, frame: Any) -> None:
    """SIGTERM handler: ``KeyboardInterrupt`` in the process ``owner`` that installed it (so that
    ``finally`` blocks stop runtimes and remove partial files), the default action (exit) in the
    process models Lava forked from it. Install with ``functools.partial(on_sigterm, os.getpid())``.
    (The same rule as ``converters/nir_lava.py``; sim/ sits below converters/ and cannot import it.)"""
    if os.getpid() != owner:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise KeyboardInterrupt(f"signal {signum}")


def _as_int(t: Tensor | np.ndarray) -> np.ndarray:
    """Checked payloads / thetas (``plan.check_*`` ran first) as int32 numpy."""
    a = t.detach().cpu().numpy() if isinstance(t, Tensor) else np.asarray(t)
    return np.rint(a).astype(np.int32) if a.dtype.kind == "f" else a.astype(np.int32)
