"""The project's one integration of Lava: loading it, and the life cycle of a Lava runtime.

Everything that runs Lava (the hybrid bridge ``sim/lava_session.py``, NIR graphs on Lava
``converters/nir_lava.py``) goes through this module. It does not import Lava at its top: the rest
of the project runs without Lava.

- **Loading**: :func:`load` imports Lava once and returns :mod:`stft_neuro.sim.lava_procs` (Lava's
  classes the project uses and the project's own process models), or raises
  :class:`LavaUnavailableError` with the reason in one line. :func:`lava_available` asks.
- **Running**: :class:`LavaRuntime` drives one compiled network through its host ports
  (``Injector`` in, ``Extractor`` out), one send per injector and one receive per extractor each
  step, in non-blocking ``RunSteps`` chunks; it counts what was sent and received per port, so it
  always knows how many steps are still owed.
- **Stopping, the same on every path**: :meth:`LavaRuntime.stop` (also ``with LavaRuntime(...)``)

  * after normal completion or an ordinary exception raised between Lava calls: the owed steps are
    fed zeros and their outputs discarded, then the runtime is stopped normally (no process model
    is left blocked on an empty Injector or a full Extractor, so stopping cannot hang);
  * after ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM under :func:`sigterm_as_interrupt`), a
    :class:`LavaRuntimeError` (a process model died or failed, a step timed out), or a failure
    while draining: the process models and Lava's managers are terminated without talking to them
    and Lava's shared memory is released (:func:`force_stop`).

  Either way no process model, manager or shared-memory segment is left behind (tested after
  SIGINT to the process group and SIGTERM).
- **Signals**: :func:`sigterm_as_interrupt` turns SIGTERM into ``KeyboardInterrupt`` in the process
  that entered it (so ``finally`` blocks stop runtimes and remove partial files) and leaves the
  default action (exit) to the process models Lava forks from it. Nested uses share one handler;
  the previous handler comes back when the outermost one exits. Every runtime is started inside it.
- **Waiting**: every receive waits in slices of ``POLL_S`` and checks between them that every
  process model is alive and that the runtime has reported no error; a dead or failed model raises
  :class:`LavaRuntimeError` instead of hanging.
- **Timing**: :class:`LavaTiming`, wall-clock seconds by phase.
"""
from __future__ import annotations

import contextlib
import functools
import os
import queue
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Iterator, Sequence

import numpy as np

#: Seconds one receive waits before it looks for a dead or failed process model again.
POLL_S = 0.25


class LavaUnavailableError(ImportError):
    """Lava (lava-nc 0.10, mended for Python 3.11) is not importable; the message says why."""


class LavaRuntimeError(RuntimeError):
    """A Lava runtime failed: a process model died or raised, or a step timed out."""


def load() -> ModuleType:
    """Import Lava and the project's process models once; returns :mod:`stft_neuro.sim.lava_procs`.

    Lava calls ``mp.set_start_method('fork')`` (no ``force``) at import, which raises "context has
    already been set" once anything has fixed the start method (tqdm's lock does, and so does
    NeuroBench): where it is already 'fork', it is unset first so that Lava sets the same method
    again. Raises :class:`LavaUnavailableError` (one line, with the cause) when Lava does not import.
    """
    import sys
    mod = sys.modules.get("stft_neuro.sim.lava_procs")
    if mod is not None:
        return mod
    import importlib
    import multiprocessing as mp

    if mp.get_start_method(allow_none=True) == "fork":
        mp.set_start_method(None, force=True)
    try:
        return importlib.import_module("stft_neuro.sim.lava_procs")
    except Exception as exc:  # ImportError, or the Python 3.11 dataclass error of an unmended Lava
        raise LavaUnavailableError(
            "Lava needs lava-nc 0.10.0 mended for Python 3.11 (see README, tools/mend_lava.py); "
            f"importing it failed: {exc!r}") from exc


def lava_available() -> bool:
    """Whether :func:`load` succeeds."""
    try:
        load()
    except LavaUnavailableError:
        return False
    return True


