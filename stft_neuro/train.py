"""Training with the AVCA two-stage protocol, resumable and deterministic on CPU.

Stage 1 trains on ``stage_1_train`` and, after every epoch, evaluates on ``stage_1_val_{seen,unseen}``
with the calibration b chosen there (``protocol.calibrate``); the epoch with the best validation HM
and its b are kept. Stage 2 retrains a fresh model (same seed) on ``stage_2_train`` for that many
epochs and tests on ``stage_2_test_{seen,unseen}`` with the stage-1 b. (AVCA, Mercea et al. 2022.)

``train.stages``: ``both`` (the protocol above), ``1`` (stage 1 only; the run's model is the best
stage-1 epoch), or ``2`` (stage 2 only, for ``train.epochs`` epochs, tested with b = 0 since no
stage-1 validation chose one).

Determinism: every epoch reseeds torch from ``(seed, stage, epoch)`` and shuffles with a generator
seeded the same way, so a run resumed after epoch k continues exactly as if never stopped.
Checkpoints commit in two phases (``Trainer._save``): a run killed while writing one resumes from
the last complete epoch, never from weights of one epoch with the progress of another.

Data-parallel (``dp``, see ``distributed.py``): every rank runs this same code on its share of each
global batch; gradients are averaged by ``DistributedDataParallel``, evaluation is sharded and rank
0's metrics are broadcast, and only rank 0 writes the run folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from stft_neuro import protocol
from stft_neuro.checkpoint import FORMAT, read_json, save_weights, write_json
from stft_neuro.config import Config
from stft_neuro.data.benchmark import Benchmark, Split
from stft_neuro.distributed import LOCAL, DataParallel
from stft_neuro.errors import CheckpointError, ConfigError
from stft_neuro.model.losses import stft_loss
from stft_neuro.model.stft import STFT, embed_split
from stft_neuro.baselines.ridge import RidgeVariant
from stft_neuro.readout_fit import fit_readout

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config: train.device is cuda but no CUDA device is available")
    return torch.device(name)


def device_label(name: str) -> str:
    """Where ``train.device`` = ``name`` trains, for reports: ``cpu`` or the CUDA device's name."""
    device = resolve_device(name)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def epoch_seed(seed: int, stage: int, epoch: int) -> int:
    return seed * 1_000_003 + stage * 10_007 + epoch


def make_model(cfg: Config, bench: Benchmark) -> STFT:
    split = bench.splits["stage_1_train"]
    return STFT(cfg, split.audio.shape[-1], split.visual.shape[-1])


