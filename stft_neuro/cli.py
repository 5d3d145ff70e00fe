"""The ``stft-neuro`` command line.

Every subcommand prints a human-readable table by default and JSON with ``--json``; runs that
write a folder leave their resolved config and a machine-readable result there. Bad input ends in
one line ``stft-neuro: error: ...`` and exit status 1 (2 for unknown options, as argparse does).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from stft_neuro import __version__

EPILOG = """\
examples:
  stft-neuro doctor                     versions, Lava import, a 1-step Lava fixed_pt run
  stft-neuro data                       generate the synthetic benchmark and summarise it
  stft-neuro train --out runs/ucf       train STFT (both AVCA stages) into runs/ucf
  stft-neuro train --set train.epochs=5 --set fusion.kind=concat --out runs/concat
  stft-neuro eval --checkpoint runs/ucf S/U/HM/ZSL of a trained run
  stft-neuro train --qat --from runs/ucf --out runs/ucf-qat --set train.epochs=3
                                        fine-tune to Loihi 2's exact integer arithmetic
  stft-neuro eval --checkpoint runs/ucf-qat --backend reference
                                        the same, through the bit-exact reference simulator
  stft-neuro resources --checkpoint runs/ucf-qat   design rules, cores, memory on Loihi 2
  stft-neuro export --checkpoint runs/ucf-qat --target lava --out bundles/ucf
                                        the deployment bundle (plan, netx HDF5, manifest)
  stft-neuro demo                       all of the above on small defaults
