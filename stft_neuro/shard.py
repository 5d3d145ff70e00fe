"""Sharded runs on Ray (the optional extra ``stft-neuro[ray]``): one task per shard, merged in order.

``simulate --ray [ADDRESS]`` and ``bench/bench_quality.py run --ray [ADDRESS]`` hand their work to
:func:`run_shards`; this is the only module that imports Ray (lazily), and it writes no scheduler of
its own: Ray places the tasks, retries them and reports their failures.

- **Where.** ``--ray`` alone (``address="local"``) starts a private local Ray with one worker per
  core (``workers`` cores when given: ``--ray-workers N``) and shuts it down at the end; ``--ray
  ADDRESS`` connects to a running cluster (``auto``: the one ``ray start --head`` started on this
  machine; ``HOST:6379`` or ``ray://HOST:10001``: another) and only disconnects. A process that
  already called ``ray.init`` keeps its connection (the API and the tests use that).
- **A shard** (:class:`Shard`) is a contiguous piece of the work (a range of samples, one
  (variant, seed) pair) with its own ``seed``: the worker seeds ``random``, numpy and torch with it
  before the task runs, and runs torch on the task's ``num_cpus`` threads (Ray sets
  ``OMP_NUM_THREADS`` likewise).
- **Retries.** A task is retried up to ``max_retries`` times (Ray's ``max_retries`` with
  ``retry_exceptions=True``): after its worker died (killed, out of memory, node lost) and after an
  exception alike. A shard that still fails raises :class:`ShardFailedError`, one line naming the
  shard, its range and the cause; the tasks still running are cancelled (``KeyboardInterrupt``
  inside them, so that a Lava runtime in a worker stops through its ``finally``) and waited for.
  Nothing is silently dropped: the caller gets every shard's result or this error.
- **Order.** Results are returned in shard order, whatever order they finish in;
  ``on_result(shard, result)`` is called as each one arrives (the sweep records it at once).

Ray's own start-up messages go to its logs (``log_to_driver=False``, ``logging_level=WARNING``):
the command's output stays its own, and an error stays one line.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from stft_neuro.errors import UserError

#: ``--ray`` without an address: a private local Ray with one worker per core.
LOCAL = "local"
#: Default retries of a failed task (so a shard runs at most 3 times).
MAX_RETRIES = 2
#: Seconds to wait for cancelled tasks to stop (and shut their Lava runtimes down) after a failure.
CANCEL_WAIT_S = 60.0


class RayUnavailableError(UserError):
    """``--ray`` was asked for but Ray is not installed (or does not import)."""


class ShardFailedError(UserError):
    """A shard failed on every attempt; the message names it, its range and the cause."""


@dataclass(frozen=True)
class Shard:
    """One task's piece of the work.

    ``index``: position in the merged result (0-based); ``seed``: the task's random seed;
    ``label``: what it covers, for messages (e.g. ``"samples 64-127"``); ``payload``: the task's own
    input (sent to the worker with it; keep it to this shard's data)."""

    index: int
    seed: int
    label: str
    payload: Any = field(default=None, compare=False, repr=False)


def require_ray() -> Any:
    """The ``ray`` module, or :class:`RayUnavailableError` in one line when it cannot be imported."""
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailableError(f"--ray needs Ray, which is not installed here ({exc}): install "
                                  "stft-neuro[ray] (pip install 'stft-neuro[ray]')") from None
    return ray


@contextmanager
def connect(address: str = LOCAL, workers: int | None = None) -> Iterator[dict[str, Any]]:
    """Connect to Ray for the duration of the ``with`` block; yields a description (address,
    ``workers`` = CPUs Ray can use, ``startup_s`` = seconds to start or connect).

    ``address``: :data:`LOCAL` starts a private local Ray with ``workers`` CPUs (default: this
    process's cores) and shuts it down afterwards; any other value is passed to ``ray.init`` as a
    cluster address, and the block only disconnects. ``workers`` applies to a local Ray only."""
    ray = require_ray()
    if workers is not None and int(workers) < 1:
        raise UserError(f"--ray-workers must be >= 1, got {workers}")
    t0 = time.perf_counter()
    owned = not ray.is_initialized()
    if owned:
        kwargs: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.WARNING,
                                      include_dashboard=False)
        if address == LOCAL:
            kwargs["num_cpus"] = int(workers) if workers is not None else _cores()
        elif workers is not None:
            raise UserError("--ray-workers sizes a local Ray; a cluster's size is its own "
                            f"(got --ray {address} --ray-workers {workers})")
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UserError(f"--ray {address}: cannot start or reach Ray: "
                            f"{_first_line(exc)}") from None
    try:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        yield {"address": address, "workers": cpus, "startup_s": time.perf_counter() - t0}
    finally:
        if owned:
            ray.shutdown()