def evaluate_split_pair(model: STFT, bench: Benchmark, stage: int, device: torch.device,
                        bias: float | None = None, backend=None, dp: DataParallel = LOCAL) -> protocol.GZSLMetrics:
    """S/U/HM/ZSL on a stage's seen/unseen evaluation splits; calibrates b when ``bias`` is None.

    ``backend``: who runs the spiking branch's chip side (default: the model's own module).
    ``dp`` active: each rank embeds its ``dp.chunk`` of every split, the embeddings are gathered,
    and rank 0's metrics are returned on every rank."""
    names = ("stage_1_val_seen", "stage_1_val_unseen") if stage == 1 else \
        ("stage_2_test_seen", "stage_2_test_unseen")
    seen_split, unseen_split = bench.splits[names[0]], bench.splits[names[1]]

    def embed(split: Split) -> torch.Tensor:  # (N, E)
        lo, hi = dp.chunk(len(split.labels)) if dp.active else (0, len(split.labels))
        local = embed_split(model, split.audio[lo:hi], split.visual[lo:hi], split.lengths[lo:hi],
                            device=device, backend=backend)
        return dp.gather_rows(local, len(split.labels))

    emb_seen, emb_unseen = embed(seen_split), embed(unseen_split)
    with torch.no_grad():
        class_emb = model.embed_classes(torch.as_tensor(bench.class_embeddings, device=device)).cpu()
    samples = torch.cat([emb_seen, emb_unseen]).numpy()
    labels = np.concatenate([seen_split.labels, unseen_split.labels])
    args = (samples, labels, class_emb.numpy(), bench.seen(stage), bench.unseen(stage))

    def metrics() -> protocol.GZSLMetrics:
        if bias is None:
            return protocol.calibrate(*args)
        return protocol.evaluate(*args, bias=bias)

    if not dp.active:
        return metrics()
    return protocol.GZSLMetrics(**dp.on_main(lambda: metrics().to_dict()))


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Subnormal floats (|x| < 1.18e-38) flushed to zero on this thread while training, then
    torch's default (off) again.

    Why: weights and Adam moments of parameters that the loss barely reaches decay into the
    subnormal range under weight decay (a stalled real-size ActivityNet saliency run held 2,307
    subnormal weights, 1,658 of them in ``skip_spiking``, the readout's path that the ridge map
    made redundant, and 121,638 subnormal Adam moments), and x86 CPUs compute on subnormals in
    microcode. That run slowed from 20 s to 120-130 s per training epoch by its tenth; flushing
    made its training batches 6.1x faster, measured side by side on the same resumed state
    (BENCHMARKS.md, "Training speed"); the AVCA-like model's and the paper-chip STFT's stalled
    ActivityNet states ran 20x and 13x faster. The values flushed are below any quantity the
    model's outputs resolve. ``torch.set_flush_denormal`` sets the calling thread's
    FTZ/DAZ bits only: torch's intra-op worker threads keep theirs (the benchmarks train on one
    thread). Re-entrant: only the outermost ``with`` switches the mode."""
    global _FLUSH_DEPTH
    if _FLUSH_DEPTH == 0:
        torch.set_flush_denormal(True)
    _FLUSH_DEPTH += 1
    try:
        yield
    finally:
        _FLUSH_DEPTH -= 1
        if _FLUSH_DEPTH == 0:
            torch.set_flush_denormal(False)


_FLUSH_DEPTH = 0  # nesting depth of ``flush_denormals`` (training is single-threaded Python)


class LossStep(torch.nn.Module):
    """``forward(a, v, n, w2v) -> (out, text_emb)``: the model's sample outputs and its projected
    class embeddings in one forward, so that ``DistributedDataParallel`` sees every parameter that
    the loss uses (``embed_classes`` is not part of ``STFT.forward``).

    ``a (B, T, Da)``, ``v (B, T, Dv)``, ``n (B,)`` seconds per sample, ``w2v (C, 300)``; ``out`` as
    ``STFT.forward``, ``text_emb (C, E)``."""

    def __init__(self, model: STFT) -> None:
        super().__init__()
        self.model = model

    def forward(self, a, v, n, w2v):
        return self.model(a, v, n), self.model.embed_classes(w2v)


def loss_step(model: STFT, split: Split, w2v: torch.Tensor, train_classes: torch.Tensor, cfg: Config,
              device: torch.device, dp: DataParallel = LOCAL) -> torch.nn.Module:
    """``LossStep(model)``, wrapped in DDP when ``dp`` is active (probing for unused parameters on
    the split's first two samples)."""
    step = LossStep(model)

    def probe() -> torch.Tensor:
        idx = np.arange(min(2, len(split.labels)))
        out, text = step(*(torch.as_tensor(x[idx], device=device) for x in (split.audio, split.visual,
                                                                             split.lengths)), w2v)
        y = torch.as_tensor(split.labels[idx], device=device)
        return stft_loss(out, text, w2v, y, cfg.train.margin, train_classes)["total"]

    return dp.wrap(step, probe)


@dataclass
class EnergyBudget:
    """The chip-energy constraint of ``spiking.energy_budget_uj``, held by a Lagrange multiplier.

    Per batch the loss gets ``multiplier * (E / budget - 1)`` (``E``: ``SpikingBranch.chip_energy``,
    uJ per sample, with gradients) and then the multiplier takes a dual-ascent step
    ``max(0, multiplier + lr * (E / budget - 1))`` with the batch's global E: it grows while the
    branch spends more than the budget and shrinks back to 0 once it spends less, so the task loss
    is left alone when the budget is met (a fixed weight would keep pushing)."""

    budget_uj: float
    lr: float
    multiplier: float = 0.0

    @classmethod
    def of(cls, cfg: Config, multiplier: float = 0.0) -> EnergyBudget | None:
        s = cfg.spiking
        return cls(s.energy_budget_uj, s.energy_multiplier_lr, multiplier) \
            if s.enabled and s.energy_budget_uj > 0 else None

    def term(self, energy_uj: torch.Tensor) -> torch.Tensor:
        return self.multiplier * (energy_uj / self.budget_uj - 1.0)

    def update(self, energy_uj: float) -> None:
        self.multiplier = max(0.0, self.multiplier + self.lr * (energy_uj / self.budget_uj - 1.0))


@dataclass
class Progress:
    """Training progress, saved in meta.json after every epoch (the resume point)."""

    stage: int = 1
    epoch: int = 0  # epochs completed in this stage
    best_epoch: int = 0
    best_hm: float = -1.0
    best_bias: float = 0.0
    history: list[dict] = field(default_factory=list)
    done: bool = False
    energy_multiplier: float = 0.0  # EnergyBudget.multiplier (spiking.energy_budget_uj)
    readout_member: dict | None = None  # fusion.readout = ridge: the member chosen at the best epoch


def train_epoch(model: STFT, split: Split, w2v: torch.Tensor, train_classes: torch.Tensor,
                opt: torch.optim.Optimizer, cfg: Config, device: torch.device, seed: int,
                on_batch: Callable[[float], None] | None = None, step: torch.nn.Module | None = None,
                dp: DataParallel = LOCAL, energy: EnergyBudget | None = None) -> dict[str, float]:
    """One pass over ``split``; returns mean loss terms (means over batches of global-batch means).

    ``energy``: the chip-energy budget (its multiplier is updated in place after every batch); the
    terms then include ``energy_uj`` (the estimate, uJ per sample) and ``energy_multiplier``.

    The permutation (seeded ``seed``) and the global batches are those of one process; with ``dp``
    active this rank computes its share of each (``dp.shard``) through ``step`` (``loss_step``'s DDP
    wrapper), and the loss terms reported (``on_batch`` gets the total) are the global batch's."""
    model.train()
    step = step if step is not None else LossStep(model)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(split.labels), generator=gen).numpy()
    totals: dict[str, float] = {}
    batches = 0
    bs = cfg.train.batch_size
    with flush_denormals():
        for i in range(0, len(order), bs):
            idx, weight = dp.shard(np.sort(order[i:i + bs]))
            a = torch.as_tensor(split.audio[idx], device=device)
            v = torch.as_tensor(split.visual[idx], device=device)
            n = torch.as_tensor(split.lengths[idx], device=device)
            y = torch.as_tensor(split.labels[idx], device=device)
            out, text_emb = step(a, v, n, w2v)
            losses = stft_loss(out, text_emb, w2v, y, cfg.train.margin, train_classes)
            if energy is not None:
                e_uj = model.spiking.chip_energy(out["record"]).total_uj
                losses["total"] = losses["total"] + energy.term(e_uj).to(losses["total"].dtype)
                losses["energy_uj"] = e_uj.to(losses["total"].dtype)
            opt.zero_grad(set_to_none=True)
            (losses["total"] if weight == 1.0 else losses["total"] * weight).backward()
            opt.step()
            values = dp.global_mean(torch.stack([val.detach() for val in losses.values()]), weight).tolist()
            if energy is not None:
                energy.update(values[list(losses).index("energy_uj")])
                losses["energy_multiplier"] = torch.tensor(energy.multiplier)
                values.append(energy.multiplier)
            for k, val in zip(losses, values):
                totals[k] = totals.get(k, 0.0) + val
            batches += 1
            if on_batch is not None:
                on_batch(values[list(losses).index("total")])
    return {k: v / max(batches, 1) for k, v in totals.items()}


