"""``stft-neuro simulate``: the hybrid run, host <-> step contract <-> a chosen backend, with records.

::

    stft-neuro simulate (--bundle DIR | --checkpoint RUN) --backend lava|reference|torch
                        [--host torch|onnx] [--chip-from nir|plan|netx]
                        [--split stage_2_test_seen|stage_2_test_unseen|all]
                        [--samples N] [--batch B] --out DIR [--json]
                        [--ray [ADDRESS] [--ray-workers N]]

The host (torch: the checkpoint's ``SpikingBranch``/``STFT``; onnx: the bundle's ``host_*.onnx`` in
onnxruntime, :class:`~stft_neuro.export.onnx_host.OnnxHost`) drives the spiking branch through the
step contract, one step at a time when thresholds are dynamic (closed loop). Backends:

- ``reference``: :class:`~stft_neuro.sim.reference.ReferenceSimulator` (batched, bit-exact, torch);
- ``lava``: :class:`~stft_neuro.sim.lava_session.LavaSession` (one Lava ``fixed_pt`` network and
  runtime for all batches; reset in place between batches);
- ``torch``: the checkpoint's own chip module in deploy mode (Loihi integer arithmetic in torch).

All three compute the same integer arithmetic of the same plan, so predictions, spikes and thetas
are identical sample for sample (tested).

Decisions, written down:

- **The chain runs through the exported files** (issue 18). With a bundle, the chip side of
  ``--backend lava|reference`` is built from the file ``--chip-from`` names (``resolve._chip_plan``):
  ``nir``, the default when the bundle has ``spiking.nir`` (``plan_from_nir`` of the interchange
  file: what runs is what another tool would read), ``plan`` (``plan.safetensors``), or ``netx``:
  on Lava the netx file itself through lava-dl's ``netx.hdf5.Network``
  (:class:`~stft_neuro.converters.netx_out.NetxBackend`, one Network per sample), on the
  reference simulator the plan that file carries (``plan_netx.safetensors`` when export derived
  one). ``load_bundle`` has already verified that every file describes the plan it carries, so
  the three give identical records (tested). netx has no threshold-modulation port: ``--chip-from
  netx`` refuses a run with dynamic thresholds in one line. ``--backend torch`` runs the
  checkpoint's own chip module and takes no ``--chip-from``.

- **A bundle runs alone with ``--host onnx``.** A bundle exported with ``--target onnx|all``
  carries, besides the plan and the host graphs, what the host needs of the training run
  (``export/bundle.py`` ``run_description``): the projected class embeddings
  (``classes.safetensors``, ``STFT.embed_classes(w2v)``), the calibration ``b`` (the run's
  ``progress.best_bias``, chosen on stage-1 validation, as ``eval`` uses it), the feature widths,
  class names and the data configuration that names the benchmark. ``simulate --bundle DIR --host
  onnx`` then needs no checkpoint (given one, it also counts where the ONNX host's payloads and
  thetas round differently from the torch host's: ``onnx_vs_torch_rounding``, else null). Otherwise (``--host torch``, ``--backend torch``, or a bundle
  without the host side) the run comes from ``--checkpoint RUN``, else from the run folder the
  bundle was exported from (``manifest["source"]``) when it still exists; else a one-line error.
- **``--host torch`` with ``--bundle`` needs the checkpoint** (the torch host is the checkpoint's
  model), and its frozen plan must equal the bundle's plan (else the host would convert with one
  plan and the chip run another): checked, one-line error. ``--backend torch`` likewise needs the
  checkpoint. ``--host onnx`` needs a bundle exported with ``--target onnx|all``.
- **Without a bundle** the plan is the checkpoint's (``stft_neuro/run_plan.py``): a QAT run's own,
  or a float run's stored ``RUN/plan.safetensors`` (the one ``export`` and ``eval`` read; derived
  once on CPU for a run folder written before plans were stored), with the chip in deploy mode.
- **``--samples N``**: N samples per selected split, drawn with a fixed seed (0) and kept in index
  order; all samples by default. ``--split all`` = both stage-2 test splits.
- **Metrics** (S/U/HM/ZSL, ``protocol.metrics_from_distances`` at the run's ``b``) are over the
  simulated samples; with one split only, S or U (and HM) are 0 by definition (no samples).
- **``--ray [ADDRESS]``** (the optional extra ``stft-neuro[ray]``; :mod:`stft_neuro.shard`,
  :mod:`stft_neuro.simulate.sharded`): the
  driver loads and plans as above, then cuts the samples into contiguous shards of whole batches
  (every batch is the one the single-process run makes), and each shard runs as a Ray task with
  its own host model and backend (for Lava, its own session, shut down on every path); a failed
  shard is retried, one that still fails ends the run with one line naming its sample range and
  no output. The records are merged in sample order and the predictions made over all of them,
  so ``records.npz`` and ``plan.safetensors`` are byte-identical to the single-process run's and
  results.json differs only in ``timings`` and ``ray`` (tested, reference and Lava, with a worker
  killed midway). The features of a shard and the ONNX host graphs travel with the tasks, so
  a cluster's workers need stft-neuro (and Lava, for ``--backend lava``) but none of these files.

Modules, in the order a run goes through them:

- :mod:`~stft_neuro.simulate.resolve`: the options checked, bundle/checkpoint/host/plan/samples
  decided (:class:`~stft_neuro.simulate.resolve.Setup`); every refusal happens here;
- :mod:`~stft_neuro.simulate.run`: the backend opened (a Lava session closed on every path) and
  every batch through the host's closed loop (``stft_neuro.closed_loop``), whose
  ``SpikeRecord`` (spikes, thetas and payloads as sent) is what is recorded;
- :mod:`~stft_neuro.simulate.sharded`: the same batches as Ray tasks (``--ray``);
- :mod:`~stft_neuro.simulate.write`: records merged, predictions, ``records.npz``,
  ``plan.safetensors``, ``results.json``, written atomically.

Output folder (written into a temporary sibling and renamed at the end: nothing partial remains
after an error, Ctrl-C or SIGTERM). THE RECORD FORMAT IS A CONTRACT (``stft-neuro report`` reads it):

``records.npz`` (deflated ``.npz``, :func:`save_records`: the same records give the same bytes), N
samples, T steps, L layers:
    ``spikes_1`` .. ``spikes_L``  (N, T, n_l) bool   every layer's spikes
    ``theta``                    (N, T, L) int32    thresholds sent (only with dynamic thresholds)
    ``payloads``                 (N, T, n_in) int16 graded payloads sent
    ``labels``                   (N,) int64         global class index
    ``pred``                     (N,) int64         predicted class (GZSL: all classes, b on seen)
    ``sample_index``             (N,) int64         index of the sample within its split
    ``split_name``               (N,) str           the split of each sample
``plan.safetensors``  a copy of the plan run (``DeploymentPlan.save``)
``results.json``      backend, host, bundle (path, manifest sha256), checkpoint, split, samples,
                      metrics (S/U/HM/ZSL/bias), bias_source, timings (start-up, per-step bridge
                      cost, host, backend, samples/s, sample-steps/s), onnx rounding notes,
                      ``ray`` (None, or address, workers, start-up s and each shard's samples,
                      seconds, node and pid). With Ray, ``timings.loop_s`` is the wall time of the
                      sharded part (Ray start-up included), ``backend_s``/``host_s``/``lava`` are
                      summed over the shards (worker-seconds).
"""
from __future__ import annotations