"""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="TOML", help="TOML file with [data], [spiking], [transformer], "
                   "[fusion], [train] tables (any subset of keys)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config key, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow loading pickled feature files (TCaF layout); pickles can run code")


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stft-neuro", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Train the Spiking Tucker Fusion Transformer for audio-visual zero-shot "
                    "learning and deploy its spiking branch to Loihi 2 (Lava).")
    parser.add_argument("--version", action="version", version=f"stft-neuro {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log library messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("doctor", help="check the installation and run Lava's fixed_pt simulator once",
                       description="Print the versions of every dependency, whether Lava imports, and "
                                   "run a tiny Dense+LIF network in Lava fixed_pt, compared spike for "
                                   "spike with the reference simulator. Exit 1 if anything fails.")
    p.add_argument("--no-lava-run", action="store_true", help="skip the Lava simulation")
    _add_json(p)

    p = sub.add_parser("data", help="load or generate the benchmark and print its summary",
                       description="Load (avca, tcaf) or generate (synthetic) the AV-GZSL benchmark "
                                   "given by the [data] config and print classes and samples per "
                                   "split, and feature shapes.")
    _add_config_args(p)
    _add_json(p)

    p = sub.add_parser("train", help="train STFT with the two-stage AVCA protocol",
                       description="Stage 1 picks the epoch count and calibration b on validation; "
                                   "stage 2 retrains and tests. Writes config.json, meta.json, "
                                   "model.safetensors and metrics.json into --out.")
    _add_config_args(p)
    p.add_argument("--out", metavar="RUN", help="run folder (default runs/<timestamp>)")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run folder")
    p.add_argument("--qat", action="store_true",
                   help="quantization-aware fine-tuning of the float run given by --from: the "
                        "spiking branch then computes Loihi 2's integer arithmetic exactly")
    p.add_argument("--from", dest="from_run", metavar="RUN", help="float run to fine-tune (with --qat)")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="data-parallel training in N processes on this machine (torchrun, "
                        "DistributedDataParallel: gloo on CPU, NCCL with one GPU per process); the "
                        "global batch train.batch_size must be divisible by N; 1 or absent: one process")
    _add_json(p)

    p = sub.add_parser("eval", help="S/U/HM/ZSL of a trained run on its benchmark",
                       description="Evaluate a run folder on stage-2 test splits with the calibration "
                                   "b chosen on stage-1 validation during training.")
    p.add_argument("--checkpoint", required=True, metavar="RUN", help="run folder written by train")
    p.add_argument("--backend", choices=("torch", "reference"), default="torch",
                   help="who runs the spiking branch: the model's own torch module, or (QAT runs) "
                        "the bit-exact reference simulator of the exported integer network")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="data.KEY=VALUE",
                   help="evaluate on other data than the run was trained on, e.g. --set "
                        "data.source=avca --set data.root=/path/UCF (only [data] keys)")
    p.add_argument("--allow-pickle", action="store_true", help="allow pickled feature files")
    _add_json(p)

    p = sub.add_parser("resources", help="Loihi 2 resources of a run's spiking branch: quantization, "
                                         "design rules, cores",
                       description="Quantize the run's spiking branch to Loihi 2 units (a float run: the "
                                   "plan stored in its run folder, RUN/plan.safetensors), check "
                                   "every design rule, map the layers onto cores and report memory and "
                                   "utilisation per core. Exit 1 if a design rule is violated.")
    p.add_argument("--checkpoint", required=True, metavar="RUN", help="run folder written by train")
    p.add_argument("--allow-pickle", action="store_true", help="allow pickled feature files")
    _add_json(p)

    p = sub.add_parser(
        "export", help="write the deployment bundle: plan, NIR, netx HDF5 for Lava, host ONNX, manifest",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Freeze the run's spiking branch into a deployment plan (a float run: the plan "
                    "stored in its run folder, RUN/plan.safetensors), check Loihi 2's design "
                    "rules, and write the bundle a hybrid simulation runs without the checkpoint.",
        epilog="targets:\n"
               "  nir    plan.safetensors + spiking.nir (Affine -> Delay -> CubaLIF per layer; the "
               "integer\n         parameters and the threshold-modulation input in metadata)\n"
               "  lava   plan.safetensors + spiking_netx.h5 (lava-dl netx; static thresholds); when\n"
               "         netx cannot carry the run's plan, the plan derived for netx by the one\n"
               "         quantizer (plan_netx.safetensors), its cost printed and in the manifest\n"
               "  onnx   plan.safetensors + host_*.onnx (encoder, threshold cue, readout)\n"
               "  all    everything; manifest.json (bridge, timing, design rules, SHA-256 per file)\n"
               "         is always written. Nothing is left behind if the export fails.\n"
               "NIR profiles (--nir-profile, targets nir and all):\n"
               "  exact     spiking.nir only (the default; faithful, Delay nodes)\n"
               "  snntorch  also spiking_snntorch.nir, which snnTorch's import_from_nir and\n"
               "            nirtorch's nir_to_torch load: no Delay nodes (layer l runs l steps\n"
               "            ahead of the deployed one), static thresholds, one Output; biases\n"
               "            as an Affine bias on the synaptic current (an approximation, see\n"
               "            the manifest; exact for runs trained with spiking.bias=false)")
    p.add_argument("--checkpoint", required=True, metavar="RUN", help="run folder written by train")
    p.add_argument("--target", required=True, choices=("nir", "lava", "onnx", "all"))
    p.add_argument("--nir-profile", default="exact", choices=("exact", "snntorch"),
                   help="also write the NIR graph for snnTorch/nirtorch (default: exact only)")
    p.add_argument("--out", required=True, metavar="DIR", help="bundle folder to create")
    p.add_argument("--force", action="store_true", help="replace DIR if it exists")
    p.add_argument("--allow-pickle", action="store_true", help="allow pickled feature files")
    _add_json(p)

    p = sub.add_parser("demo", help="doctor + benchmark summary + a small training run + results",
                       description="Runs the whole pipeline on built-in defaults in a few minutes on "
                                   "2 CPU cores (real UCF-GZSL split and word2vec when "
                                   "../shared/data/avgzsl is there).")
    p.add_argument("--out", default="runs/demo", metavar="RUN", help="run folder (default runs/demo)")
    _add_config_args(p)

    from stft_neuro.run_nir import add_parser as add_run_nir_parser
    add_run_nir_parser(sub)
    from stft_neuro.deploy_nir import add_parser as add_deploy_parser
    add_deploy_parser(sub)
    from stft_neuro.simulate import add_parser as add_simulate_parser
    add_simulate_parser(sub)
    from stft_neuro.report.cli import add_parser as add_report_parser
    add_report_parser(sub)
    return parser


def _load_config(args):
    from stft_neuro import config as config_mod
    return _with_pickle(config_mod.load(args.config, args.overrides), args)


def _with_pickle(cfg, args):
    """``--allow-pickle`` sets ``data.allow_pickle``."""
    if not getattr(args, "allow_pickle", False):
        return cfg
    from stft_neuro import config as config_mod
    return config_mod.from_dict({"data": {"allow_pickle": True}}, cfg)


def _print(obj, as_json: bool, table: str) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True) if as_json else table)


def cmd_doctor(args) -> int:
    from stft_neuro.doctor import diagnose, format_report
    report = diagnose(run_lava=not args.no_lava_run)
    _print(report, args.json, format_report(report))
    return 0 if report["healthy"] else 1


def cmd_data(args) -> int:
    from stft_neuro.data import load_benchmark
    bench = load_benchmark(_load_config(args).data)
    _print(bench.summary(), args.json, bench.summary_table())
    return 0


class _TrainDisplay:
    """Progress bar over batches with loss and validation HM (plain lines when not a terminal)."""

    def __init__(self, cfg, bench, quiet: bool) -> None:
        from tqdm import tqdm
        stages = {"both": (1, 2), "1": (1,), "2": (2,)}[cfg.train.stages]
        per_epoch = -(-len(bench.splits["stage_1_train"].labels) // cfg.train.batch_size)
        self.bar = tqdm(total=per_epoch * cfg.train.epochs * len(stages), unit="batch",
                        disable=True if quiet else None, file=sys.stderr, dynamic_ncols=True)
        self.plain = not quiet and self.bar.disable
        self.quiet = quiet
        self.hm = float("nan")

    def batch(self, loss: float) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.3f}", val_HM=f"{self.hm:.1f}", refresh=False)

    def epoch(self, row: dict) -> None:
        self.hm = row.get("val_HM", self.hm)
        if self.plain:
            hm = f" val S {row['val_S']:.1f} U {row['val_U']:.1f} HM {row['val_HM']:.1f}" if "val_HM" in row else ""
            print(f"stage {row['stage']} epoch {row['epoch']:>3}: loss {row['loss_total']:.4f}{hm} "
                  f"({row['samples_per_s']:.0f} samples/s)", file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def _results_table(results: dict) -> str:
    from stft_neuro.protocol import GZSLMetrics, format_table
    rows = {}
    if "stage1_val_metrics" in results:
        rows["stage 1 val"] = GZSLMetrics(**results["stage1_val_metrics"])
    if "stage2_test" in results:
        rows["stage 2 test"] = GZSLMetrics(**results["stage2_test"])
    return format_table(rows)


def _train(cfg, run_dir: Path, resume: bool, quiet: bool, dp=None) -> dict:
    """Train (``dp``: this rank of a data-parallel run, ``distributed.start``; None: one process)."""
    from stft_neuro.data import load_benchmark
    from stft_neuro.distributed import LOCAL
    from stft_neuro.train import Trainer
    bench = load_benchmark(cfg.data)
    display = _TrainDisplay(cfg, bench, quiet)
    try:
        results = Trainer(cfg, bench, run_dir, on_epoch=display.epoch, on_batch=display.batch,
                          dp=dp or LOCAL).run(resume)
    finally:
        display.close()
    return results


def _train_setup(args, qat_config: bool = True):
    """Validate ``train``'s options -> (config, run folder). For QAT the config is the float run's
    with the overrides (None when not ``qat_config``: qat_finetune reads it itself)."""
    from stft_neuro import config as config_mod
    from stft_neuro.checkpoint import read_json
    from stft_neuro.errors import UserError
    from stft_neuro.train import check_resumable
    stamp = time.strftime('%Y%m%d-%H%M%S')
    if args.nproc is not None and args.nproc < 1:
        raise UserError(f"--nproc must be at least 1, not {args.nproc}")
    if args.qat or args.from_run:
        if not (args.qat and args.from_run):
            raise UserError("--qat and --from RUN go together: --qat --from runs/float")
        if args.resume or args.config:
            raise UserError("--qat takes --set overrides only (not --resume or --config)")
        from stft_neuro.qat import load_float_run
        cfg = load_float_run(args.from_run, args.overrides)[1] if qat_config else None
        return cfg, Path(args.out or f"runs/{stamp}-qat")
    if args.resume:
        run_dir = Path(args.resume)
        check_resumable(run_dir)
        cfg = config_mod.from_run_dict(read_json(run_dir / "config.json", "config"))
        if args.overrides or args.config:
            cfg = config_mod.load(args.config, args.overrides, base=cfg)
        return cfg, run_dir
    return _load_config(args), Path(args.out or f"runs/{stamp}")


def cmd_train(args) -> int:
    from stft_neuro import distributed
    if distributed.launched_by_torchrun():
        return _train_rank(args)
    parallel = args.nproc is not None and args.nproc > 1
    cfg, run_dir = _train_setup(args, qat_config=parallel)
    if parallel:
        return _launch_train(args, cfg, run_dir)
    if args.qat:
        return _train_qat(args, run_dir)
    results = _train(cfg, run_dir, resume=bool(args.resume), quiet=args.json)
    _print(results, args.json, _results_table(results) + f"\n\nrun folder: {run_dir}")
    return 0


def _launch_train(args, cfg, run_dir: Path) -> int:
    """``--nproc N``: check what one line can refuse here, then run this command in N processes
    through torchrun (``distributed.launch``) with the run folder fixed for all of them."""
    import torch

    from stft_neuro import distributed
    from stft_neuro.errors import UserError
    from stft_neuro.train import resolve_device
    distributed.check_batch(cfg.train.batch_size, args.nproc)
    if resolve_device(cfg.train.device).type == "cuda" and args.nproc > torch.cuda.device_count():
        raise UserError(f"--nproc {args.nproc} on CUDA needs {args.nproc} GPUs (NCCL, one per process); "
                        f"this machine has {torch.cuda.device_count()}")
    argv = (["-v"] if args.verbose else []) + ["train"]
    argv += ["--resume", str(run_dir)] if args.resume else ["--out", str(run_dir)]
    if args.qat:
        argv += ["--qat", "--from", str(args.from_run)]
    if args.config:
        argv += ["--config", args.config]
    argv += [a for o in args.overrides for a in ("--set", o)]
    argv += [flag for flag, on in (("--allow-pickle", args.allow_pickle), ("--json", args.json)) if on]
    return distributed.launch(args.nproc, argv, verbose=args.verbose)


def _train_rank(args) -> int:
    """One rank of a data-parallel run (under torchrun). Only rank 0 prints results. A user error
    goes to torchrun's error file; started by ``--nproc`` the launcher prints it once, under a
    plain torchrun rank 0 prints it and another rank prefixes it with its rank (torchrun may stop
    rank 0 before it prints). An interrupt is reported by the launcher, or by rank 0 alone."""
    import os

    from stft_neuro import distributed
    from stft_neuro.errors import UserError
    from stft_neuro.train import resolve_device
    try:
        if args.nproc is not None:
            raise UserError("--nproc starts torchrun itself: under torchrun, leave it out")
        cfg, run_dir = _train_setup(args)
        distributed.check_batch(cfg.train.batch_size, int(os.environ["WORLD_SIZE"]))
        dp = distributed.start(resolve_device(cfg.train.device), cfg.train.threads)
        try:
            run_dir = Path(dp.on_main(lambda: str(run_dir)))  # rank 0's default name, for all
            if args.qat:
                return _train_qat(args, run_dir, dp)
            results = _train(cfg, run_dir, resume=bool(args.resume), quiet=args.json or not dp.is_main, dp=dp)
            if dp.is_main:
                _print(results, args.json, _results_table(results) + f"\n\nrun folder: {run_dir}")
            return 0
        finally:
            distributed.stop(dp)
    except UserError as exc:
        if distributed.report_error(str(exc)):
            return 1
        if distributed.env_rank() != 0:
            print(f"stft-neuro: error: (rank {distributed.env_rank()}) {exc}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        if distributed.env_rank() != 0 or os.environ.get(distributed.LAUNCHER_ENV) == "1":
            return 130
        raise


def _train_qat(args, run_dir: Path, dp=None) -> int:
    from stft_neuro.distributed import LOCAL
    from stft_neuro.qat import qat_finetune
    dp = dp or LOCAL
    rows = []

    def on_epoch(row):
        rows.append(row)
        if not args.json and dp.is_main:
            print(f"qat epoch {row['epoch']:>3}: loss {row['loss_total']:.4f} "
                  f"({row['samples_per_s']:.0f} samples/s)", file=sys.stderr)

    results = qat_finetune(args.from_run, run_dir, args.overrides, on_epoch=on_epoch, dp=dp)
    if not dp.is_main:
        return 0
    from stft_neuro.protocol import GZSLMetrics, format_table
    table = format_table({"float": GZSLMetrics(**results["float"]),
                          "quantized (PTQ)": GZSLMetrics(**results["ptq"]),
                          "QAT": GZSLMetrics(**results["qat"])})
    q = results["quantization"]
    table += (f"\n\nHM drop QAT vs float: {results['hm_drop_qat_vs_float']:.2f} points; weights "
              f"saturated: {q['weights_saturated']}; input {q['input_bits']}-bit graded, scale "
              f"{q['input_scale']:.4g}\nrun folder: {run_dir}")
    _print(results, args.json, table)
    return 0


def _frozen_plan(args, with_bench: bool = False):
    """Load ``args.checkpoint`` and its deployment plan (``run_plan.py``: a float run's stored
    plan, or derived once on CPU) -> (model, cfg, meta, plan, bench); ``bench`` is the run's
    benchmark when ``with_bench`` asks for it or the plan had to be derived, else None."""
    from stft_neuro.checkpoint import load_run
    from stft_neuro.data import load_benchmark
    from stft_neuro.errors import CheckpointError
    from stft_neuro.run_plan import run_plan
    model, cfg, meta = load_run(args.checkpoint)
    if model.spiking is None:
        raise CheckpointError(f"{args.checkpoint}: no spiking branch (spiking.enabled=false)")
    loaded = {}

    def bench():
        if "bench" not in loaded:
            loaded["bench"] = load_benchmark(_with_pickle(cfg, args).data)
        return loaded["bench"]

    plan = run_plan(args.checkpoint, model, meta, lambda: bench().splits["stage_2_train"])
    return model, cfg, meta, plan, (bench() if with_bench else loaded.get("bench"))


def cmd_export(args) -> int:
    from stft_neuro.export.bundle import export_bundle, run_description
    from stft_neuro.hw_targets.loihi2.report import format_resource_report, resource_report
    from stft_neuro.qat import quantization_summary
    from stft_neuro.simulate.early_exit import RULE_FILE as EXIT_RULE_FILE
    host = args.target in ("onnx", "all")  # the host side: carry what simulate needs of the run
    netx = args.target in ("lava", "all")  # the netx file: may need the plan derived for netx
    model, cfg, meta, plan, bench = _frozen_plan(args, with_bench=host or netx)
    model = model.cpu().eval()
    run = run_description(model, cfg, meta, bench.class_embeddings) if host else None
    netx_plan, netx_cost = _netx_plan(model, plan, bench, meta, quiet=args.json) if netx else (None, None)
    manifest = export_bundle(model, plan, quantization_summary(model), args.out, args.target,
                             force=args.force, source=str(args.checkpoint), run=run,
                             nir_profile=getattr(args, "nir_profile", "exact"),
                             netx_plan=netx_plan, netx_cost=netx_cost,
                             early_exit=Path(args.checkpoint) / EXIT_RULE_FILE,
                             progress=None if args.json else print)
    if args.json:
        _print(manifest, True, "")
        return 0
    print(format_resource_report(resource_report(plan.network)))
    if netx_cost is not None:
        from stft_neuro.export.netx_plan import format_cost
        print("\n" + format_cost(netx_cost))
    print(f"\nbundle {args.out} (target {args.target}, from a {'QAT' if meta.get('deploy') else 'float'} run):")
    for name, info in manifest["files"].items():
        print(f"  {name:<24} {info['bytes']:>12,} bytes  sha256 {info['sha256'][:16]}...")
    print(f"  {'manifest.json':<24} bridge, timing, design rules, checksums, which plan each file carries")
    return 0


def _netx_plan(model, plan, bench, meta, quiet: bool):
    """(None, None) when netx carries the run's plan; else the plan derived for netx
    (``export/netx_plan.py``) and its cost against the run's plan: weights zeroed, thresholds
    coarser, and S/U/HM of both on the stage-2 test split through the reference simulator."""
    from stft_neuro.export import netx_plan as NP
    problem = NP.netx_problem(plan)
    if problem is None:
        return None, None
    derived, _ = NP.derive_netx_plan(model.spiking.chip)
    if not quiet:
        print(f"netx cannot carry the run's plan ({problem.split(';')[0]}): deriving the netx plan "
              "from the run with the one quantizer (netx_compatible) and measuring its cost on the "
              "test split (reference simulator)")
    cost = {"reason": problem, "static": NP.static_cost(plan, derived),
            "hm": None, "hm_how": "stage-2 test split, host = the run's torch model, chip = reference "
                                  "simulator of each plan, closed loop, calibration b of the run"}
    hm = NP.hm_cost(model, bench, float(meta["progress"]["best_bias"]),
                    {"run_plan": plan, "netx_plan": derived})
    cost["hm"] = {**hm, "hm_difference": hm["netx_plan"]["HM"] - hm["run_plan"]["HM"]}
    return derived, cost


def cmd_resources(args) -> int:
    from stft_neuro.hw_targets.loihi2.report import format_resource_report, resource_report
    from stft_neuro.qat import quantization_summary
    model, _, _, plan, _ = _frozen_plan(args)
    report = resource_report(plan.network)
    report["quantization"] = quantization_summary(model)
    q = report["quantization"]
    text = format_resource_report(report) + "\n\nquantization: " + ", ".join(
        f"{lay['name']} {lay['weights_saturated']}/{lay['weights']} weights saturated"
        for lay in q["layers"]) + f"; input {q['input_bits']}-bit graded, scale {q['input_scale']:.4g}"
    _print(report, args.json, text)
    return 0 if report["design_rules"]["passed"] else 1


def cmd_eval(args) -> int:
    from stft_neuro import config as config_mod
    from stft_neuro.checkpoint import check_fits, load_run
    from stft_neuro.data import load_benchmark
    from stft_neuro.errors import CheckpointError
    from stft_neuro.train import evaluate_split_pair, resolve_device
    model, cfg, meta = load_run(args.checkpoint)
    if any(not o.startswith("data.") for o in args.overrides):
        raise CheckpointError("eval: only [data] keys can be overridden (the model is the checkpoint's)")
    cfg = _with_pickle(config_mod.load(overrides=args.overrides, base=cfg), args)
    bench = load_benchmark(cfg.data)
    check_fits(bench, meta, args.checkpoint)
    device = resolve_device(cfg.train.device)
    bias = float(meta["progress"]["best_bias"])
    backend = None
    if args.backend == "reference":
        if not meta.get("deploy"):
            raise CheckpointError(f"{args.checkpoint}: --backend reference needs a QAT run "
                                  "(stft-neuro train --qat --from RUN); this is a float run")
        from stft_neuro.sim.reference import ReferenceSimulator
        backend = ReferenceSimulator(model.spiking.deployment_plan()[0], device=device)
    metrics = evaluate_split_pair(model.to(device), bench, 2, device, bias, backend=backend)
    result = {"checkpoint": str(args.checkpoint), "backend": args.backend, "stage2_test": metrics.to_dict()}
    _print(result, args.json, _results_table(result))
    return 0


def _dispatch(argv: list[str]) -> int:
    """Run one subcommand in this process (the demo chains them); user errors propagate."""
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


def cmd_demo(args) -> int:
    from stft_neuro.demo import main as demo_main
    return demo_main(args)


COMMANDS = {"doctor": cmd_doctor, "data": cmd_data, "train": cmd_train, "eval": cmd_eval,
            "resources": cmd_resources, "export": cmd_export, "demo": cmd_demo}


def cmd_run_nir(args) -> int:
    from stft_neuro.run_nir import main as run_nir_main
    return run_nir_main(args)


COMMANDS["run-nir"] = cmd_run_nir


def cmd_deploy(args) -> int:
    from stft_neuro.deploy_nir import main as deploy_main
    return deploy_main(args)


COMMANDS["deploy"] = cmd_deploy


def cmd_simulate(args) -> int:
    from stft_neuro.simulate import main as simulate_main
    return simulate_main(args)


COMMANDS["simulate"] = cmd_simulate


def cmd_report(args) -> int:
    from stft_neuro.report.cli import main as report_main
    return report_main(args)


COMMANDS["report"] = cmd_report


def main(argv: list[str] | None = None) -> int:
    from stft_neuro.errors import UserError
    from stft_neuro.hw_targets.errors import TargetError
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except (UserError, TargetError) as exc:
        print(f"stft-neuro: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stft-neuro: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