@dataclass
class LavaTiming:
    """Wall-clock seconds spent with Lava, summed over a runner's or session's life.

    ``build_s``: process creation, compilation and runtime start; ``reset_s``: finishing a partly
    run ``RunSteps`` before a new sequence; ``steps_s``: the per-step send/receive calls, host side
    included (checks, conversion); ``wait_s``: ``wait`` at the end of each ``RunSteps``;
    ``teardown_s``: draining and stopping. ``builds``, ``resets``: how many; ``steps``: Lava steps;
    ``sample_steps``: real (unpadded) samples x steps."""

    build_s: float = 0.0
    reset_s: float = 0.0
    steps_s: float = 0.0
    wait_s: float = 0.0
    teardown_s: float = 0.0
    builds: int = 0
    resets: int = 0
    steps: int = 0
    sample_steps: int = 0


# ------------------------------------------------------------------------------------ signals

def on_sigterm(owner: int, signum: int, frame: Any) -> None:
    """SIGTERM handler: ``KeyboardInterrupt`` in the process ``owner`` that installed it, the
    default action (exit) in the process models Lava forked from it. Installed by
    :func:`sigterm_as_interrupt`."""
    if os.getpid() != owner:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise KeyboardInterrupt(f"signal {signum}")


_sigterm_lock = threading.Lock()
_sigterm_depth = 0
_sigterm_previous: Any = None


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside: SIGTERM raises ``KeyboardInterrupt`` in this process (main thread only; a
    no-op in other threads, where Python cannot install handlers). Re-entrant: nested uses (a
    command that runs a session) share the one handler, and the handler that was there before the
    outermost entry is restored when it exits."""
    global _sigterm_depth, _sigterm_previous
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with _sigterm_lock:
        if _sigterm_depth == 0:
            _sigterm_previous = signal.signal(signal.SIGTERM,
                                              functools.partial(on_sigterm, os.getpid()))
        _sigterm_depth += 1
    try:
        yield
    finally:
        with _sigterm_lock:
            _sigterm_depth -= 1
            if _sigterm_depth == 0:
                signal.signal(signal.SIGTERM, _sigterm_previous)
                _sigterm_previous = None


# ------------------------------------------------------------------------------------ runtime

class LavaRuntime:
    """One compiled Lava network and its runtime, driven step by step through host ports.

    Args:
        anchor: any process of the network (Lava compiles and runs everything connected to it).
        run_cfg: the run configuration (``Loihi2SimCfg`` with its tag and model map).
        injectors: the ``Injector`` processes the host sends to, one array each per step.
        extractors: the ``Extractor`` processes the host receives from, one array each per step.
        step_timeout_s: the longest one receive may wait before :class:`LavaRuntimeError`.
        timing: where to add the wall-clock seconds (a fresh :class:`LavaTiming` if None).

    :meth:`start` compiles the network and starts its process models (inside
    :func:`sigterm_as_interrupt`, entered until :meth:`stop`); :meth:`run_steps` starts a
    non-blocking ``RunSteps``; :meth:`step` sends one step and receives its outputs;
    :meth:`finish` feeds zeros for the owed steps and waits (the runtime is then paused, its Vars
    can be read with :meth:`get`); :meth:`stop` ends it (module doc: the same on every path).
    """

    def __init__(self, anchor: Any, run_cfg: Any, injectors: Sequence[Any],
                 extractors: Sequence[Any], *, step_timeout_s: float = 120.0,
                 timing: LavaTiming | None = None) -> None:
        self.anchor = anchor
        self.run_cfg = run_cfg
        self.injectors = list(injectors)
        self.extractors = list(extractors)
        self.step_timeout_s = float(step_timeout_s)
        self.timing = timing if timing is not None else LavaTiming()
        self._zeros = [np.zeros(i.out_port.shape, dtype=np.int32) for i in self.injectors]
        self._recv_ports: list[Any] = []          # the extractors' host pipes (after start)
        self._chunk = 0                           # steps of the current RunSteps
        self._sent = [0] * len(self.injectors)     # ... sent per injector
        self._received = [0] * len(self.extractors)
        self._running = False                     # a RunSteps started and not yet waited for
        self._signals: contextlib.ExitStack | None = None
        self._stopped = False
        self.steps_done = 0
        #: after :meth:`start`: the process models' PIDs and the names of the shared-memory
        #: segments of the channels (``/dev/shm/<name>``), to check that nothing outlives the runtime
        self.pids: list[int] = []
        self.segments: list[str] = []

    # ------------------------------------------------------------------ life cycle
    @property
    def started(self) -> bool:
        return self._signals is not None

    @property
    def pending(self) -> int:
        """Steps of the current ``RunSteps`` not yet sent (by the slowest injector)."""
        return self._chunk - min(self._sent, default=self._chunk)

    def start(self) -> "LavaRuntime":
        """Compile the network and start its process models (no step is run)."""
        t0 = time.perf_counter()
        self._signals = contextlib.ExitStack()
        self._signals.enter_context(sigterm_as_interrupt())
        try:
            with warnings.catch_warnings():
                # Lava's compiler scans the folder of every process class for models and warns
                # about each file it cannot import by its bare name; the models are given in the
                # run configuration's map.
                warnings.filterwarnings("ignore", message="Cannot import module", category=UserWarning)
                self.anchor.create_runtime(run_cfg=self.run_cfg)
            self._recv_ports = [e.out_port.external_pipe_csp_recv_port for e in self.extractors]
            infra = self.anchor.runtime._messaging_infrastructure
            self.pids = [int(a.pid) for a in infra.actors]
            self.segments = [h.name for h in infra.smm._shared_memory_handles]
        except BaseException:
            self.stop(force=True)
            raise
        self.timing.build_s += time.perf_counter() - t0
        self.timing.builds += 1
        return self

    def __enter__(self) -> "LavaRuntime":
        return self.start() if not self.started else self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.stop(force=exc is not None and must_force(exc))

    def run_steps(self, steps: int) -> None:
        """Start a non-blocking ``RunSteps(steps)`` after the previous one has finished."""
        if self.pending:
            raise LavaRuntimeError(f"run_steps: {self.pending} steps of the previous RunSteps are "
                                   "still owed (finish it first)")
        if self._running:
            self._wait()
        self.anchor.run(condition=load().RunSteps(num_steps=int(steps), blocking=False),
                        run_cfg=self.run_cfg)
        self._running = True
        self._chunk = int(steps)
        self._sent = [0] * len(self.injectors)
        self._received = [0] * len(self.extractors)

    def step(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Send ``inputs[i]`` to injector ``i`` (integer arrays of its shape), then receive every
        extractor's output of that step. Starts no ``RunSteps``: call :meth:`run_steps` first."""
        if self.pending == 0:
            raise LavaRuntimeError("step: no RunSteps is running (call run_steps first)")
        for i, (inj, data) in enumerate(zip(self.injectors, inputs)):
            inj.send(data)
            self._sent[i] += 1
        out = [self._receive(j) for j in range(len(self.extractors))]
        self.steps_done += 1
        return out

    def finish(self) -> None:
        """Feed zeros for the owed steps of the current ``RunSteps``, discard their outputs and
        wait: the runtime is paused (its Vars can be read, a new ``RunSteps`` started)."""
        # step by step: an injector fed far ahead of the others would fill its channel (Lava's
        # buffers hold 50 steps) while the network waits for the others, and block for ever
        while min(self._sent, default=self._chunk) < self._chunk or \
                min(self._received, default=self._chunk) < self._chunk:
            for i, inj in enumerate(self.injectors):
                if self._sent[i] < self._chunk:
                    inj.send(self._zeros[i])
                    self._sent[i] += 1
            fed = min(self._sent, default=self._chunk)   # steps whose every input was sent
            for j in range(len(self.extractors)):
                while self._received[j] < fed:
                    self._receive(j)
        if self._running:
            self._wait()

    def get(self, var: Any) -> np.ndarray:
        """A Var's value (int64) while the runtime is paused (after :meth:`finish`)."""
        if self._running or self.pending:
            raise LavaRuntimeError("get: the runtime is running; finish the RunSteps first")
        return np.asarray(var.get(), dtype=np.int64)

    def stop(self, force: bool = False) -> None:
        """Stop the runtime: drain and stop normally, or (``force``, or when draining fails)
        terminate it without talking to it. Idempotent; no process or shared memory is left."""
        t0 = time.perf_counter()
        runtime = getattr(self.anchor, "runtime", None)
        try:
            if runtime is not None and not self._stopped:
                if force or not getattr(runtime, "_is_started", False):
                    force_stop(runtime)  # (never run: nothing to drain, no one to talk to)
                else:
                    try:
                        self.finish()
                        self.anchor.stop()
                    except BaseException:
                        force_stop(runtime)
                        raise
        finally:
            if runtime is not None:
                self._stopped = True
            self._running = False
            self._chunk = 0
            self._sent = [0] * len(self.injectors)
            self._received = [0] * len(self.extractors)
            signals, self._signals = self._signals, None
            if signals is not None:
                signals.close()
            self.timing.teardown_s += time.perf_counter() - t0

    # ------------------------------------------------------------------ internals
    def _wait(self) -> None:
        t0 = time.perf_counter()
        self.anchor.wait()
        self._running = False
        self.timing.wait_s += time.perf_counter() - t0

    def _receive(self, j: int) -> np.ndarray:
        """Extractor ``j``'s next output, waiting in slices of ``POLL_S`` and checking between
        them that no process model died or reported an error (else :class:`LavaRuntimeError`)."""
        port = self._recv_ports[j]
        deadline = time.monotonic() + self.step_timeout_s
        while True:
            try:
                port._queue.get(timeout=POLL_S, peek=True)
                break
            except queue.Empty:
                self._check_alive()
                if time.monotonic() > deadline:
                    raise LavaRuntimeError(f"Lava: no output for {self.step_timeout_s:.0f} s at "
                                           f"step {self.steps_done}; giving up") from None
        data = self.extractors[j].receive()
        self._received[j] += 1
        return data

    def _check_alive(self) -> None:
        runtime = getattr(self.anchor, "runtime", None)
        infra = getattr(runtime, "_messaging_infrastructure", None)
        for a in list(getattr(infra, "actors", []) or []):
            if not a.is_alive():
                raise LavaRuntimeError(f"a Lava process model died ({a.name}, pid {a.pid}, exit "
                                       f"code {a.exitcode}) at step {self.steps_done}")
        for p in getattr(runtime, "service_to_runtime", []) or []:
            if p.probe():  # the runtime services answer only at the end of a run, or on an error
                raise LavaRuntimeError(f"a Lava process model failed at step {self.steps_done} "
                                       "(the runtime reported an error; see Lava's log)")