#: samples of the training split that ``spiking.init = graded`` measures the drives on
GRADED_INIT_SAMPLES = 512


def graded_init(model: STFT, split: Split, cfg: Config, device: torch.device) -> None:
    """``spiking.init = graded``: the chip's weights and biases rescaled into the LIF's graded range
    on ``GRADED_INIT_SAMPLES`` training samples (a seeded choice; ``ChipNetwork.graded_init``)."""
    idx = np.sort(np.random.default_rng(cfg.train.seed).permutation(len(split.labels))[:GRADED_INIT_SAMPLES])
    with torch.no_grad():
        x, _ = model.spiking.encode(*(torch.as_tensor(a[idx], device=device)
                                      for a in (split.audio, split.visual, split.lengths)))
    model.spiking.chip.graded_init(x, cfg.spiking.init_drive_std * cfg.spiking.threshold,
                                   cfg.spiking.init_drive_mean * cfg.spiking.threshold)


def parameter_groups(model: STFT, cfg: Config) -> list[dict]:
    """Adam's parameter groups: the host's parameters at ``train.weight_decay``, the spiking
    branch's (``model.spiking`` and the readout's ``skip_spiking``) at ``train.spiking_weight_decay``
    (why they differ: ``TrainConfig``). One group when the two are equal (the optimizer state of
    runs written before the split then resumes as it was)."""
    if cfg.train.spiking_weight_decay == cfg.train.weight_decay:
        return [{"params": list(model.parameters()), "weight_decay": cfg.train.weight_decay}]
    spiking_ids = set()
    for part in (model.spiking, model.skip_spiking):
        if part is not None:
            spiking_ids.update(id(p) for p in part.parameters())
    params = list(model.parameters())
    groups = [{"params": [p for p in params if id(p) not in spiking_ids], "weight_decay": cfg.train.weight_decay},
              {"params": [p for p in params if id(p) in spiking_ids],
               "weight_decay": cfg.train.spiking_weight_decay}]
    return [g for g in groups if g["params"]]  # without a spiking branch: one group