import json
import time
from typing import Any

from stft_neuro.simulate.resolve import (BACKENDS, CHIP_SOURCES, EARLY_EXIT_RUN, HOSTS, SAMPLE_SEED,
                                         SPLIT_CHOICES, SPLITS, SimulateError)
from stft_neuro.simulate.write import PLAN_COPY, RECORDS, RESULTS, save_records

__all__ = ["BACKENDS", "CHIP_SOURCES", "HOSTS", "LOCAL_RAY", "PLAN_COPY", "RECORDS", "RESULTS", "SAMPLE_SEED",
           "SPLITS", "SPLIT_CHOICES", "SimulateError", "add_parser", "format_results", "main", "save_records",
           "simulate"]

#: ``--ray`` without an address (stft_neuro.shard.LOCAL, repeated so the parser needs no Ray import).
LOCAL_RAY = "local"


# ----------------------------------------------------------------------------------------------
# CLI registration
# ----------------------------------------------------------------------------------------------

def add_parser(sub: Any) -> None:
    """Register ``simulate`` on the CLI's subparsers."""
    p = sub.add_parser(
        "simulate", help="hybrid run: host (torch|onnx) <-> spiking backend (lava|reference|torch), "
                         "with per-step records",
        description="Run the stage-2 test samples through the host and the chosen spiking backend, "
                    "step by step (closed loop of dynamic thresholds), and write records.npz (every "
                    "layer's spikes, thetas, payloads, labels, predictions), plan.safetensors and "
                    "results.json (S/U/HM/ZSL and timings) into --out. The three backends give "
                    "identical records.")
    p.add_argument("--bundle", metavar="DIR", help="deployment bundle (stft-neuro export)")
    p.add_argument("--checkpoint", metavar="RUN", help="training run (needed for --host torch, "
                   "--backend torch, and when the bundle's source run is gone)")
    p.add_argument("--backend", required=True, choices=BACKENDS)
    p.add_argument("--host", default="torch", choices=HOSTS,
                   help="who runs the host side: the checkpoint's torch model, or the bundle's ONNX "
                        "graphs in onnxruntime (default torch); with onnx, a bundle exported with "
                        "--target onnx|all runs without the training checkpoint")
    p.add_argument("--chip-from", choices=CHIP_SOURCES, default=None,
                   help="which bundle file the chip side is built from: nir (spiking.nir through "
                        "plan_from_nir; the default when the bundle has it), plan (plan.safetensors), "
                        "netx (spiking_netx.h5 through lava-dl's netx.hdf5.Network on --backend lava, "
                        "the plan it carries on reference; static thresholds only)")
    p.add_argument("--split", default="all", choices=SPLIT_CHOICES)
    p.add_argument("--samples", type=int, metavar="N", help="N samples per split (seeded; default all)")
    p.add_argument("--batch", type=int, default=64, metavar="B", help="samples per batch (default 64)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder to create")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="data.KEY=VALUE",
                   help="other data than the run's (only [data] keys)")
    p.add_argument("--allow-pickle", action="store_true", help="allow pickled feature files")
    p.add_argument("--json", action="store_true", help="print results.json instead of a table")
    p.add_argument("--ray", nargs="?", const=LOCAL_RAY, default=None, metavar="ADDRESS",
                   help="shard the batches over Ray (needs stft-neuro[ray]): alone, a local Ray with "
                        "one worker per core; with ADDRESS (auto, HOST:6379, ray://HOST:10001) an "
                        "existing cluster. Records are identical to a run without --ray")
    p.add_argument("--ray-workers", type=int, metavar="N",
                   help="cores of the local Ray started by --ray (default: all)")
    p.add_argument("--early-exit", nargs="?", const=EARLY_EXIT_RUN, default=None, metavar="RULE",
                   help="early exit: a sample stops stepping when its readout is settled, and drops out "
                        "of the batch. Alone: the training run's rule (RUN/early_exit.json, calibrated "
                        "on stage-1 validation on first use and stored there); RULE: a rule file. "
                        "Off by default")
    p.add_argument("--early-exit-max-drop", type=float, default=None, metavar="HM",
                   help="calibrating the run's rule: the validation HM points it may lose against "
                        "running all steps (default 0.5)")


