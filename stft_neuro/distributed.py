"""Data-parallel training over ``torch.distributed``: the plumbing that ``train.py`` and ``qat.py`` use.

How a run is split (``stft-neuro train --nproc N``, or ``torchrun --nproc-per-node N -m
stft_neuro.cli train ...``):

* Every rank builds the same model from the same seed, draws the same permutation of the training
  split every epoch, and so cuts the same global batches of ``train.batch_size`` samples as one
  process would. Rank r takes the r-th contiguous ``batch_size / N`` of each (sorted) global batch
  (:meth:`DataParallel.shard`); ``batch_size`` must be divisible by N (:func:`check_batch`).
* ``DistributedDataParallel`` averages the ranks' gradients. Every loss term of ``stft_loss`` is a
  mean over the batch's samples (the triplet term divides by B x (training classes - 1), the MSEs by
  B x width), so the average of the ranks' means over equal shares is the mean over the global
  batch: the gradient of one process, up to float summation order. The last batch of an epoch can
  be shorter than ``batch_size``; there each rank scales its loss by ``N n_rank / n_global`` so that
  the average is still the global mean (a rank left without samples runs one stand-in sample with
  weight 0, because DDP needs every rank in every all-reduce).
* The model has no BatchNorm (LayerNorm is per sample) and no buffer that training changes.
  Dropout is the one difference from one process: each rank draws its own masks for its own
  samples (torch seeded with ``seed + rank * RANK_SEED_STRIDE``; rank 0 uses one process's seed),
  so with dropout > 0 a data-parallel run is another draw of the same training, not the same
  numbers; with dropout 0 it follows one process within float tolerance (tests).
* Evaluation (stage-1 validation, the final tests, QAT's float/PTQ/QAT metrics) is sharded: each
  rank embeds a contiguous 1/N of every split (:meth:`DataParallel.chunk`), the embeddings are
  gathered, and rank 0's metrics are broadcast (:meth:`DataParallel.on_main`), so that every rank
  steps the LR scheduler and picks the best epoch alike (ranks that disagreed there would train
  apart silently). Only rank 0 writes files or prints; a barrier after each checkpoint keeps the
  others from running ahead of it.
* Threads: each rank uses ``max(1, cores // local ranks)`` torch threads (``train.threads``, when
  set, is per rank), so that N ranks do not oversubscribe the cores.

gloo on CPU, NCCL on CUDA (one GPU per rank: rank r on ``cuda:LOCAL_RANK``).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as tdist

from stft_neuro.errors import ConfigError

# Set by torchrun (torch.distributed.run) in every worker's environment.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")

# Set by ``launch`` for its workers: their user errors go to the launcher (one line), not the console.
LAUNCHER_ENV = "STFT_NEURO_LAUNCHER"

# Rank r > 0 seeds torch with seed + r * RANK_SEED_STRIDE (dropout masks). 2**31 - 1 (a prime) lies
# above every epoch seed of train.seed < 2147 (train.epoch_seed: 1_000_003 per seed), so there no
# two (rank, stage, epoch) share a seed.
RANK_SEED_STRIDE = 2_147_483_647


def launched_by_torchrun() -> bool:
    """True in a worker process started by torchrun (all of :data:`TORCHRUN_ENV` are set)."""
    return all(k in os.environ for k in TORCHRUN_ENV)


def env_rank() -> int:
    """This worker's global rank from torchrun's environment (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def report_error(message: str) -> bool:
    """Leave a worker's one-line error where torchrun collects it (``TORCHELASTIC_ERROR_FILE``).

    Returns True when ``launch`` started this worker (it prints the line, once for all ranks)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        with open(path, "w") as fp:
            json.dump({"message": message, "timestamp": int(time.time())}, fp)
    return bool(path) and os.environ.get(LAUNCHER_ENV) == "1"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_rank(local_ranks: int, cores: int | None = None) -> int:
    """Torch intra-op threads for each of ``local_ranks`` processes on one machine."""
    return max(1, (cores or available_cores()) // max(local_ranks, 1))


def check_batch(batch_size: int, world_size: int) -> None:
    """Refuse a global batch that does not split into equal shares (one-line ConfigError)."""
    if world_size > 1 and batch_size % world_size:
        raise ConfigError(f"train.batch_size={batch_size} is not divisible by {world_size} processes: "
                          f"each process takes an equal share of every global batch (try "
                          f"{batch_size - batch_size % world_size or world_size})")


@dataclass(frozen=True)
class DataParallel:
    """Where this process stands among the ranks; ``LOCAL`` (one process) makes every method trivial.

    ``active``: a process group is initialised (also under torchrun with one process).
    ``device``: this rank's device.
    """

    rank: int = 0
    world_size: int = 1
    active: bool = False
    device: torch.device | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def seed(self, seed: int) -> int:
        """The torch seed of this rank for an epoch seeded ``seed`` (rank 0: ``seed`` itself)."""
        return seed + self.rank * RANK_SEED_STRIDE

    def shard(self, idx: np.ndarray) -> tuple[np.ndarray, float]:
        """This rank's part of one global batch ``idx (n,)`` -> (indices, loss weight).

        The weight ``N n_rank / n`` makes DDP's average of the ranks' gradients the gradient of the
        mean loss over all ``n`` samples; it is 1 when the shares are equal. A rank with no sample
        (a last batch shorter than N) gets ``idx[:1]`` with weight 0."""
        if not self.active:
            return idx, 1.0
        n = len(idx)
        lo, hi = self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size
        if hi == lo:
            return idx[:1], 0.0
        return idx[lo:hi], self.world_size * (hi - lo) / n

    def global_mean(self, values: torch.Tensor, weight: float) -> torch.Tensor:
        """Batch means ``values (K,)`` of this rank's share -> the means over the global batch.

        ``weight`` is :meth:`shard`'s; the shares' means weighted by ``n_rank / n`` are summed."""
        if not self.active:
            return values
        total = values * (weight / self.world_size)
        tdist.all_reduce(total)
        return total

    def wrap(self, module: torch.nn.Module, probe: Callable[[], torch.Tensor]) -> torch.nn.Module:
        """``module`` in ``DistributedDataParallel`` (itself when not active).

        ``probe()`` computes a loss through ``module`` once, to find parameters that get no gradient
        (ablations can leave some unused; DDP must be told). It runs under a forked RNG and leaves
        no gradient behind."""
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel
        params = [p for p in module.parameters() if p.requires_grad]
        cuda = self.device.type == "cuda"
        with torch.random.fork_rng(devices=[self.device.index] if cuda else [],
                                   device_type="cuda" if cuda else "cpu"):
            grads = torch.autograd.grad(probe(), params, allow_unused=True)
        unused = any(g is None for g in grads)
        return DistributedDataParallel(module, device_ids=[self.device.index] if cuda else None,
                                       find_unused_parameters=unused)

    def chunk(self, n: int) -> tuple[int, int]:
        """This rank's contiguous rows ``[lo, hi)`` of ``n`` (evaluation; sizes differ by at most 1)."""
        return self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size

    def gather_rows(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """Every rank's :meth:`chunk` of a ``(n, E)`` tensor, ``local (hi - lo, E)`` -> ``(n, E)`` on
        every rank (on the CPU), in row order."""
        if not self.active:
            return local
        comm = self.device if self.device.type == "cuda" else torch.device("cpu")
        rows = -(-n // self.world_size)  # the largest chunk; all_gather needs equal shapes
        padded = torch.zeros((rows, *local.shape[1:]), dtype=local.dtype, device=comm)
        padded[:len(local)] = local
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        tdist.all_gather(parts, padded)
        sizes = [DataParallel(r, self.world_size).chunk(n) for r in range(self.world_size)]
        return torch.cat([part[:hi - lo] for part, (lo, hi) in zip(parts, sizes)]).cpu()

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 only and give its JSON-able result to every rank (not pickle)."""
        if not self.active:
            return fn()
        payload = json.dumps(fn()).encode() if self.is_main else b""
        comm = self.device if self.device.type == "cuda" else torch.device("cpu")
        size = torch.tensor([len(payload)], dtype=torch.int64, device=comm)
        tdist.broadcast(size, src=0)
        data = torch.zeros(int(size.item()), dtype=torch.uint8, device=comm)
        if self.is_main:
            data.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
        tdist.broadcast(data, src=0)
        return json.loads(bytes(data.cpu().numpy()).decode())

    def barrier(self) -> None:
        if self.active:
            tdist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)


LOCAL = DataParallel()


def start(device: torch.device, threads: int = 0) -> DataParallel:
    """Join the process group torchrun set up: gloo on CPU, NCCL on CUDA (``cuda:LOCAL_RANK``).

    ``threads``: torch threads per rank (0: :func:`threads_per_rank`)."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank, local_world = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    if device.type == "cuda":
        if local_world > torch.cuda.device_count():
            raise ConfigError(f"{local_world} processes on this machine but {torch.cuda.device_count()} "
                              "CUDA devices: NCCL needs one GPU per process")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    per_rank = threads if threads > 0 else threads_per_rank(local_world)
    torch.set_num_threads(per_rank)
    tdist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                             device_id=device if device.type == "cuda" else None)
    return DataParallel(rank=rank, world_size=world, active=True, device=device)


def stop(dp: DataParallel) -> None:
    """Leave the process group (on every path: a group never destroyed warns at exit)."""
    if dp.active and tdist.is_initialized():
        tdist.destroy_process_group()


def launch(nproc: int, argv: list[str], verbose: bool = False) -> int:
    """Run ``python -m stft_neuro.cli ARGV`` in ``nproc`` local processes through torchrun.

    This is ``torchrun --standalone --nproc-per-node NPROC -m stft_neuro.cli ARGV`` inside this
    process (``torch.distributed.run``), so that a failure ends in one line and an exit status, not
    in torchrun's report: the line a worker left with :func:`report_error` (the earliest), else which
    process ended how. OMP_NUM_THREADS is set to one rank's threads; torchrun's own log shows with
    ``verbose`` only. Returns the exit status (130 when interrupted)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_rank(nproc)))
    os.environ[LAUNCHER_ENV] = "1"
    if not verbose:
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "stft_neuro.cli", *argv])
    try:
        run(args)
    except ChildFailedError as exc:
        failures = sorted(exc.failures.items(), key=lambda rf: (rf[1].timestamp, rf[0]))
        said = [f.message for _, f in failures if isinstance(f.message, str) and f.error_file_data.get("message")]
        rank, first = failures[0]
        how = f"signal {first.signal_name()}" if first.exitcode < 0 else f"status {first.exitcode}"
        print(f"stft-neuro: error: {said[0]}" if said else
              f"stft-neuro: error: training process {rank} of {nproc} ended with {how}", file=sys.stderr)
        return first.exitcode if first.exitcode > 0 else 1
    except SignalException as exc:
        print(f"stft-neuro: interrupted ({exc.sigval.name}); the training processes were stopped",
              file=sys.stderr)
        return 130
    return 0
