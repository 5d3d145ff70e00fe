"""The batch loop of ``simulate``: the chosen backend opened (and a Lava session always closed),
every batch through the host's closed loop (``stft_neuro.closed_loop``), the records kept.

A host is the checkpoint's torch ``STFT`` (``model(a, v, n, backend=...)``) or the bundle's ONNX
graphs (``OnnxHost.run``); both drive the one closed loop and return its
:class:`~stft_neuro.closed_loop.SpikeRecord` (spikes received, thetas and payloads sent), which
is what is recorded: nothing is computed twice.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch

from stft_neuro.simulate.resolve import SimulateError


@dataclass
class Timed:
    """A step-contract backend wrapped so that the time spent inside it is summed (host time is the
    rest). Forwards ``sizes``/``plan`` and every call unchanged."""

    inner: Any
    seconds: float = 0.0
    steps: int = 0
    sample_steps: int = 0

    @property
    def sizes(self):
        return self.inner.sizes

    @property
    def plan(self):
        return self.inner.plan

    def reset(self, batch):
        t0 = time.perf_counter()
        try:
            return self.inner.reset(batch)
        finally:
            self.seconds += time.perf_counter() - t0

    def step(self, x_t, theta_t, state):
        t0 = time.perf_counter()
        try:
            return self.inner.step(x_t, theta_t, state)
        finally:
            self.seconds += time.perf_counter() - t0
            self.steps += 1
            self.sample_steps += int(x_t.shape[0])

    def select_rows(self, state, keep):
        """Early exit: the inner backend's state of the samples ``keep`` (``closed_loop.select_rows``)."""
        from stft_neuro.closed_loop import select_rows
        t0 = time.perf_counter()
        try:
            return select_rows(self.inner, state, keep)
        finally:
            self.seconds += time.perf_counter() - t0

    def run(self, x, theta=None, state=None):
        t0 = time.perf_counter()
        try:
            return self.inner.run(x, theta, state)
        finally:
            self.seconds += time.perf_counter() - t0
            self.steps += int(x.shape[0])
            self.sample_steps += int(x.shape[0]) * int(x.shape[1])


@contextlib.contextmanager
def open_backend(name: str, plan, model, capacity: int, netx_file=None):
    """The step-contract backend ``name`` wrapped in :class:`Timed`, and the
    :class:`~stft_neuro.sim.lava_session.LavaSession` behind it (None for the others). A Lava
    session is closed on every path: normally after the block, forcibly (no draining) after an
    interruption or a failed process model."""
    session = None
    if name == "reference":
        from stft_neuro.sim.reference import ReferenceSimulator
        inner = ReferenceSimulator(plan)
    elif name == "lava" and netx_file is not None:
        from stft_neuro.converters.netx_out import NetxBackend
        require_lava()
        inner = NetxBackend(netx_file, plan)
    elif name == "lava":
        from stft_neuro.sim import lava_runtime
        from stft_neuro.sim.lava_session import LavaSession
        require_lava()
        inner = session = LavaSession(plan, capacity)
    else:
        inner = model.spiking.chip
    try:
        yield Timed(inner), session
    except BaseException as exc:
        if session is not None:
            session.close(force=lava_runtime.must_force(exc))
        raise
    if session is not None:
        session.close()


def require_lava() -> None:
    """Import Lava (one-line :class:`SimulateError` when it cannot be)."""
    from stft_neuro.sim.lava_runtime import LavaUnavailableError, load
    try:
        load()
    except LavaUnavailableError as exc:
        raise SimulateError(f"simulate --backend lava: {exc}") from None


def is_lava_failure(exc: BaseException) -> bool:
    """A failure of Lava itself (a process model died or reported an error)."""
    from stft_neuro.sim.lava_runtime import LavaRuntimeError
    return isinstance(exc, LavaRuntimeError)


