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
  ``--backend lava|reference`` is built from the file ``--chip-from`` names (:func:`_chip_plan`):
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
- **Without a bundle** the plan is the checkpoint's: a QAT run's own, or, for a float run, the plan
  after calibrating the input scale on ``stage_2_train`` (as ``export`` does) and switching the chip
  to deploy mode.
- **``--samples N``**: N samples per selected split, drawn with a fixed seed (0) and kept in index
  order; all samples by default. ``--split all`` = both stage-2 test splits.
- **Metrics** (S/U/HM/ZSL, ``protocol.metrics_from_distances`` at the run's ``b``) are over the
  simulated samples; with one split only, S or U (and HM) are 0 by definition (no samples).
- **``--ray [ADDRESS]``** (the optional extra ``stft-neuro[ray]``; :mod:`stft_neuro.shard`): the
  driver loads and plans as above, then cuts the samples into contiguous shards of whole batches
  (every batch is the one the single-process run makes), and each shard runs as a Ray task with
  its own host model and backend (for Lava, its own session, shut down on every path); a failed
  shard is retried, one that still fails ends the run with one line naming its sample range and
  no output. The records are merged in sample order and the predictions made over all of them,
  so ``records.npz`` and ``plan.safetensors`` are byte-identical to the single-process run's and
  results.json differs only in ``timings`` and ``ray`` (tested, reference and Lava, with a worker
  killed midway). The features of a shard and the ONNX host graphs travel with the tasks, so
  a cluster's workers need stft-neuro (and Lava, for ``--backend lava``) but none of these files.

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

import contextlib
import functools
import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stft_neuro.errors import UserError
from stft_neuro.export.bundle import json_default

SPLITS = ("stage_2_test_seen", "stage_2_test_unseen")
SPLIT_CHOICES = (*SPLITS, "all")
BACKENDS = ("lava", "reference", "torch")
HOSTS = ("torch", "onnx")
CHIP_SOURCES = ("nir", "plan", "netx")
RECORDS = "records.npz"
RESULTS = "results.json"
PLAN_COPY = "plan.safetensors"
SAMPLE_SEED = 0
#: ``--ray`` without an address (stft_neuro.shard.LOCAL, repeated so the parser needs no Ray import).
LOCAL_RAY = "local"


class SimulateError(UserError):
    """A simulation that cannot start or cannot finish; the message says why in one line."""


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


def main(args: Any) -> int:
    """CLI entry: run, print the table (or JSON)."""
    from tqdm import tqdm

    if args.backend == "lava" and args.ray is None:
        _require_lava()  # first: tqdm's lock fixes multiprocessing's start method, Lava sets it at import
    bar = tqdm(unit="sample", disable=True if args.json else None, dynamic_ncols=True,
               file=__import__("sys").stderr)
    try:
        results = simulate(bundle=args.bundle, checkpoint=args.checkpoint, backend=args.backend,
                           host=args.host, chip_from=getattr(args, "chip_from", None), split=args.split, samples=args.samples, batch=args.batch,
                           out=args.out, force=args.force, overrides=args.overrides,
                           allow_pickle=args.allow_pickle, ray=args.ray, ray_workers=args.ray_workers,
                           progress=lambda n, total: (setattr(bar, "total", total), bar.update(n)))
    finally:
        bar.close()
    print(json.dumps(results, indent=2, sort_keys=True) if args.json else format_results(results))
    return 0


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------

@dataclass
class _Timed:
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

    def run(self, x, theta=None, state=None):
        t0 = time.perf_counter()
        try:
            return self.inner.run(x, theta, state)
        finally:
            self.seconds += time.perf_counter() - t0
            self.steps += int(x.shape[0])
            self.sample_steps += int(x.shape[0]) * int(x.shape[1])


def simulate(*, bundle: str | None, checkpoint: str | None, backend: str, host: str = "torch",
             chip_from: str | None = None, split: str = "all", samples: int | None = None, batch: int = 64, out: str,
             force: bool = False, overrides: list[str] | None = None, allow_pickle: bool = False,
             ray: str | None = None, ray_workers: int | None = None,
             progress: Any = None) -> dict[str, Any]:
    """Run the simulation and write the output folder atomically; returns results.json's dict.

    ``ray``: None runs every batch in this process; an address (``"local"``: a private local Ray,
    ``ray_workers`` cores) shards the batches over Ray workers (:func:`_run_on_ray`), with the same
    records. ``progress(n_done_now, total)`` is called after each batch (each shard with Ray).
    SIGTERM is turned into ``KeyboardInterrupt`` for the duration (main thread), so the temporary
    folder and any Lava runtime are always cleaned up."""
    old_term = None
    if threading.current_thread() is threading.main_thread():
        from stft_neuro.sim.lava_session import on_sigterm
        old_term = signal.signal(signal.SIGTERM, functools.partial(on_sigterm, os.getpid()))
    try:
        return _simulate(bundle, checkpoint, backend, host, split, samples, batch, out, force,
                         overrides or [], allow_pickle, ray, ray_workers, progress, chip_from)
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


def _simulate(bundle_dir, checkpoint, backend_name, host_name, split, samples, batch, out, force,
              overrides, allow_pickle, ray_address, ray_workers, progress, chip_from=None) -> dict[str, Any]:
    t_start = time.perf_counter()
    if ray_workers is not None and ray_address is None:
        raise SimulateError("simulate: --ray-workers sizes the local Ray of --ray: give --ray too")
    if ray_address is not None:
        from stft_neuro.shard import require_ray
        require_ray()  # first: one line before minutes of loading when Ray is missing
    if backend_name not in BACKENDS:
        raise SimulateError(f"simulate: unknown backend {backend_name!r} (one of {', '.join(BACKENDS)})")
    if host_name not in HOSTS:
        raise SimulateError(f"simulate: unknown host {host_name!r} (one of {', '.join(HOSTS)})")
    if split not in SPLIT_CHOICES:
        raise SimulateError(f"simulate: unknown split {split!r} (one of {', '.join(SPLIT_CHOICES)})")
    if batch is None or int(batch) < 1:
        raise SimulateError(f"simulate: --batch must be >= 1, got {batch}")
    if samples is not None and int(samples) < 1:
        raise SimulateError(f"simulate: --samples must be >= 1, got {samples}")
    if bundle_dir is None and checkpoint is None:
        raise SimulateError("simulate: give --bundle DIR or --checkpoint RUN")
    if host_name == "onnx" and bundle_dir is None:
        raise SimulateError("simulate: --host onnx runs the bundle's ONNX graphs: give --bundle DIR")
    if chip_from is not None and chip_from not in CHIP_SOURCES:
        raise SimulateError(f"simulate: unknown --chip-from {chip_from!r} (one of {', '.join(CHIP_SOURCES)})")
    if chip_from is not None and bundle_dir is None:
        raise SimulateError("simulate: --chip-from names a file of the bundle: give --bundle DIR")
    if chip_from is not None and backend_name == "torch":
        raise SimulateError("simulate: --backend torch runs the checkpoint's own chip module; --chip-from "
                            "applies to --backend lava|reference")
    if chip_from == "netx" and ray_address is not None:
        raise SimulateError("simulate: --chip-from netx runs one netx Network per sample here; "
                            "leave out --ray")
    out = Path(out)
    if out.exists() and not force:
        raise SimulateError(f"simulate: {out} already exists (choose a new folder, or --force)")

    # -- what to run: bundle, checkpoint, plan -------------------------------------------------
    bundle = None
    alone = False  # the bundle runs without the training checkpoint (--host onnx, run carried)
    if bundle_dir is not None:
        from stft_neuro.export.bundle import MANIFEST, load_bundle
        bundle = load_bundle(bundle_dir)
        alone = (checkpoint is None and host_name == "onnx" and backend_name != "torch"
                 and bundle.run is not None)
        if checkpoint is None and not alone:
            source = bundle.manifest.get("source") or ""
            if source and Path(source).is_dir():
                checkpoint = source
            elif bundle.run is not None:
                raise SimulateError(
                    f"simulate: --host {host_name} --backend {backend_name} needs the training run and "
                    f"the bundle's source run {source!r} is not there: give --checkpoint RUN, or run "
                    "the bundle alone with --host onnx --backend lava|reference")
            else:
                raise SimulateError(
                    f"simulate: bundle {bundle_dir} holds no class embeddings nor calibration b (exported "
                    f"with --target {bundle.manifest.get('target')}) and its source run {source!r} is not "
                    "there: give --checkpoint RUN, or re-export with --target onnx|all")
    if backend_name == "torch" and checkpoint is None:
        raise SimulateError("simulate: --backend torch runs the checkpoint's chip module: give --checkpoint RUN")
    if alone:
        model = None
        cfg, meta = _bundle_run(bundle, overrides, allow_pickle)
    else:
        model, cfg, meta = _load_model(checkpoint, overrides, allow_pickle)
    bench = _load_bench(cfg, allow_pickle)
    _check_widths(bench, meta, bundle_dir if alone else checkpoint)
    plan = _model_plan(model, bench) if bundle is None or host_name == "torch" or backend_name == "torch" \
        else None
    if bundle is not None:
        if plan is not None and not _same_plan(plan, bundle.plan):
            raise SimulateError(f"simulate: the checkpoint {checkpoint} runs a different deployment plan "
                                f"than the bundle {bundle_dir} (re-export the bundle from this run)")
        plan = bundle.plan
    chip_file = None
    if bundle is not None and backend_name != "torch":
        plan, chip_from, chip_file = _chip_plan(bundle, chip_from)
    onnx_host = None
    if host_name == "onnx":
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

    # -- the samples ----------------------------------------------------------------------------
    chosen = SPLITS if split == "all" else (split,)
    picks = []
    for name in chosen:
        n = len(bench.splits[name])
        idx = np.arange(n)
        if samples is not None and samples < n:
            idx = np.sort(np.random.default_rng(SAMPLE_SEED).choice(n, int(samples), replace=False))
        picks.extend((name, int(i)) for i in idx)
    if not picks:
        raise SimulateError(f"simulate: split {split} has no samples")
    total = len(picks)

    # -- the run: here, or sharded over Ray -----------------------------------------------------
    capacity = min(int(batch), total)   # the Lava network's samples (the same in every shard)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        t_loop = time.perf_counter()
        startup_s = t_loop - t_start
        if ray_address is None:
            netx_file = bundle.path / chip_file if chip_from == "netx" and backend_name == "lava" else None
            with _open_backend(backend_name, plan, model, capacity, netx_file) as (backend, session):
                parts = _run_batches(model, onnx_host, backend, _batches_of(bench, picks, int(batch)),
                                     dynamic, progress, total)
                lava_timing = dict(vars(session.timing)) if session is not None else None
            work = {"backend_s": backend.seconds, "steps": backend.steps, "lava": lava_timing}
            ray_info = None
        else:
            job = _ShardJob(model=model, plan=plan, backend=backend_name, capacity=capacity,
                            dynamic=dynamic, onnx_files=_onnx_files(onnx_host))
            parts, work, ray_info = _run_on_ray(job, bench, picks, int(batch), ray_address,
                                                ray_workers, progress)
        loop_s = time.perf_counter() - t_loop
        rec = _merge(parts, bench, picks, class_emb, bias, bench.seen(2), dynamic,
                     onnx=onnx_host is not None)
        metrics = _metrics(rec, class_emb, bench, bias)
        L = plan.num_layers
        arrays = {f"spikes_{l + 1}": rec["spikes"][l] for l in range(L)}
        if dynamic:
            arrays["theta"] = rec["theta"]
        arrays.update(payloads=rec["payloads"], labels=rec["labels"], pred=rec["pred"],
                      sample_index=rec["sample_index"], split_name=rec["split_name"])
        save_records(tmp / RECORDS, arrays)
        plan.save(tmp / PLAN_COPY)
        T = int(rec["payloads"].shape[1])
        sample_steps = total * T
        backend_s = work["backend_s"]
        bridge = work["lava"]
        startup_backend = (bridge["build_s"] if bridge else 0.0)
        results = {
            "format": "stft-neuro/simulate", "version": 1,
            "backend": backend_name, "host": host_name,
            "chip_from": chip_from, "chip_file": chip_file,
            "bundle": None if bundle is None else {
                "path": str(bundle.path),
                "manifest_sha256": hashlib.sha256((bundle.path / MANIFEST).read_bytes()).hexdigest()},
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "split": split, "splits": list(chosen),
            "samples": total, "samples_per_split": samples, "batch": int(batch),
            "num_steps": T, "sizes": list(plan.sizes), "dynamic_threshold": dynamic,
            # padded feature length S of the benchmark (the host's FLOPs per sample depend on it)
            "seconds": int(bench.splits[chosen[0]].audio.shape[1]),
            "metrics": metrics,
            "bias_source": (f"{bundle.path}/manifest.json run.calibration_bias" if alone
                            else f"{checkpoint}/meta.json progress.best_bias"),
            "timings": {
                "startup_s": startup_s + startup_backend,
                "startup_host_s": startup_s, "startup_backend_s": startup_backend,
                "loop_s": loop_s,
                "backend_s": backend_s - startup_backend,
                "host_s": (loop_s if ray_info is None else work["shard_s"]) - backend_s,
                "bridge_per_step_ms": 1e3 * (backend_s - startup_backend) / max(1, work["steps"]),
                "steps": work["steps"],
                "samples_per_s": total / loop_s, "sample_steps_per_s": sample_steps / loop_s,
                "lava": bridge,
            },
            "ray": ray_info,
            "onnx_vs_torch_rounding": rec["onnx_vs_torch_rounding"],
            "record_format": {k: [list(v.shape), str(v.dtype)] for k, v in arrays.items()},
        }
        (tmp / RESULTS).write_text(json.dumps(results, indent=2, default=json_default) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_lava_failure(exc):
            raise SimulateError(f"simulate --backend lava: {exc}") from None
        raise
    return results


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


@contextlib.contextmanager
def _open_backend(name: str, plan, model, capacity: int, netx_file=None):
    """The step-contract backend ``name`` wrapped in :class:`_Timed`, and the
    :class:`~stft_neuro.sim.lava_session.LavaSession` behind it (None for the others). A Lava
    session is closed on every path: normally after the block, forcibly (no draining) after an
    interruption or a failed process model."""
    session = None
    if name == "reference":
        from stft_neuro.sim.reference import ReferenceSimulator
        inner = ReferenceSimulator(plan)
    elif name == "lava" and netx_file is not None:
        from stft_neuro.converters.netx_out import NetxBackend
        _require_lava()
        inner = NetxBackend(netx_file, plan)
    elif name == "lava":
        from stft_neuro.sim.lava_session import LavaSession
        _require_lava()
        inner = session = LavaSession(plan, capacity)
    else:
        inner = model.spiking.chip
    try:
        yield _Timed(inner), session
    except BaseException as exc:
        if session is not None:
            session.close(force=not isinstance(exc, Exception) or _is_lava_failure(exc))
        raise
    if session is not None:
        session.close()


def _require_lava() -> None:
    """Import Lava (one-line :class:`SimulateError` when it cannot be)."""
    from stft_neuro.sim.lava_runner import LavaUnavailableError
    from stft_neuro.sim.lava_session import _lava
    try:
        _lava()
    except LavaUnavailableError as exc:
        raise SimulateError(f"simulate --backend lava: {exc}") from None


def _is_lava_failure(exc: BaseException) -> bool:
    from stft_neuro.sim.lava_session import LavaSessionError
    return isinstance(exc, LavaSessionError)


def _batches_of(bench, picks, batch):
    """The features of ``picks`` in batches of ``batch`` (the last one smaller), in order."""
    for i in range(0, len(picks), batch):
        yield _features(bench, picks[i:i + batch])


def _run_batches(model, onnx_host, backend, batches, dynamic, progress=None, total=None) -> list[dict]:
    """Every batch of ``batches`` (``(audio (B, S, Da), visual (B, S, Dv), lengths (B,))``) through
    host + backend; returns one record dict per batch (numpy, sample-major):
    ``spikes`` [(B, T, n_l) bool], ``theta`` (B, T, L) int32 or None, ``payloads`` (B, T, n_in)
    int16, ``joint`` (B, E) float32, ``rounding`` (ONNX host only: mismatch counts)."""
    plan = backend.plan if backend.plan is not None else None
    parts = []
    for a, v, n in batches:
        rounding = None
        with torch.no_grad():
            if onnx_host is not None:
                res = onnx_host.run(a.numpy(), v.numpy(), n.numpy(), backend)
                sp = [np.asarray(s) for s in res["spikes"]]
                th = res.get("theta")
                joint = np.asarray(res["joint"])
                x, _ = onnx_host.encode(a.numpy(), v.numpy(), n.numpy())
                if model is not None:  # a bundle run alone has no torch host to compare with
                    rounding = {"payload_mismatches": 0, "payloads": 0, "theta_mismatches": 0, "thetas": 0}
                    _count_rounding(rounding, model, plan, a, v, n, x, sp, th)
            else:
                res = model(a, v, n, backend=backend)
                sp = [s.detach().float().numpy() for s in res["spikes"]]
                th = res["theta"].detach().numpy() if "theta" in res else None
                joint = res["joint"].float().numpy()
                cur, _ = model.spiking.encode(a, v, n)
                x = backend.plan.encode_input(cur).detach().numpy()
        parts.append({
            "spikes": [s.transpose(1, 0, 2) > 0.5 for s in sp],                         # (B, T, n_l)
            "theta": (np.rint(np.asarray(th, dtype=np.float64)).astype(np.int32).transpose(1, 0, 2)
                      if dynamic else None),
            "payloads": np.rint(np.asarray(x, dtype=np.float64)).astype(np.int16).transpose(1, 0, 2),
            "joint": joint, "rounding": rounding})
        if progress is not None:
            progress(int(n.shape[0]), total)
    return parts


def _merge(parts, bench, picks, class_emb, bias, seen, dynamic, onnx) -> dict[str, Any]:
    """The per-batch records of :func:`_run_batches`, in sample order, stacked; the predictions
    (nearest class embedding, ``bias`` on seen-class distances) computed over all of them."""
    from stft_neuro.protocol import distances, predict

    joint = np.concatenate([p["joint"] for p in parts])
    dist = distances(joint, class_emb)
    pred = predict(dist, np.arange(class_emb.shape[0]), seen, bias)
    L = len(parts[0]["spikes"])
    rounding = None
    if onnx and parts[0]["rounding"] is not None:
        rounding = {k: sum(p["rounding"][k] for p in parts) for k in parts[0]["rounding"]}
    return {
        "spikes": [np.concatenate([p["spikes"][l] for p in parts]) for l in range(L)],
        "theta": np.concatenate([p["theta"] for p in parts]) if dynamic else None,
        "payloads": np.concatenate([p["payloads"] for p in parts]),
        "joint": joint, "dist": dist,
        "labels": np.array([bench.splits[s].labels[i] for s, i in picks], dtype=np.int64),
        "pred": pred.astype(np.int64),
        "sample_index": np.array([i for _, i in picks], dtype=np.int64),
        "split_name": np.array([s for s, _ in picks]),
        "onnx_vs_torch_rounding": rounding,
    }


def save_records(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with every zip member dated 1980-01-01: the same arrays give the
    same bytes (numpy stamps the current time, so two identical runs would differ). ``np.load``
    reads it as any ``.npz``."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for key, val in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(val), allow_pickle=False)


# ----------------------------------------------------------------------------------------------
# Sharded over Ray (stft_neuro.shard; the optional extra stft-neuro[ray])
# ----------------------------------------------------------------------------------------------

@dataclass
class _ShardJob:
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


def _onnx_files(onnx_host) -> dict[str, bytes] | None:
    if onnx_host is None:
        return None
    names = set(onnx_host.description["roles"].values())
    return {name: (onnx_host.folder / name).read_bytes() for name in sorted(names)}


def _shard_ranges(total: int, batch: int, workers: int) -> list[tuple[int, int]]:
    """Contiguous sample ranges ``[start, stop)`` made of whole batches (so every batch is the
    single-process run's batch), as even as batches allow: ``4 x workers`` shards when there are
    that many batches (a retry repeats at most a quarter of a worker's share; a slow worker does
    not hold up the rest), else one per batch."""
    n_batches = -(-total // batch)
    k = max(1, min(n_batches, 4 * max(1, workers)))
    bounds = [round(i * n_batches / k) for i in range(k + 1)]
    return [(b0 * batch, min(total, b1 * batch)) for b0, b1 in zip(bounds, bounds[1:])]


def _run_on_ray(job: _ShardJob, bench, picks, batch, address, workers, progress):
    """Shard the samples (:func:`_shard_ranges`), run each shard as a Ray task
    (:func:`_shard_task`, retried on failure; a shard that still fails is one
    :class:`~stft_neuro.shard.ShardFailedError` naming its range) and return the per-batch records
    in sample order, the summed work of the shards and what results.json's ``ray`` says."""
    from stft_neuro import shard as shard_mod

    with shard_mod.connect(address, workers) as ray_desc:
        ranges = _shard_ranges(len(picks), batch, ray_desc["workers"])
        shards = []
        for i, (start, stop) in enumerate(ranges):
            a, v, n = _features(bench, picks[start:stop])
            shards.append(shard_mod.Shard(
                index=i, seed=SAMPLE_SEED + i, label=f"samples {start}-{stop - 1}",
                payload={"batch": batch, "audio": a.numpy(), "visual": v.numpy(), "lengths": n.numpy()}))
        done = (lambda s, r: progress(ranges[s.index][1] - ranges[s.index][0], len(picks))) \
            if progress is not None else None
        outs = shard_mod.run_shards(_shard_task, shards, shared=job, on_result=done)
    parts = [p for o in outs for p in o["parts"]]
    lava = None
    if job.backend == "lava":
        lava = {k: sum(o["lava"][k] for o in outs) for k in outs[0]["lava"]}
    work = {"backend_s": sum(o["backend_s"] for o in outs), "steps": sum(o["steps"] for o in outs),
            "shard_s": sum(o["seconds"] for o in outs), "lava": lava}
    info = {"address": address, "workers": ray_desc["workers"], "startup_s": ray_desc["startup_s"],
            "shards": [{"samples": list(r), "seconds": o["seconds"], "node": o["node"], "pid": o["pid"]}
                       for r, o in zip(ranges, outs)]}
    return parts, work, info


def _shard_task(job: _ShardJob, shard) -> dict[str, Any]:
    """One shard, in a Ray worker: its batches through the host and a backend of its own (a Lava
    session is shut down on every path, :func:`_open_backend`). Returns the per-batch records and
    the shard's timings (``seconds`` wall, ``backend_s`` inside the backend, ``steps``, ``lava``:
    the session's :class:`~stft_neuro.sim.lava_session.SessionTiming`), node and pid."""
    import platform

    t0 = time.perf_counter()
    if job.backend == "lava":
        _require_lava()  # before anything fixes multiprocessing's start method (Lava sets it)
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
        with _open_backend(job.backend, job.plan, job.model, job.capacity) as (backend, session):
            parts = _run_batches(job.model, onnx_host, backend, batches, job.dynamic)
            lava = dict(vars(session.timing)) if session is not None else None
    return {"parts": parts, "seconds": time.perf_counter() - t0, "backend_s": backend.seconds,
            "steps": backend.steps, "lava": lava, "node": platform.node(), "pid": os.getpid()}

def _count_rounding(counts, model, plan, a, v, n, x_onnx, spikes_onnx, theta_onnx) -> None:
    """Count the payloads and thetas the ONNX host sent that the torch host would have rounded
    differently, given the same inputs (the torch cue is fed the ONNX loop's own spikes)."""
    cur, g = model.spiking.encode(a, v, n)
    x_torch = plan.encode_input(cur).numpy()
    counts["payload_mismatches"] += int((np.asarray(x_onnx) != x_torch).sum())
    counts["payloads"] += int(x_torch.size)
    if theta_onnx is None:
        return
    th = [plan.theta_to_chip(model.spiking.initial_cue(g))]
    for t in range(len(spikes_onnx[0]) - 1):
        s_t = tuple(torch.as_tensor(s[t]) for s in spikes_onnx)
        th.append(plan.theta_to_chip(model.spiking.threshold_cue(s_t, g)))
    th_torch = torch.stack(th).numpy()
    counts["theta_mismatches"] += int((np.asarray(theta_onnx) != th_torch).sum())
    counts["thetas"] += int(th_torch.size)


def _features(bench, chunk) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, S, Da), (B, S, Dv), (B,) of the picked samples, trimmed to the batch's longest sample."""
    a = np.stack([bench.splits[s].audio[i] for s, i in chunk])
    v = np.stack([bench.splits[s].visual[i] for s, i in chunk])
    n = np.array([bench.splits[s].lengths[i] for s, i in chunk], dtype=np.int64)
    return torch.as_tensor(a), torch.as_tensor(v), torch.as_tensor(n)


def _metrics(rec, class_emb, bench, bias) -> dict[str, float]:
    from stft_neuro.protocol import metrics_from_distances
    m = metrics_from_distances(rec["dist"], rec["labels"], bench.seen(2), bench.unseen(2), bias)
    return m.to_dict()


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

def _load_model(checkpoint, overrides, allow_pickle):
    from stft_neuro.checkpoint import load_run
    from stft_neuro.errors import CheckpointError
    model, cfg, meta = load_run(checkpoint)
    if model.spiking is None:
        raise CheckpointError(f"{checkpoint}: no spiking branch (spiking.enabled=false): nothing to simulate")
    return model.cpu().eval(), _data_overrides(cfg, overrides, allow_pickle, "checkpoint"), meta


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


def _load_bench(cfg, allow_pickle):
    from stft_neuro.data import load_benchmark
    return load_benchmark(cfg.data)


def _check_widths(bench, meta, checkpoint) -> None:
    from stft_neuro.errors import CheckpointError
    for what, got, want in (("audio", bench.audio_dim, meta["audio_dim"]),
                            ("visual", bench.visual_dim, meta["visual_dim"])):
        if got != want:
            raise CheckpointError(f"{checkpoint}: model expects {what} features of width {want}, "
                                  f"the benchmark has {got}")
    if len(bench.class_names) != len(meta["class_names"]):
        raise CheckpointError(f"{checkpoint}: trained on {len(meta['class_names'])} classes, "
                              f"the benchmark has {len(bench.class_names)}")


def _model_plan(model, bench):
    """The checkpoint's frozen plan; a float run is calibrated on stage_2_train and switched to
    deploy mode first (so that its torch chip runs this plan's integer arithmetic)."""
    if not model.spiking.deploy:
        from stft_neuro.qat import calibrate
        calibrate(model, bench.splits["stage_2_train"], torch.device("cpu"))
        model.spiking.set_deploy(True)
    model.eval()
    return model.spiking.deployment_plan()[0]


def _same_plan(a, b) -> bool:
    if a.to_dict() != b.to_dict():
        return False
    return all(np.array_equal(x.weight, y.weight) and np.array_equal(x.bias_mant, y.bias_mant)
               for x, y in zip(a.network.layers, b.network.layers))


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
    return "\n".join(lines)