def main(args: Any) -> int:
    """CLI entry: run, print the table (or JSON)."""
    from tqdm import tqdm

    if args.backend == "lava" and args.ray is None:
        from stft_neuro.simulate.run import require_lava
        require_lava()  # first: tqdm's lock fixes multiprocessing's start method, Lava sets it at import
    bar = tqdm(unit="sample", disable=True if args.json else None, dynamic_ncols=True,
               file=__import__("sys").stderr)
    try:
        results = simulate(bundle=args.bundle, checkpoint=args.checkpoint, backend=args.backend,
                           host=args.host, chip_from=getattr(args, "chip_from", None), split=args.split,
                           samples=args.samples, batch=args.batch,
                           out=args.out, force=args.force, overrides=args.overrides,
                           allow_pickle=args.allow_pickle, ray=args.ray, ray_workers=args.ray_workers,
                           early_exit=getattr(args, "early_exit", None),
                           early_exit_max_drop=getattr(args, "early_exit_max_drop", None),
                           progress=lambda n, total: (setattr(bar, "total", total), bar.update(n)))
    finally:
        bar.close()
    print(json.dumps(results, indent=2, sort_keys=True) if args.json else format_results(results))
    return 0


# ----------------------------------------------------------------------------------------------
# The run: resolve -> run (here or on Ray) -> write
# ----------------------------------------------------------------------------------------------

