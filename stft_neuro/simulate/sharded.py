"""``simulate --ray``: the batches of a run cut into shards of whole batches, each run as a Ray task
with its own host and backend (``stft_neuro.shard``; the optional extra ``stft-neuro[ray]``).

The driver resolves and plans once; every shard gets the model, the plan and the ONNX host graphs
as bytes through Ray's object store (:class:`ShardJob`) and its features in its payload, so a
cluster's workers need none of the driver's files. A failed shard is retried; one that still fails
ends the run with one line naming its sample range. The per-batch records come back in sample
order and are merged as the single-process run's are (identical records).
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stft_neuro.simulate.resolve import SAMPLE_SEED
from stft_neuro.simulate.run import features, open_backend, require_lava, run_batches


@dataclass
class ShardJob:
    """What every shard needs, built once by the driver and put into Ray's object store: the model
    (host; calibrated and in deploy mode), the plan, the backend's name, the Lava capacity, whether
    thresholds are dynamic, and the ONNX host graphs as bytes (``{file name: bytes}``, None for the
    torch host), so that no worker needs the driver's files."""

    model: Any
    plan: Any
    backend: str
    capacity: int
    dynamic: bool
    onnx_files: dict[str, bytes] | None
    exit_setup: Any = None

    @classmethod
    def of(cls, setup) -> "ShardJob":
        return cls(model=setup.model, plan=setup.plan, backend=setup.backend, capacity=setup.capacity,
                   dynamic=setup.dynamic, onnx_files=_onnx_files(setup.onnx_host), exit_setup=setup.exit_setup)


def _onnx_files(onnx_host) -> dict[str, bytes] | None:
    if onnx_host is None:
        return None
    names = set(onnx_host.description["roles"].values())
    return {name: (onnx_host.folder / name).read_bytes() for name in sorted(names)}


def shard_ranges(total: int, batch: int, workers: int) -> list[tuple[int, int]]:
    """Contiguous sample ranges ``[start, stop)`` made of whole batches (so every batch is the
    single-process run's batch), as even as batches allow: ``4 x workers`` shards when there are
    that many batches (a retry repeats at most a quarter of a worker's share; a slow worker does
    not hold up the rest), else one per batch."""
    n_batches = -(-total // batch)
    k = max(1, min(n_batches, 4 * max(1, workers)))
    bounds = [round(i * n_batches / k) for i in range(k + 1)]
    return [(b0 * batch, min(total, b1 * batch)) for b0, b1 in zip(bounds, bounds[1:])]


def run_on_ray(setup, progress=None):
    """Shard the samples of ``setup`` (:func:`shard_ranges`), run each shard as a Ray task
    (:func:`shard_task`, retried on failure; a shard that still fails is one
    :class:`~stft_neuro.shard.ShardFailedError` naming its range) -> (the per-batch records in
    sample order, the summed work of the shards, what results.json's ``ray`` says)."""
    from stft_neuro import shard as shard_mod

    job, picks, batch = ShardJob.of(setup), setup.picks, setup.batch
    with shard_mod.connect(setup.ray_address, setup.ray_workers) as ray_desc:
        ranges = shard_ranges(len(picks), batch, ray_desc["workers"])
        shards = []
        for i, (start, stop) in enumerate(ranges):
            a, v, n = features(setup.bench, picks[start:stop])
            shards.append(shard_mod.Shard(
                index=i, seed=SAMPLE_SEED + i, label=f"samples {start}-{stop - 1}",
                payload={"batch": batch, "audio": a.numpy(), "visual": v.numpy(), "lengths": n.numpy()}))
        done = (lambda s, r: progress(ranges[s.index][1] - ranges[s.index][0], len(picks))) \
            if progress is not None else None
        outs = shard_mod.run_shards(shard_task, shards, shared=job, on_result=done)
    parts = [p for o in outs for p in o["parts"]]
    lava = None
    if job.backend == "lava":
        lava = {k: sum(o["lava"][k] for o in outs) for k in outs[0]["lava"]}
    work = {"backend_s": sum(o["backend_s"] for o in outs), "steps": sum(o["steps"] for o in outs),
            "sample_steps": sum(o["sample_steps"] for o in outs),
            "shard_s": sum(o["seconds"] for o in outs), "lava": lava}
    info = {"address": setup.ray_address, "workers": ray_desc["workers"], "startup_s": ray_desc["startup_s"],
            "shards": [{"samples": list(r), "seconds": o["seconds"], "node": o["node"], "pid": o["pid"]}
                       for r, o in zip(ranges, outs)]}
    return parts, work, info


def shard_task(job: ShardJob, shard) -> dict[str, Any]:
    """One shard, in a Ray worker: its batches through the host and a backend of its own (a Lava
    session is shut down on every path, :func:`~stft_neuro.simulate.run.open_backend`). Returns the
    per-batch records and the shard's timings (``seconds`` wall, ``backend_s`` inside the backend,
    ``steps``, ``lava``: the session's :class:`~stft_neuro.sim.lava_session.SessionTiming`), node
    and pid."""
    import platform

    t0 = time.perf_counter()
    if job.backend == "lava":
        require_lava()  # before anything fixes multiprocessing's start method (Lava sets it)
    p = shard.payload
    a, v, n = (torch.as_tensor(p[k]) for k in ("audio", "visual", "lengths"))
    batches = ((a[i:i + p["batch"]], v[i:i + p["batch"]], n[i:i + p["batch"]])
               for i in range(0, int(n.shape[0]), p["batch"]))
    with tempfile.TemporaryDirectory(prefix="stft-neuro-shard-") as folder:
        onnx_host = None
        if job.onnx_files is not None:
            from stft_neuro.export.onnx_host import OnnxHost
            for name, data in job.onnx_files.items():
                (Path(folder) / name).write_bytes(data)
            onnx_host = OnnxHost(folder)
        with open_backend(job.backend, job.plan, job.model, job.capacity) as (backend, session):
            parts = run_batches(job.model, onnx_host, backend, batches, job.dynamic, exit_setup=job.exit_setup)
            lava = dict(vars(session.timing)) if session is not None else None
    return {"parts": parts, "seconds": time.perf_counter() - t0, "backend_s": backend.seconds,
            "steps": backend.steps, "sample_steps": backend.sample_steps, "lava": lava, "node": platform.node(), "pid": os.getpid()}