def must_force(exc: BaseException) -> bool:
    """Whether a runtime interrupted by ``exc`` must be terminated rather than drained: after an
    interruption (anything not an ``Exception``: Ctrl-C, SIGTERM) that may have hit inside a send
    or receive, or a :class:`LavaRuntimeError` (a process model is gone), draining could block."""
    return not isinstance(exc, Exception) or isinstance(exc, LavaRuntimeError)


def force_stop(runtime: Any) -> None:
    """Terminate a Lava runtime's process models and managers without talking to them, and release
    Lava's shared memory (after an interruption or a dead/failed model, when draining could block)."""
    import multiprocessing as mp

    infra = getattr(runtime, "_messaging_infrastructure", None)
    actors = list(getattr(infra, "actors", []) or [])
    for a in actors:
        if a.is_alive():
            a.terminate()
    for a in actors:
        mp.Process.join(a, 5.0)
        if a.is_alive():
            a.kill()
            mp.Process.join(a, 5.0)
    smm = getattr(infra, "smm", None) if infra is not None else None
    # the segments' names, taken before Lava's shutdown forgets them: if its manager process was
    # killed too (SIGTERM to the whole process group), nobody else unlinks them before exit
    segments = [h._name for h in getattr(smm, "_shared_memory_handles", None) or []]
    try:
        if smm is not None:
            smm.shutdown()
    finally:
        _unlink_segments(segments)
        wd = getattr(runtime, "_watchdog_manager", None)
        for proc_name in ("_lm", "_sm"):
            p = getattr(wd, proc_name, None)
            if p is not None and p.is_alive():
                p.terminate()
                p.join(5.0)
        mgr = getattr(wd, "_mp_manager", None)
        if mgr is not None:
            mgr.shutdown()
            wd._mp_manager = None
        runtime._is_running = runtime._is_started = False  # keep __del__ from calling stop()


def _unlink_segments(names: Sequence[str]) -> None:
    """Unlink the POSIX shared-memory segments ``names`` ("/psm_..."), where they still exist, and
    tell Python's resource tracker so that it does not report them as leaked at exit."""
    if not names:
        return
    import _posixshmem
    from multiprocessing import resource_tracker
    for name in names:
        try:
            _posixshmem.shm_unlink(name)
        except FileNotFoundError:
            continue
        try:
            resource_tracker.unregister(name, "shared_memory")
        except Exception:  # the tracker is gone (interpreter exit): nothing left to tell
            pass