def simulate(*, bundle: str | None, checkpoint: str | None, backend: str, host: str = "torch",
             chip_from: str | None = None, split: str = "all", samples: int | None = None, batch: int = 64, out: str,
             force: bool = False, overrides: list[str] | None = None, allow_pickle: bool = False,
             ray: str | None = None, ray_workers: int | None = None,
             progress: Any = None, early_exit: str | None = None,
             early_exit_max_drop: float | None = None) -> dict[str, Any]:
    """Run the simulation and write the output folder atomically; returns results.json's dict.

    ``ray``: None runs every batch in this process; an address (``"local"``: a private local Ray,
    ``ray_workers`` cores) shards the batches over Ray workers (:func:`.sharded.run_on_ray`), with the same
    records. ``progress(n_done_now, total)`` is called after each batch (each shard with Ray).
    SIGTERM is turned into ``KeyboardInterrupt`` for the duration (main thread), so the temporary
    folder and any Lava runtime are always cleaned up. ``early_exit``: None (off), ``"run"`` (the
    training run's rule, calibrated on first use with ``early_exit_max_drop`` HM points) or a rule
    file (:mod:`~stft_neuro.simulate.early_exit`)."""
    from stft_neuro.sim.lava_runtime import sigterm_as_interrupt
    with sigterm_as_interrupt():
        return _simulate(bundle, checkpoint, backend, host, split, samples, batch, out, force,
                         overrides or [], allow_pickle, ray, ray_workers, progress, chip_from,
                         early_exit, early_exit_max_drop)


def _simulate(bundle_dir, checkpoint, backend_name, host_name, split, samples, batch, out, force,
              overrides, allow_pickle, ray_address, ray_workers, progress, chip_from=None,
              early_exit=None, early_exit_max_drop=None) -> dict[str, Any]:
    from stft_neuro.checkpoint import atomic_folder
    from stft_neuro.simulate import write
    from stft_neuro.simulate.resolve import resolve
    from stft_neuro.simulate.run import is_lava_failure, run_here

    t_start = time.perf_counter()
    setup = resolve(bundle_dir=bundle_dir, checkpoint=checkpoint, backend=backend_name, host=host_name,
                    split=split, samples=samples, batch=batch, out=out, force=force, overrides=overrides,
                    allow_pickle=allow_pickle, chip_from=chip_from, ray_address=ray_address,
                    ray_workers=ray_workers, early_exit=early_exit, early_exit_max_drop=early_exit_max_drop)
    try:
        with atomic_folder(setup.out) as tmp:
            t_loop = time.perf_counter()
            if ray_address is None:
                parts, work = run_here(setup, progress)
                ray_info = None
            else:
                from stft_neuro.simulate.sharded import run_on_ray
                parts, work, ray_info = run_on_ray(setup, progress)
            timings = {"startup_s": t_loop - t_start, "loop_s": time.perf_counter() - t_loop}
            rec = write.merge(parts, setup)
            arrays = write.record_arrays(rec, setup.plan.num_layers, setup.dynamic)
            results = write.results(setup, rec, arrays, work, ray_info, timings)
            write.write(tmp, setup, arrays, results)
    except BaseException as exc:
        if is_lava_failure(exc):
            raise SimulateError(f"simulate --backend lava: {exc}") from None
        raise
    return results


def format_results(r: dict[str, Any]) -> str:
    """The human-readable table of a results dict."""
    from stft_neuro.protocol import GZSLMetrics, format_table
    t = r["timings"]
    lines = [format_table({f"{r['backend']} / host {r['host']}": GZSLMetrics(**r["metrics"])}), "",
             f"{'samples':<26}{r['samples']:>12} ({r['split']}, T = {r['num_steps']}, batch {r['batch']})",
             f"{'start-up':<26}{t['startup_s']:>12.2f} s",
             f"{'host':<26}{t['host_s']:>12.2f} s",
             f"{'backend':<26}{t['backend_s']:>12.2f} s",
             f"{'per-step bridge cost':<26}{t['bridge_per_step_ms']:>12.2f} ms (whole batch)",
             f"{'samples/s':<26}{t['samples_per_s']:>12.1f}",
             f"{'sample-steps/s':<26}{t['sample_steps_per_s']:>12.1f}"]
    ee = r.get("early_exit")
    if ee:
        lines.append(f"{'early exit':<26}{ee['steps_mean']:>12.2f} steps per sample of {r['num_steps']} "
                     f"({ee['describe']})")
    return "\n".join(lines)