class Trainer:
    """Runs both AVCA stages into a run folder; ``progress`` callbacks feed the CLI's bar.

    ``dp``: this process's place in a data-parallel run (``distributed.start``; default one process).
    Every rank calls ``run``; rank 0 writes, and every rank returns the same results.
    Each history row carries ``batch_losses``, the total loss of every global batch in order."""

    def __init__(self, cfg: Config, bench: Benchmark, run_dir: Path,
                 on_epoch: Callable[[dict], None] | None = None,
                 on_batch: Callable[[float], None] | None = None, dp: DataParallel = LOCAL) -> None:
        self.cfg, self.bench, self.run_dir, self.dp = cfg, bench, Path(run_dir), dp
        self.device = dp.device if dp.active else resolve_device(cfg.train.device)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        self.on_epoch, self.on_batch = on_epoch, on_batch
        self.w2v = torch.as_tensor(bench.class_embeddings, device=self.device)

    # -- run folder -------------------------------------------------------------------------
    def _meta(self, progress: Progress, metrics: dict | None = None) -> dict:
        split = self.bench.splits["stage_1_train"]
        meta = {"format": FORMAT, "audio_dim": int(split.audio.shape[-1]),
                "visual_dim": int(split.visual.shape[-1]), "class_names": list(self.bench.class_names),
                "benchmark": self.bench.name, "progress": dataclasses.asdict(progress)}
        if metrics is not None:
            meta["metrics"] = metrics
        return meta

    def _save(self, model: STFT, opt, sched, progress: Progress) -> None:
        """Checkpoint in two phases (rank 0; the other ranks wait at a barrier): the weights and the
        optimizer state (tagged with stage and epoch) go to ``*.next``, meta.json commits them, and
        then they replace ``last.*``. A kill at any point leaves a pair that ``_recover`` can match
        with meta.json."""
        if self.dp.is_main:
            save_weights(model, self.run_dir / "last.safetensors.next")
            tmp = self.run_dir / "last_optim.pt.tmp"
            torch.save({"opt": opt.state_dict(), "sched": sched.state_dict() if sched else None,
                        "stage": progress.stage, "epoch": progress.epoch}, tmp)
            tmp.replace(self.run_dir / "last_optim.pt.next")
            write_json(self.run_dir / "meta.json", self._meta(progress))
            self._promote()
        self.dp.barrier()

    def _promote(self) -> None:
        for name in ("last.safetensors", "last_optim.pt"):
            staged = self.run_dir / f"{name}.next"
            if staged.exists():
                staged.replace(self.run_dir / name)

    def _recover(self, progress: Progress) -> None:
        """After a kill inside ``_save``: finish the commit if meta.json has it, else drop the pair."""
        staged = self.run_dir / "last_optim.pt.next"
        if not staged.exists():
            return
        tag = torch.load(staged, map_location="cpu", weights_only=True)
        if (tag.get("stage"), tag.get("epoch")) == (progress.stage, progress.epoch):
            self._promote()
        else:
            for name in ("last.safetensors.next", "last_optim.pt.next"):
                (self.run_dir / name).unlink(missing_ok=True)

    def _restore(self, model: STFT, opt, sched) -> Progress:
        meta = read_json(self.run_dir / "meta.json", "metadata")
        progress = Progress(**meta["progress"])
        if progress.epoch > 0:
            from safetensors.torch import load_file
            model.load_state_dict(load_file(str(self.run_dir / "last.safetensors"), device=str(self.device)))
            state = torch.load(self.run_dir / "last_optim.pt", map_location=self.device, weights_only=True)
            tag = (state.get("stage", progress.stage), state.get("epoch", progress.epoch))  # untagged: older runs
            if tag != (progress.stage, progress.epoch):
                raise CheckpointError(f"{self.run_dir}: last_optim.pt is from stage {tag[0]} epoch {tag[1]} "
                                      f"but meta.json records stage {progress.stage} epoch {progress.epoch}; "
                                      "the run cannot resume")
            opt.load_state_dict(state["opt"])
            if sched is not None and state["sched"] is not None:
                sched.load_state_dict(state["sched"])
        return progress

    def _fresh(self, stage: int):
        seed_everything(self.cfg.train.seed)
        model = make_model(self.cfg, self.bench).to(self.device)
        if model.spiking is not None and self.cfg.spiking.init == "graded":
            graded_init(model, self.bench.splits[f"stage_{stage}_train"], self.cfg, self.device)
        opt = torch.optim.Adam(parameter_groups(model, self.cfg), lr=self.cfg.train.lr)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", patience=self.cfg.train.plateau_patience) if stage == 1 else None
        return model, opt, sched

    def _evaluate(self, model: STFT, stage: int, bias: float | None = None) -> protocol.GZSLMetrics:
        return evaluate_split_pair(model, self.bench, stage, self.device, bias, dp=self.dp)

    @staticmethod
    def _stage1_summary(progress: Progress) -> dict:
        return {"best_epoch": progress.best_epoch, "HM": progress.best_hm, "bias": progress.best_bias}

    # -- the protocol -----------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict:
        main = self.dp.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.run_dir / "config.json", self.cfg.to_dict())
        stages = {"both": (1, 2), "1": (1,), "2": (2,)}[self.cfg.train.stages]
        progress = Progress(stage=stages[0])
        if resume and (self.run_dir / "meta.json").exists():
            progress = Progress(**read_json(self.run_dir / "meta.json", "metadata")["progress"])
            if progress.done:
                done = read_json(self.run_dir / "metrics.json", "metrics")
                if 1 in stages:  # runs finished after a resume into stage 2 once lacked it
                    done.setdefault("stage1_val", self._stage1_summary(progress))
                return done
            if main:
                self._recover(progress)
        self.dp.barrier()
        results: dict = {}
        with flush_denormals():  # training and the per-epoch validation (see flush_denormals)
            for stage in stages:
                if stage < progress.stage:
                    # stage 1 finished in an earlier process: its outcome lives in the progress record
                    results["stage1_val"] = self._stage1_summary(progress)
                    continue
                model, opt, sched = self._fresh(stage)
                if resume and progress.stage == stage and progress.epoch > 0:
                    progress = self._restore(model, opt, sched)
                epochs = self.cfg.train.epochs if stage == 1 or len(stages) == 1 else max(progress.best_epoch, 1)
                split = self.bench.splits[f"stage_{stage}_train"]
                train_classes = torch.as_tensor(np.unique(split.labels), device=self.device)
                step = loss_step(model, split, self.w2v, train_classes, self.cfg, self.device, self.dp)
                while progress.epoch < epochs:
                    seed = epoch_seed(self.cfg.train.seed, stage, progress.epoch)
                    torch.manual_seed(self.dp.seed(seed))
                    batch_losses: list[float] = []
                    t0 = time.perf_counter()
                    energy = EnergyBudget.of(self.cfg, progress.energy_multiplier)
                    losses = train_epoch(model, split, self.w2v, train_classes, opt, self.cfg, self.device,
                                         seed, self._batch_hook(batch_losses), step, self.dp, energy)
                    if energy is not None:
                        progress.energy_multiplier = energy.multiplier
                    seconds = time.perf_counter() - t0
                    progress.epoch += 1
                    row = {"stage": stage, "epoch": progress.epoch, "seconds": seconds,
                           "samples_per_s": len(split.labels) / seconds, **{f"loss_{k}": v for k, v in losses.items()}}
                    if stage == 1:
                        if model.ridge is not None:  # fusion.readout = ridge: refit, member on validation
                            member, _ = fit_readout(model, self.bench, 1, self.device)
                            row["readout_member"] = member.name
                        val = self._evaluate(model, 1)
                        row.update({f"val_{k}": v for k, v in val.to_dict().items()})
                        sched.step(val.HM)
                        if val.HM > progress.best_hm:
                            progress.best_hm, progress.best_epoch, progress.best_bias = val.HM, progress.epoch, val.bias
                            if model.ridge is not None:
                                progress.readout_member = dataclasses.asdict(member)
                            if main:
                                save_weights(model, self.run_dir / "stage1_best.safetensors")
                    row["batch_losses"] = batch_losses
                    progress.history.append(row)
                    self._save(model, opt, sched, progress)
                    if self.on_epoch is not None:
                        self.on_epoch(row)
                if stage == 1:
                    results["stage1_val"] = self._stage1_summary(progress)
                    if len(stages) == 1:
                        from safetensors.torch import load_file
                        model.load_state_dict(load_file(str(self.run_dir / "stage1_best.safetensors"),
                                                        device=str(self.device)))
                        results["stage1_val_metrics"] = self._evaluate(model, 1, progress.best_bias).to_dict()
                else:
                    if model.ridge is not None:
                        if progress.readout_member is None:
                            raise ConfigError("fusion.readout=ridge: stage 2 refits the member stage 1 chose on "
                                              "validation; run both stages (train.stages=both)")
                        fit_readout(model, self.bench, 2, self.device, RidgeVariant(**progress.readout_member))
                        results["readout_member"] = RidgeVariant(**progress.readout_member).name
                    results["stage2_test"] = self._evaluate(model, 2, progress.best_bias).to_dict()
                if main:
                    save_weights(model, self.run_dir / "model.safetensors")
                if stage != stages[-1]:
                    progress = dataclasses.replace(progress, stage=stage + 1, epoch=0)
                    self._save(model, opt, sched, progress)
        progress.done = True
        if main:
            write_json(self.run_dir / "metrics.json", results)
            write_json(self.run_dir / "meta.json", self._meta(progress, results))
            if self.cfg.spiking.enabled:
                self._store_plan()
        self.dp.barrier()
        return results

    def _store_plan(self) -> None:
        """The finished run's deployment plan, derived once on CPU from the written weights
        (input scale calibrated on ``stage_2_train``) and stored in the run folder, where every
        consumer reads it (``run_plan.py``)."""
        from stft_neuro.checkpoint import load_run
        from stft_neuro.run_plan import derive_plan, store_plan
        model, _, _ = load_run(self.run_dir)
        store_plan(self.run_dir, derive_plan(model, self.bench.splits["stage_2_train"]))

    def _batch_hook(self, into: list[float]) -> Callable[[float], None]:
        def hook(loss: float) -> None:
            into.append(loss)
            if self.on_batch is not None:
                self.on_batch(loss)
        return hook


def check_resumable(run_dir: Path) -> None:
    if not (run_dir / "meta.json").is_file():
        raise CheckpointError(f"cannot resume {run_dir}: no meta.json there (not a stft-neuro run)")
