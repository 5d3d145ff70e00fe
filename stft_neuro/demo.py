"""``stft-neuro demo``: the whole pipeline on small defaults, and the checks it must pass.

doctor -> benchmark summary -> float training -> the float run quantized (design rules, cores,
the integer network on the reference simulator) -> one epoch of QAT -> ``export --target all`` ->
``simulate`` of the whole stage-2 test split on the reference simulator and on Lava (chip side
from the bundle's NIR file) -> the netx file in lava-dl's own ``netx.hdf5.Network`` on a few
samples -> ``report`` of the Lava run. Every stage is the CLI command a user would run (the same
functions), in this process.

The demo's own checks, each of which ends it with exit status 1 and one line
(``UserError``) naming what differs: Loihi 2's design rules pass for the quantized float run; the
Lava hybrid run's records equal the reference simulator's (every key of ``records.npz``); the netx
file's last-layer spikes equal the reference simulator's. A failed doctor (Lava does not run)
gives exit status 1 after the pipeline.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

#: Samples per test split the demo also runs through the netx file in lava-dl's own Network
#: (one Lava runtime per sample, ~2.5 s each at the STFT size), against the reference simulator.
DEMO_NETX_SAMPLES = 2


def main(args) -> int:
    """The ``demo`` command: ``args.out`` (run folder), config options; returns the exit status."""
    from stft_neuro.cli import _load_config, _results_table, _train
    from stft_neuro.data import load_benchmark
    from stft_neuro.doctor import diagnose, format_report
    cfg = _load_config(args)
    print("== stft-neuro doctor ==")
    report = diagnose()
    print(format_report(report))
    print("\n== benchmark ==")
    bench = load_benchmark(cfg.data)
    print(bench.summary_table())
    print(f"\n== training STFT ({cfg.train.epochs} epochs, AVCA stages {cfg.train.stages}) ==")
    results = _train(cfg, Path(args.out), resume=False, quiet=False)
    print("\n" + _results_table(results))
    print(f"\nrun folder: {args.out} (config.json, model.safetensors, plan.safetensors, metrics.json)")
    if cfg.spiking.enabled:
        print("\n== the spiking branch on Loihi 2 (quantized without fine-tuning) ==")
        print(deployment_check(Path(args.out), bench))
        deployment(Path(args.out), bench, results, getattr(args, "allow_pickle", False))
    return 0 if report["healthy"] else 1


def deployment_check(run: Path, bench) -> str:
    """The float run's stored plan (``run_plan.py``): design rules (a violation fails the demo),
    cores, and the test metrics of the integer network run by the reference simulator."""
    from stft_neuro.checkpoint import load_run
    from stft_neuro.errors import UserError
    from stft_neuro.hw_targets.loihi2.report import resource_report
    from stft_neuro.protocol import GZSLMetrics, format_table
    from stft_neuro.run_plan import run_plan
    from stft_neuro.sim.reference import ReferenceSimulator
    from stft_neuro.train import evaluate_split_pair, resolve_device
    model, cfg, meta = load_run(run)
    device = resolve_device(cfg.train.device)
    plan = run_plan(run, model, meta, lambda: bench.splits["stage_2_train"])
    _, quant = model.spiking.deployment_plan()
    model.spiking.set_deploy(True)
    rep = resource_report(plan.network)
    rules = rep["design_rules"]
    if not rules["passed"]:
        raise UserError(f"demo: the quantized float run {run} breaks {rules['errors']} of Loihi 2's design "
                        "rules (stft-neuro resources --checkpoint RUN lists them)")
    bias = float(meta["progress"]["best_bias"])
    metrics = evaluate_split_pair(model.to(device), bench, 2, device, bias,
                                  backend=ReferenceSimulator(plan, device=device))
    return (f"design rules: pass ({len(rules['rules_checked'])} "
            f"checked, {rules['errors']} errors, {rules['warnings']} warnings); "
            f"{rep['totals']['cores_used']} cores; {quant.weights_saturated} weights saturated\n"
            + format_table({"stage 2 test, integer": GZSLMetrics(**metrics.to_dict())})
            + "\n(fine-tune with: stft-neuro train --qat --from " + str(run) + " --out RUN)")


def deployment(out: Path, bench, float_results: dict, allow_pickle: bool) -> None:
    """QAT for one epoch, the bundle of every target, the hybrid simulation of the whole test split
    on the reference simulator and on Lava (the records must be identical: a difference fails the
    demo), the netx file in lava-dl's own Network against the reference simulator on a few test
    samples (must be bit-exact), the metrics side by side, and the report of the Lava run."""
    import numpy as np

    from stft_neuro.cli import _dispatch, cmd_export
    from stft_neuro.errors import UserError
    from stft_neuro.protocol import GZSLMetrics, format_table
    from stft_neuro.qat import qat_finetune
    print("\n== QAT: one epoch of fine-tuning in Loihi 2 arithmetic (deploy mode) ==")
    qat_dir = out / "qat"
    qat = qat_finetune(out, qat_dir, ["train.epochs=1"], bench=bench)
    print(f"run folder: {qat_dir}")
    print("\n== export --target all: the deployment bundle of the QAT run (plan, NIR, netx, ONNX host) ==")
    bundle = out / "bundle"
    cmd_export(argparse.Namespace(checkpoint=str(qat_dir), target="all", out=str(bundle), force=True,
                                  json=False, allow_pickle=allow_pickle))
    print("\n== hybrid simulation of the whole test split: host and spiking branch exchange tensors "
          "every step; the chip side is built from the bundle's NIR file ==")
    sims = {}
    for backend in ("reference", "lava"):
        sim_dir = out / f"sim-{backend}"
        _dispatch(["simulate", "--bundle", str(bundle), "--checkpoint", str(qat_dir), "--backend", backend,
                   "--chip-from", "nir", "--split", "all", "--out", str(sim_dir), "--force"])
        sims[backend] = sim_dir
    res = {b: json.loads((d / "results.json").read_text()) for b, d in sims.items()}
    with np.load(sims["reference"] / "records.npz") as a, np.load(sims["lava"] / "records.npz") as b:
        differ = [k for k in a.files if k not in b.files or not np.array_equal(a[k], b[k])]
        differ += [k for k in b.files if k not in a.files]
    n = res["lava"]["samples"]
    print("\n== float vs QAT vs reference vs Lava-hybrid (stage-2 test split) ==")
    print(format_table({
        "float (stage 2 test)": GZSLMetrics(**float_results["stage2_test"]),
        "quantized, no fine-tuning (PTQ)": GZSLMetrics(**qat["ptq"]),
        "QAT (torch deploy mode)": GZSLMetrics(**qat["qat"]),
        f"QAT, reference hybrid ({n} samples)": GZSLMetrics(**res["reference"]["metrics"]),
        f"QAT, Lava hybrid ({n} samples)": GZSLMetrics(**res["lava"]["metrics"])}))
    lava_t = res["lava"]["timings"]
    print(f"Lava bridge {lava_t['bridge_per_step_ms']:.1f} ms per step (batch of "
          f"{res['lava']['batch']}), start-up {lava_t['startup_s']:.1f} s")
    if differ:
        raise UserError(f"demo: the Lava hybrid run differs from the reference simulator's in "
                        f"{', '.join(differ)} ({sims['lava']} vs {sims['reference']})")
    print(f"Lava == reference: every record of the {n} samples identical (spikes of every layer, "
          "thetas, payloads, predictions)")
    print("\n== the netx file in lava-dl's own netx.hdf5.Network vs the reference simulator ==")
    print(netx_check(bundle, qat_dir, bench))
    print("\n== report of the Lava hybrid run ==")
    _dispatch(["report", "--run", str(sims["lava"]), "--html", str(out / "report.html"),
               "--json", str(out / "report.json")])
    e = json.loads((out / "report.json").read_text())["energy"]
    ann = e["ann_all_on_host"]
    print(f"\nenergy per sample (estimates): chip {e['chip'] / 1e6:.2f} uJ vs the spiking branch as an ANN "
          f"on the host {ann['spiking_branch_as_ann'] / 1e6:.2f} uJ ({ann['chip_over_spiking_branch_as_ann']:.2f}x); "
          f"hybrid {e['hybrid_total'] / 1e6:.1f} uJ vs all on the host {ann['total_with_host'] / 1e6:.1f} uJ "
          f"(plot: {out / 'loihi_vs_ann.png'})")
    print(f"report: {out / 'report.html'} (and report.json, PNG plots beside it)")


def netx_check(bundle_dir: Path, qat_dir: Path, bench) -> str:
    """The bundle's netx file, loaded by lava-dl's ``netx.hdf5.Network`` and run in Lava fixed_pt on
    the host's payloads of a few test samples (static thresholds: netx has no threshold-modulation
    port), against the reference simulator of the plan the file carries; a difference fails."""
    import numpy as np
    import torch

    from stft_neuro.checkpoint import load_run
    from stft_neuro.converters.netx_out import run_netx
    from stft_neuro.errors import UserError
    from stft_neuro.export.bundle import NETX_FILE, load_bundle
    from stft_neuro.sim.reference import ReferenceSimulator
    b = load_bundle(bundle_dir)
    plan = b.netx_plan
    model, _, _ = load_run(qat_dir)
    rows = []
    for name in ("stage_2_test_seen", "stage_2_test_unseen"):
        split = bench.splits[name]
        k = min(DEMO_NETX_SAMPLES, len(split.labels))
        a, v, n = (torch.as_tensor(x[:k]) for x in (split.audio, split.visual, split.lengths))
        with torch.no_grad():
            rows.append(plan.encode_input(model.spiking.encode(a, v, n)[0]))
    x = torch.cat(rows, dim=1)                                           # (T, B, n_in)
    x = torch.cat([x, x.new_zeros(plan.num_layers, *x.shape[1:])])      # see the last inputs through
    ref, _ = ReferenceSimulator(plan).run(x)
    lava = run_netx(b.file(NETX_FILE), x.numpy())
    same = np.array_equal(lava, ref[-1].numpy())
    spikes = [int(s.sum()) for s in ref]
    which = "plan_netx.safetensors, derived for netx" if "plan_netx.safetensors" in b.manifest["files"] \
        else "the run's plan"
    if not same:
        raise UserError(f"demo: the netx file in netx.hdf5.Network differs from the reference simulator "
                        f"on {x.shape[1]} test samples ({b.file(NETX_FILE)})")
    return (f"{x.shape[1]} test samples, {x.shape[0]} steps, static thresholds, the plan the file carries "
            f"({which}): last-layer spikes identical to the reference simulator's "
            f"(spikes per layer {spikes})")
