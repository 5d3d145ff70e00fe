"""What a ``simulate`` run runs: the options checked, the bundle and/or checkpoint loaded, the host,
the plan the chip side runs, and the samples. Everything that can refuse a run does so here, in
one line (:class:`SimulateError` and the loaders' own errors), before any output exists.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stft_neuro.errors import UserError

SPLITS = ("stage_2_test_seen", "stage_2_test_unseen")
SPLIT_CHOICES = (*SPLITS, "all")
BACKENDS = ("lava", "reference", "torch")
HOSTS = ("torch", "onnx")
CHIP_SOURCES = ("nir", "plan", "netx")
SAMPLE_SEED = 0
#: ``--early-exit`` without a file: the training run's own rule (``RUN/early_exit.json``).
EARLY_EXIT_RUN = "run"


class SimulateError(UserError):
    """A simulation that cannot start or cannot finish; the message says why in one line."""


@dataclass
class Setup:
    """A resolved run. ``model``: the checkpoint's STFT on CPU, eval, its chip in deploy mode (None
    when a bundle runs alone); ``plan``: the plan the chip side runs (``DeploymentPlan``);
    ``onnx_host``: the bundle's host graphs (``--host onnx``) or None; ``picks``: the samples as
    ``(split name, index within the split)``, in order; ``class_emb``: (C, E) projected class
    embeddings; ``bias``: the calibration b; ``dynamic``: thresholds modulated every step."""

    backend: str
    host: str
    chip_from: str | None
    chip_file: str | None
    bundle: Any
    checkpoint: str | None
    alone: bool
    model: Any
    cfg: Any
    bench: Any
    plan: Any
    onnx_host: Any
    dynamic: bool
    bias: float
    class_emb: np.ndarray
    split: str
    chosen: tuple[str, ...]
    picks: list[tuple[str, int]]
    samples: int | None
    batch: int
    out: Path
    ray_address: str | None
    ray_workers: int | None
    #: early exit (``--early-exit``): the rule with what a batch's judge needs, or None (off)
    exit_setup: Any = None
    #: where the rule came from (a file path, "calibrated ..."), or None
    exit_source: str | None = None

    @property
    def capacity(self) -> int:
        """Samples of the Lava network (the same in every batch and every shard)."""
        return min(self.batch, len(self.picks))

    @property
    def netx_file(self) -> Path | None:
        """The bundle's netx file when Lava runs it itself (``--chip-from netx --backend lava``)."""
        if self.chip_from == "netx" and self.backend == "lava":
            return self.bundle.path / self.chip_file
        return None