def run_shards(fn: Callable[[Any, Shard], Any], shards: Sequence[Shard], *, shared: Any = None,
               num_cpus: float = 1, max_retries: int = MAX_RETRIES,
               on_result: Callable[[Shard, Any], None] | None = None) -> list[Any]:
    """Run ``fn(shared, shard)`` for every shard as a Ray task; returns the results in shard order.

    Needs a connection (:func:`connect`). ``fn`` must be importable by the workers (a module-level
    function of an installed module, or registered with ``ray.cloudpickle.register_pickle_by_value``);
    ``shared`` is put into Ray's object store once and handed to every task. ``num_cpus``: cores
    reserved per task (and torch threads in it). Raises :class:`ShardFailedError` when a shard fails
    after ``max_retries`` retries (the others are cancelled first)."""
    ray = require_ray()
    if not ray.is_initialized():
        raise RuntimeError("run_shards needs a Ray connection: use `with shard.connect(...)`")
    task = ray.remote(num_cpus=num_cpus, max_retries=int(max_retries), retry_exceptions=True)(_in_worker)
    shared_ref = ray.put(shared)
    pending = {task.options(name=f"shard {s.index}: {s.label}").remote(fn, shared_ref, s, num_cpus): s
               for s in shards}
    results: dict[int, Any] = {}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            shard = pending.pop(ref)
            try:
                value = ray.get(ref)
            except ray.exceptions.RayError as exc:
                raise ShardFailedError(
                    f"shard {shard.index + 1} of {len(shards)} ({shard.label}) failed after "
                    f"{max_retries} retr{'y' if max_retries == 1 else 'ies'}: {describe_failure(exc)}"
                ) from None
            results[shard.index] = value
            if on_result is not None:
                on_result(shard, value)
    except BaseException:
        _cancel(ray, list(pending))
        raise
    return [results[s.index] for s in shards]


def describe_failure(exc: BaseException) -> str:
    """One line for a failed Ray task: the task's own exception (``RayTaskError.cause``) as
    ``Type: first line``, or Ray's error (a worker that died, a cancelled task) likewise."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _in_worker(fn: Callable[[Any, Shard], Any], shared: Any, shard: Shard, num_cpus: float) -> Any:
    """The task body in a worker: seed everything with the shard's seed, size torch's thread pool
    to the task's cores, run ``fn``."""
    import random

    import numpy as np
    import torch

    _children_die_with_this_process()
    random.seed(shard.seed)
    np.random.seed(shard.seed % 2**32)
    torch.manual_seed(shard.seed)
    torch.set_num_threads(max(1, int(num_cpus)))
    return fn(shared, shard)


_PDEATHSIG_SET = False


def _children_die_with_this_process() -> None:
    """Make every process forked from now on in this worker (Lava's process models, its shared
    memory manager) receive SIGKILL when the worker dies (Linux ``PR_SET_PDEATHSIG``; elsewhere
    nothing). Why: a worker killed outright cannot stop its Lava runtime, and the orphaned children
    would keep the worker's sockets open, so Ray would see the worker die only minutes later (its
    keepalive timeout) and retry the shard only then. Registered once per worker process."""
    global _PDEATHSIG_SET
    if _PDEATHSIG_SET or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def in_child() -> None:
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        if os.getppid() != parent:  # the worker died between fork and prctl
            os._exit(1)

    os.register_at_fork(after_in_child=in_child)
    _PDEATHSIG_SET = True


def _cancel(ray: Any, refs: list[Any]) -> None:
    """Cancel the still-running tasks (``KeyboardInterrupt`` inside them: ``finally`` blocks, Lava
    shutdown included, run) and wait until they have stopped, at most :data:`CANCEL_WAIT_S`."""
    if not refs:
        return
    for ref in refs:
        with contextlib.suppress(Exception):  # already finished or gone: nothing to cancel
            ray.cancel(ref)
    with contextlib.suppress(Exception):  # the cluster went away: nothing left to wait for
        ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT_S)


def _cores() -> int:
    """Cores this process may use (its CPU affinity, which containers and taskset restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
