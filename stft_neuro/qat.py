"""Quantization-aware fine-tuning: a float run -> a run whose spiking branch computes Loihi 2's
integer arithmetic exactly (deploy mode), with the host sending integer payloads and thresholds.

Protocol: load the float run (its stage-2 model and the calibration b chosen on stage-1
validation), take the input payload scale of the float run's stored plan (``run_plan.py``:
calibrated once on ``stage_2_train``, on CPU), measure the test metrics in
float and right after quantization (post-training quantization, PTQ), fine-tune in deploy mode on
``stage_2_train`` for ``train.epochs`` epochs (straight-through estimators + surrogate gradients),
and test again with the same b. The run folder records all three and the quantization report.
A QAT run is not resumable (it is short); rerun it instead.

Data-parallel (``dp``, ``stft-neuro train --qat --from RUN --nproc N``): every rank loads the float
run and calibrates alike, fine-tunes its share of each global batch (``train.train_epoch``), the
evaluation is sharded (``train.evaluate_split_pair``) and rank 0 writes the run folder. See
``distributed.py``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from stft_neuro import config as config_mod
from stft_neuro.checkpoint import FORMAT, load_run, save_weights, write_json
from stft_neuro.data import load_benchmark
from stft_neuro.data.benchmark import Benchmark, Split
from stft_neuro.errors import CheckpointError
from stft_neuro.model.stft import STFT
from stft_neuro.baselines.ridge import RidgeVariant
from stft_neuro.readout_fit import fit_readout
from stft_neuro.distributed import LOCAL, DataParallel
# calibrate, CALIBRATION_SAMPLES: re-exported (the calibration lives with the run's stored plan)
from stft_neuro.run_plan import CALIBRATION_SAMPLES, calibrate, run_plan  # noqa: F401
from stft_neuro.train import (epoch_seed, evaluate_split_pair, loss_step, parameter_groups, resolve_device,
                              seed_everything, EnergyBudget, train_epoch)


def quantization_summary(model: STFT) -> dict:
    _, report = model.spiking.deployment_plan()
    return {"input_scale": report.input_scale, "input_bits": report.input_bits,
            "weights_saturated": report.weights_saturated,
            "layers": [{"name": i.name, "weights": i.n_weights, "weights_saturated": i.weights_saturated,
                        "weights_zeroed": i.weights_zeroed, "weight_exp": i.scales.weight_exp,
                        "vth": i.vth, "du": i.du, "dv": i.dv, "bias_saturated": i.bias_saturated,
                        "a_out_bound": i.a_out_bound, "a_out_fits_16_bits": i.a_out_fits}
                       for i in report.layers]}


def load_float_run(float_run: str | Path, overrides: list[str] | None = None):
    """The float run to fine-tune -> (model, config with ``overrides``, meta); refuses a QAT run and
    overrides other than ``train.*``, ``spiking.netx_compatible``, the energy budget
    (``spiking.energy_budget_uj``, ``spiking.energy_multiplier_lr``) and the payload dead zone
    (``spiking.payload_dead_zone``) and layer 1's pruning (``spiking.input_weight_density``)
    (one-line CheckpointError)."""
    model, cfg, meta = load_run(float_run)
    if meta.get("deploy"):
        raise CheckpointError(f"{float_run} is already a QAT run; give the float run it came from")
    allowed = ("train.", "spiking.netx_compatible=", "spiking.energy_budget_uj=", "spiking.energy_multiplier_lr=",
               "spiking.payload_dead_zone=", "spiking.input_weight_density=")
    bad = [o for o in overrides or [] if not o.strip().startswith(allowed)]
    if bad:
        raise CheckpointError(f"QAT keeps the float run's model: only train.*, spiking.netx_compatible "
                              f"spiking.energy_*, spiking.payload_dead_zone and spiking.input_weight_density "
                              f"can be set, not {bad[0]!r}")
    return model, config_mod.load(overrides=overrides or [], base=cfg), meta


def qat_finetune(float_run: str | Path, out_dir: Path, overrides: list[str] | None = None,
                 on_epoch: Callable[[dict], None] | None = None,
                 on_batch: Callable[[float], None] | None = None,
                 bench: Benchmark | None = None, dp: DataParallel = LOCAL) -> dict:
    """Fine-tune ``float_run`` in deploy mode into ``out_dir``; returns the metrics dict.

    ``dp``: this process's place in a data-parallel run (every rank calls this; rank 0 writes).
    History rows carry ``batch_losses``, the total loss of every global batch."""
    model, cfg, meta = load_float_run(float_run, overrides)
    bench = bench or load_benchmark(cfg.data)
    split = bench.splits["stage_2_train"]
    # the float run's stored plan (derived once on CPU if the run has none): QAT starts from its
    # input scale, the one every other consumer of the float run uses
    run_plan(float_run, model, meta, lambda: split)
    if model.spiking is not None:  # the quantizer target of the plans QAT trains for
        model.spiking.chip.netx_compatible = cfg.spiking.netx_compatible
        model.spiking.chip.payload_dead_zone = cfg.spiking.payload_dead_zone
    device = dp.device if dp.active else resolve_device(cfg.train.device)
    model = model.to(device)
    bias = float(meta["progress"]["best_bias"])

    def test() -> dict:  # sharded over the ranks; rank 0's metrics on every rank
        return evaluate_split_pair(model, bench, 2, device, bias, dp=dp).to_dict()

    results = {"from": str(float_run), "bias": bias, "float": test()}
    if model.spiking is not None and cfg.spiking.input_weight_density < 1.0:
        # after the float test (the float run as it was), before the optimizer exists: the pruned
        # weights then stay exactly 0 (ChipNetwork.prune_input_weights); PTQ measures the pruned plan
        results["pruned_input_weights"] = model.spiking.chip.prune_input_weights(cfg.spiking.input_weight_density)
    model.spiking.set_deploy(True)
    results["ptq"] = test()

    seed_everything(cfg.train.seed)
    opt = torch.optim.Adam(parameter_groups(model, cfg), lr=cfg.train.lr)
    w2v = torch.as_tensor(bench.class_embeddings, device=device)
    train_classes = torch.as_tensor(np.unique(split.labels), device=device)
    history = []
    if dp.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "config.json", cfg.to_dict())
    step = loss_step(model, split, w2v, train_classes, cfg, device, dp)
    energy = EnergyBudget.of(cfg)  # spiking.energy_budget_uj: the deployed chip's exact estimate
    for epoch in range(cfg.train.epochs):
        seed = epoch_seed(cfg.train.seed, 3, epoch)  # stage "3": QAT
        torch.manual_seed(dp.seed(seed))
        batch_losses: list[float] = []

        def batch_hook(loss: float) -> None:
            batch_losses.append(loss)
            if on_batch is not None:
                on_batch(loss)

        t0 = time.perf_counter()
        losses = train_epoch(model, split, w2v, train_classes, opt, cfg, device, seed, batch_hook, step, dp,
                             energy)
        seconds = time.perf_counter() - t0
        row = {"stage": "qat", "epoch": epoch + 1, "seconds": seconds,
               "samples_per_s": len(split.labels) / seconds, **{f"loss_{k}": v for k, v in losses.items()},
               "batch_losses": batch_losses}
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
    if model.ridge is not None:  # fusion.readout = ridge: the float run's member, refitted on
        # stage_2_train through the fine-tuned fixed-point chip (the features it now pools)
        member = meta["progress"].get("readout_member")
        if member is None:
            raise CheckpointError(f"{float_run}: a ridge readout without the member stage 1 chose; "
                                  "retrain the float run")
        fit_readout(model, bench, 2, device, RidgeVariant(**member))
        results["readout_member"] = RidgeVariant(**member).name
    results["qat"] = test()
    results["hm_drop_qat_vs_float"] = results["float"]["HM"] - results["qat"]["HM"]
    results["quantization"] = quantization_summary(model)
    if dp.is_main:
        save_weights(model, out_dir / "model.safetensors")
        progress = dict(meta["progress"], history=history, done=True)
        kept = {k: meta[k] for k in ("audio_dim", "visual_dim", "class_names", "benchmark")}
        write_json(out_dir / "meta.json", {**kept, "format": FORMAT, "deploy": True, "progress": progress,
                                           "metrics": results})
        write_json(out_dir / "metrics.json", results)
    dp.barrier()
    return results