def check_options(*, bundle_dir, checkpoint, backend, host, split, samples, batch, out, force,
                  chip_from, ray_address, ray_workers, early_exit=None, early_exit_max_drop=None) -> None:
    """The options alone, before anything is loaded (one-line :class:`SimulateError`)."""
    import math
    if early_exit_max_drop is not None:
        if early_exit is None:
            raise SimulateError("simulate: --early-exit-max-drop calibrates the rule of --early-exit: give "
                                "--early-exit too")
        if early_exit != EARLY_EXIT_RUN:
            raise SimulateError(f"simulate: --early-exit-max-drop calibrates the run's rule; the rule file "
                                f"{early_exit} is already calibrated (leave out one of the two)")
        if not math.isfinite(float(early_exit_max_drop)) or float(early_exit_max_drop) < 0:
            raise SimulateError(f"simulate: --early-exit-max-drop must be a finite number of HM points "
                                f">= 0, got {early_exit_max_drop}")
    if early_exit is not None and chip_from == "netx":
        raise SimulateError("simulate: --early-exit drops finished samples from the batch; --chip-from netx "
                            "runs one netx Network per sample without that: use --chip-from nir|plan")
    if ray_workers is not None and ray_address is None:
        raise SimulateError("simulate: --ray-workers sizes the local Ray of --ray: give --ray too")
    if ray_address is not None:
        from stft_neuro.shard import require_ray
        require_ray()  # first: one line before minutes of loading when Ray is missing
    if backend not in BACKENDS:
        raise SimulateError(f"simulate: unknown backend {backend!r} (one of {', '.join(BACKENDS)})")
    if host not in HOSTS:
        raise SimulateError(f"simulate: unknown host {host!r} (one of {', '.join(HOSTS)})")
    if split not in SPLIT_CHOICES:
        raise SimulateError(f"simulate: unknown split {split!r} (one of {', '.join(SPLIT_CHOICES)})")
    if batch is None or int(batch) < 1:
        raise SimulateError(f"simulate: --batch must be >= 1, got {batch}")
    if samples is not None and int(samples) < 1:
        raise SimulateError(f"simulate: --samples must be >= 1, got {samples}")
    if bundle_dir is None and checkpoint is None:
        raise SimulateError("simulate: give --bundle DIR or --checkpoint RUN")
    if host == "onnx" and bundle_dir is None:
        raise SimulateError("simulate: --host onnx runs the bundle's ONNX graphs: give --bundle DIR")
    if chip_from is not None and chip_from not in CHIP_SOURCES:
        raise SimulateError(f"simulate: unknown --chip-from {chip_from!r} (one of {', '.join(CHIP_SOURCES)})")
    if chip_from is not None and bundle_dir is None:
        raise SimulateError("simulate: --chip-from names a file of the bundle: give --bundle DIR")
    if chip_from is not None and backend == "torch":
        raise SimulateError("simulate: --backend torch runs the checkpoint's own chip module; --chip-from "
                            "applies to --backend lava|reference")
    if chip_from == "netx" and ray_address is not None:
        raise SimulateError("simulate: --chip-from netx runs one netx Network per sample here; "
                            "leave out --ray")
    if Path(out).exists() and not force:
        raise SimulateError(f"simulate: {out} already exists (choose a new folder, or --force)")


def resolve(*, bundle_dir, checkpoint, backend, host, split, samples, batch, out, force, overrides,
            allow_pickle, chip_from, ray_address, ray_workers, early_exit=None,
            early_exit_max_drop=None) -> Setup:
    """Check the options, load what the run needs and decide the plan, the samples and the
    early-exit rule (``early_exit``: None off, :data:`EARLY_EXIT_RUN` the run's, else a file)."""
    check_options(bundle_dir=bundle_dir, checkpoint=checkpoint, backend=backend, host=host, split=split,
                  samples=samples, batch=batch, out=out, force=force, chip_from=chip_from,
                  ray_address=ray_address, ray_workers=ray_workers, early_exit=early_exit,
                  early_exit_max_drop=early_exit_max_drop)
    bundle, checkpoint, alone = _bundle_and_run(bundle_dir, checkpoint, host, backend)
    if alone:
        model, run_cfg = None, None
        cfg, meta = _bundle_run(bundle, overrides, allow_pickle)
    else:
        model, run_cfg, cfg, meta = _load_model(checkpoint, overrides, allow_pickle)
    from stft_neuro.data import load_benchmark
    bench = load_benchmark(cfg.data)
    from stft_neuro.checkpoint import check_fits
    check_fits(bench, meta, bundle_dir if alone else checkpoint)

    plan = None
    if bundle is None or host == "torch" or backend == "torch":
        plan = _model_plan(model, meta, checkpoint, bench, run_cfg, overrides, allow_pickle)
    if bundle is not None:
        from stft_neuro.run_plan import same_plan
        if plan is not None and not same_plan(plan, bundle.plan):
            raise SimulateError(f"simulate: the checkpoint {checkpoint} runs a different deployment plan "
                                f"than the bundle {bundle_dir} (re-export the bundle from this run)")
        plan = bundle.plan
    chip_file = None
    if bundle is not None and backend != "torch":
        plan, chip_from, chip_file = _chip_plan(bundle, chip_from)
    onnx_host = _onnx_host(bundle, bench) if host == "onnx" else None
    dynamic = bool(onnx_host.dynamic_threshold if alone else model.spiking.cfg.dynamic_threshold)
    if chip_from == "netx" and dynamic:
        raise SimulateError(
            "simulate --chip-from netx: the run has dynamic thresholds (the host modulates them every "
            "step) and a netx file has no threshold-modulation port; use --chip-from nir|plan, or "
            "a run trained with --set spiking.dynamic_threshold=false")
    bias = float(meta["progress"]["best_bias"])
    if alone:
        if tuple(meta["class_names"]) != tuple(bench.class_names):
            raise SimulateError(f"simulate: bundle {bundle_dir} was exported for other classes than "
                                f"the benchmark's ({cfg.data.dataset}): give the run's data with --set data.*")
        class_emb = bundle.class_embeddings()
    else:
        with torch.no_grad():
            class_emb = model.embed_classes(torch.as_tensor(bench.class_embeddings)).float().numpy()
    chosen = SPLITS if split == "all" else (split,)
    picks = pick_samples(bench, chosen, samples)
    if not picks:
        raise SimulateError(f"simulate: split {split} has no samples")
    exit_setup, exit_source = None, None
    if early_exit is not None:
        rule, exit_source = _exit_rule(early_exit, early_exit_max_drop, checkpoint, alone, model, bench,
                                       plan, bias, bundle)
        from stft_neuro.simulate.early_exit import ExitSetup
        exit_setup = ExitSetup(rule=rule, class_emb=class_emb,
                               candidates=np.arange(class_emb.shape[0], dtype=np.int64),
                               seen=np.asarray(bench.seen(2), dtype=np.int64), bias=bias,
                               num_steps=int(plan.num_steps))
    return Setup(backend=backend, host=host, chip_from=chip_from, chip_file=chip_file, bundle=bundle,
                 checkpoint=None if checkpoint is None else str(checkpoint), alone=alone, model=model,
                 cfg=cfg, bench=bench, plan=plan, onnx_host=onnx_host, dynamic=dynamic, bias=bias,
                 class_emb=class_emb, split=split, chosen=chosen, picks=picks, samples=samples,
                 batch=int(batch), out=Path(out), ray_address=ray_address, ray_workers=ray_workers,
                 exit_setup=exit_setup, exit_source=exit_source)