def features(bench, chunk) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, S, Da), (B, S, Dv), (B,) of the picked samples ``[(split, index), ...]``."""
    a = np.stack([bench.splits[s].audio[i] for s, i in chunk])
    v = np.stack([bench.splits[s].visual[i] for s, i in chunk])
    n = np.array([bench.splits[s].lengths[i] for s, i in chunk], dtype=np.int64)
    return torch.as_tensor(a), torch.as_tensor(v), torch.as_tensor(n)


def batches_of(bench, picks, batch):
    """The features of ``picks`` in batches of ``batch`` (the last one smaller), in order."""
    for i in range(0, len(picks), batch):
        yield features(bench, picks[i:i + batch])


def run_batches(model, onnx_host, backend, batches: Iterable, dynamic: bool, progress=None,
                total=None, exit_setup=None) -> list[dict]:
    """Every batch of ``batches`` (``(audio (B, S, Da), visual (B, S, Dv), lengths (B,))``) through
    the host (``onnx_host`` when given, else ``model``) and ``backend``; returns one record dict per
    batch (numpy, sample-major): ``spikes`` [(B, T, n_l) bool], ``theta`` (B, T, L) int32 or None,
    ``payloads`` (B, T, n_in) int16, ``joint`` (B, E) float32, ``rounding`` (the ONNX host with a
    torch model to compare with: :func:`count_rounding`, else None), ``steps`` (B,) int64 steps
    each sample ran with early exit (``exit_setup``, an
    :class:`~stft_neuro.simulate.early_exit.ExitSetup`), else None."""
    parts = []
    for a, v, n in batches:
        rounding = None
        with torch.no_grad():
            if onnx_host is not None:
                judge = None if exit_setup is None else exit_setup.judge(_onnx_joint_of(onnx_host, a, v, n),
                                                                         int(n.shape[0]))
                res = onnx_host.run(a.numpy(), v.numpy(), n.numpy(), backend, stop=judge)
                if model is not None:  # a bundle run alone has no torch host to compare with
                    rounding = count_rounding(model, backend.plan, a, v, n, res["record"])
            elif exit_setup is not None:
                res = _torch_early_exit(model, a, v, n, backend, exit_setup)
            else:
                res = model(a, v, n, backend=backend)
            record = res["record"]
            joint = np.asarray(res["joint"].float().numpy() if isinstance(res["joint"], torch.Tensor)
                               else res["joint"])
        parts.append({
            "spikes": [s.detach().cpu().float().numpy().transpose(1, 0, 2) > 0.5 for s in record.spikes],
            "theta": (np.rint(record.theta.detach().cpu().double().numpy()).astype(np.int32).transpose(1, 0, 2)
                      if dynamic else None),
            "payloads": np.rint(record.sent.detach().cpu().double().numpy()).astype(np.int16).transpose(1, 0, 2),
            "joint": joint, "rounding": rounding,
            "steps": None if record.steps is None else record.steps.numpy().astype(np.int64)})
        if progress is not None:
            progress(int(n.shape[0]), total)
    return parts


def _torch_early_exit(model, a, v, n, backend, exit_setup) -> dict:
    """``STFT.forward`` in eval mode (the host part, the branch's encode -> closed loop ->
    ``STFT.readout``), with the early-exit :class:`~stft_neuro.simulate.early_exit.Judge` as the
    loop's stop rule: the same operations on the same batch, so the joint of a run whose samples
    all run T steps is ``forward``'s."""
    from stft_neuro.closed_loop import closed_loop

    br = model.spiking
    host = model.host_part(a, v, n)                                               # r (B, dim), ...
    x, g = br.encode(a, v, n)

    def joint_of(out_spikes, rows):
        return model.readout(host.rows(rows), out_spikes).float().numpy()

    record = closed_loop(br, backend, x, g, stop=exit_setup.judge(joint_of, int(n.shape[0])))
    return {"record": record, "joint": model.readout(host, record.spikes[-1])}


def _onnx_joint_of(onnx_host, a, v, n):
    """The ONNX host's joint embedding of the samples ``rows`` from their last layer's spikes."""
    an, vn, nn = a.numpy(), v.numpy(), n.numpy()

    def joint_of(out_spikes, rows):
        r = rows.numpy()
        return onnx_host.readout(out_spikes.detach().cpu().float().numpy(), an[r], vn[r], nn[r])
    return joint_of


def count_rounding(model, plan, a, v, n, record) -> dict[str, int]:
    """Where the ONNX host sent other payloads or thetas than the torch host would have, given the
    same features and the same received spikes: the torch host (``model.spiking``) is driven
    through the one closed loop by a :class:`~stft_neuro.closed_loop.Replay` of the ONNX loop's
    spikes. -> ``payload_mismatches``, ``payloads``, ``theta_mismatches``, ``thetas`` (counts)."""
    from stft_neuro.closed_loop import Replay, StopAfter, closed_loop

    cur, g = model.spiking.encode(a, v, n)
    spikes = [s.detach().cpu().float() for s in record.spikes]
    stop = None if record.steps is None else StopAfter(record.steps)   # early exit: the same schedule
    torch_rec = closed_loop(model.spiking, Replay(spikes, plan), cur, g, stop=stop)
    x_onnx, x_torch = record.sent.numpy(), torch_rec.sent.numpy()
    counts = {"payload_mismatches": int((x_onnx != x_torch).sum()), "payloads": int(x_torch.size),
              "theta_mismatches": 0, "thetas": 0}
    if record.theta is not None:
        th_onnx, th_torch = record.theta.numpy(), torch_rec.theta.numpy()
        counts["theta_mismatches"] = int((th_onnx != th_torch).sum())
        counts["thetas"] = int(th_torch.size)
    return counts


def run_here(setup, progress=None) -> tuple[list[dict], dict]:
    """Every batch of ``setup`` (a :class:`~stft_neuro.simulate.resolve.Setup`) in this process ->
    (the per-batch records of :func:`run_batches`, the work: ``backend_s`` seconds inside the
    backend, ``steps`` backend steps, ``lava`` the session's timing or None)."""
    with open_backend(setup.backend, setup.plan, setup.model, setup.capacity, setup.netx_file) as (backend, session):
        parts = run_batches(setup.model, setup.onnx_host, backend, batches_of(setup.bench, setup.picks, setup.batch),
                            setup.dynamic, progress, len(setup.picks), setup.exit_setup)
        lava = dict(vars(session.timing)) if session is not None else None
    return parts, {"backend_s": backend.seconds, "steps": backend.steps, "sample_steps": backend.sample_steps,
                   "lava": lava}