def bundle_rule(bundle) -> Path | None:
    """The early-exit rule a bundle carries (``export`` copies the run's), or None."""
    from stft_neuro.simulate.early_exit import RULE_FILE
    if bundle is None or RULE_FILE not in bundle.manifest.get("files", {}):
        return None
    return bundle.file(RULE_FILE)


def _exit_rule(early_exit, max_drop, checkpoint, alone, model, bench, plan, bias, bundle=None):
    """The early-exit rule -> (rule, where it came from). A file: loaded and checked against the
    plan and ``b`` it was calibrated for. The run's (:data:`EARLY_EXIT_RUN`): ``RUN/early_exit.json``
    when it was calibrated for this plan, ``b`` and max drop, else calibrated now on stage-1
    validation (``early_exit.calibrate``; the reference simulator) and stored there; a bundle
    that runs alone (no checkpoint) uses the rule it carries (:func:`bundle_rule`)."""
    from stft_neuro.simulate import early_exit as EE
    if early_exit != EARLY_EXIT_RUN:
        try:
            rule = EE.ExitRule.load(early_exit)
        except EE.EarlyExitError as exc:
            raise SimulateError(f"simulate --early-exit: {exc}") from None
        cal = rule.calibration
        if cal.get("plan_sha256") not in (None, EE.plan_digest(plan)):
            raise SimulateError(f"simulate --early-exit: {early_exit} was calibrated for another deployment "
                                "plan than the one this run runs")
        if cal.get("bias") is not None and float(cal["bias"]) != float(bias):
            raise SimulateError(f"simulate --early-exit: {early_exit} was calibrated at b = {cal['bias']}, "
                                f"this run predicts at b = {bias}")
        return rule, str(early_exit)
    if alone:
        carried = bundle_rule(bundle)
        if carried is None:
            raise SimulateError("simulate --early-exit: the run's rule is calibrated on the training run's "
                                "validation split, and this bundle carries none; give --checkpoint RUN, "
                                "or the rule file: --early-exit FILE")
        if max_drop is not None:
            raise SimulateError("simulate --early-exit-max-drop: the bundle's rule is already calibrated "
                                "(calibrating needs the run: give --checkpoint RUN)")
        return _exit_rule(str(carried), None, checkpoint, alone, model, bench, plan, bias, bundle)
    path = Path(checkpoint) / EE.RULE_FILE
    drop = EE.DEFAULT_MAX_HM_DROP if max_drop is None else float(max_drop)
    if path.is_file():
        try:
            rule = EE.ExitRule.load(path)
        except EE.EarlyExitError:
            rule = None   # unreadable: calibrated again and replaced below
        if rule is not None:
            cal = rule.calibration
            if (cal.get("plan_sha256") == EE.plan_digest(plan) and cal.get("bias") == float(bias)
                    and cal.get("max_hm_drop") == drop):
                return rule, str(path)
    rule = EE.calibrate(model, bench, plan, bias, drop)
    rule.save(path)
    return rule, f"{path} (calibrated now)"


def pick_samples(bench, chosen, samples: int | None) -> list[tuple[str, int]]:
    """``samples`` per split of ``chosen`` (all when None or more than there are), drawn with
    :data:`SAMPLE_SEED` and kept in index order -> ``[(split name, index), ...]``."""
    picks = []
    for name in chosen:
        n = len(bench.splits[name])
        idx = np.arange(n)
        if samples is not None and samples < n:
            idx = np.sort(np.random.default_rng(SAMPLE_SEED).choice(n, int(samples), replace=False))
        picks.extend((name, int(i)) for i in idx)
    return picks


def _bundle_and_run(bundle_dir, checkpoint, host, backend):
    """-> (the loaded bundle or None, the checkpoint to load or None, whether the bundle runs
    alone: ``--host onnx`` on a bundle carrying the run's description, no checkpoint given)."""
    bundle, alone = None, False
    if bundle_dir is not None:
        from stft_neuro.export.bundle import load_bundle
        bundle = load_bundle(bundle_dir)
        alone = checkpoint is None and host == "onnx" and backend != "torch" and bundle.run is not None
        if checkpoint is None and not alone:
            source = bundle.manifest.get("source") or ""
            if source and Path(source).is_dir():
                checkpoint = source
            elif bundle.run is not None:
                raise SimulateError(
                    f"simulate: --host {host} --backend {backend} needs the training run and "
                    f"the bundle's source run {source!r} is not there: give --checkpoint RUN, or run "
                    "the bundle alone with --host onnx --backend lava|reference")
            else:
                raise SimulateError(
                    f"simulate: bundle {bundle_dir} holds no class embeddings nor calibration b (exported "
                    f"with --target {bundle.manifest.get('target')}) and its source run {source!r} is not "
                    "there: give --checkpoint RUN, or re-export with --target onnx|all")
    if backend == "torch" and checkpoint is None:
        raise SimulateError("simulate: --backend torch runs the checkpoint's chip module: give --checkpoint RUN")
    return bundle, checkpoint, alone


def _load_model(checkpoint, overrides, allow_pickle):
    """-> (model on CPU in eval mode, the run's config, the config with the data overrides, meta)."""
    from stft_neuro.checkpoint import load_run
    from stft_neuro.errors import CheckpointError
    model, run_cfg, meta = load_run(checkpoint)
    if model.spiking is None:
        raise CheckpointError(f"{checkpoint}: no spiking branch (spiking.enabled=false): nothing to simulate")
    cfg = _data_overrides(run_cfg, overrides, allow_pickle, "checkpoint")
    return model.cpu().eval(), run_cfg, cfg, meta


def _data_overrides(cfg, overrides, allow_pickle, whose: str):
    """The run's config with the command's ``--set data.*`` overrides and ``--allow-pickle``
    (nothing else may change: the model is ``whose``)."""
    from stft_neuro import config as config_mod
    from stft_neuro.errors import CheckpointError
    if any(not o.startswith("data.") for o in overrides):
        raise CheckpointError(f"simulate: only [data] keys can be overridden (the model is the {whose}'s)")
    cfg = config_mod.load(overrides=overrides, base=cfg)
    if allow_pickle:
        cfg = config_mod.from_dict({"data": {"allow_pickle": True}}, cfg)
    return cfg


def _bundle_run(bundle, overrides, allow_pickle):
    """(config, meta-like dict) of the training run a bundle carries (``manifest["run"]``)."""
    from stft_neuro import config as config_mod
    from stft_neuro.errors import ConfigError
    run = bundle.run
    try:
        base = config_mod.from_dict(run["config"])
    except ConfigError as exc:
        raise SimulateError(f"simulate: bundle {bundle.path}: its run configuration: {exc}") from None
    cfg = _data_overrides(base, overrides, allow_pickle, "bundle")
    meta = {"audio_dim": run["audio_dim"], "visual_dim": run["visual_dim"],
            "class_names": run["class_names"], "progress": {"best_bias": run["calibration_bias"]}}
    return cfg, meta


def _model_plan(model, meta, checkpoint, bench, run_cfg, overrides, allow_pickle):
    """The checkpoint's plan (``run_plan.run_plan``: a QAT run's own, a float run's stored one),
    with the chip switched to deploy mode so that the torch chip runs it. Deriving a missing plan
    calibrates on the run's own ``stage_2_train`` (its data, not the ``--set data.*`` overrides)."""
    from stft_neuro.run_plan import run_plan

    def calibration_split():
        if not overrides:
            return bench.splits["stage_2_train"]
        from stft_neuro.data import load_benchmark
        own = _data_overrides(run_cfg, [], allow_pickle, "checkpoint")
        return load_benchmark(own.data).splits["stage_2_train"]

    plan = run_plan(checkpoint, model, meta, calibration_split)
    model.spiking.set_deploy(True)
    model.eval()
    return plan


def _chip_plan(bundle, chip_from: str | None):
    """The plan the chip side runs, built from the bundle file ``chip_from`` names -> (plan, the
    source, the file). nir: ``plan_from_nir`` of ``spiking.nir`` (the default when the bundle has
    one: the interchange file is what runs); plan: ``plan.safetensors``; netx: the plan the netx
    file carries (``load_bundle`` verified file and plan agree; on Lava the file itself runs)."""
    from stft_neuro.export.bundle import NETX_FILE, NIR_FILE, PLAN_FILE
    files = bundle.manifest["files"]
    if chip_from is None:
        chip_from = "nir" if NIR_FILE in files else "plan"
    if chip_from == "plan":
        return bundle.plan, "plan", PLAN_FILE
    if chip_from == "nir":
        if NIR_FILE not in files:
            raise SimulateError(f"simulate --chip-from nir: bundle {bundle.path} has no {NIR_FILE} (exported "
                                f"with --target {bundle.manifest.get('target')}): use --chip-from plan or "
                                "re-export with --target nir|all")
        import nir

        from stft_neuro.converters.nir_out import NIRExportError, plan_from_nir
        try:
            return plan_from_nir(nir.read(str(bundle.path / NIR_FILE)), where=NIR_FILE), "nir", NIR_FILE
        except NIRExportError as exc:
            raise SimulateError(f"simulate: {exc}") from None
    if NETX_FILE not in files:
        raise SimulateError(f"simulate --chip-from netx: bundle {bundle.path} has no {NETX_FILE} (exported "
                            f"with --target {bundle.manifest.get('target')}): re-export with --target lava|all")
    return bundle.netx_plan, "netx", NETX_FILE


def _onnx_host(bundle, bench):
    """The bundle's host graphs in onnxruntime, checked against the benchmark's feature widths."""
    from stft_neuro.export.onnx_host import CUE_FILE, ENCODER_FILE, OnnxHost
    bundle.file(ENCODER_FILE)  # one-line error when the bundle has no host graphs
    onnx_host = OnnxHost(bundle.path)
    d = onnx_host.description
    for what, got, want in (("audio", bench.audio_dim, d["audio_dim"]),
                            ("visual", bench.visual_dim, d["visual_dim"])):
        if got != want:
            raise SimulateError(f"simulate: the bundle's host graphs take {what} features of width "
                                f"{want}, the benchmark has {got}")
    if onnx_host.dynamic_threshold:
        bundle.file(CUE_FILE)
    return onnx_host
