"""The deployment bundle: everything a hybrid run needs, without the training checkpoint.

``stft-neuro export --checkpoint RUN --target nir|lava|onnx|all --out DIR`` freezes the run's
deployment plan (the one quantizer, ``hw_targets/loihi2/quantize.py``), checks it against Loihi 2's
design rules, and writes into ``DIR``:

=========================  ===========  =========================================================
file                       targets      what
=========================  ===========  =========================================================
``plan.safetensors``       all          the deployment plan (``DeploymentPlan.save``): the exact
                                        fixed-point network and the host <-> chip conversions
``spiking.nir``            nir, all     the spiking branch as NIR (``converters/nir_out.py``),
                                        integer parameters in metadata
``spiking_snntorch.nir``   nir, all     only with ``nir_profile="snntorch"`` (``--nir-profile
                                        snntorch``): the same plan as NIR that snnTorch's
                                        ``import_from_nir`` and nirtorch's ``nir_to_torch`` load
                                        (no Delay nodes; ``converters/nir_profiles.py``)
``spiking_netx.h5``        lava, all    lava-dl netx HDF5 (``converters/netx_out.py``), loadable by
                                        ``lava.lib.dl.netx.hdf5.Network`` (static thresholds)
``plan_netx.safetensors``  lava, all    only when netx cannot carry the run's plan: the plan
                                        derived for netx from the run's float parameters by the
                                        one quantizer (``export/netx_plan.py``), which the netx
                                        file carries; its cost is the manifest's ``netx_cost``
``host_*.onnx``            onnx, all    the host side (``export/onnx_host.py``): encoder, threshold
                                        cue, readout + transformer + fusion + projection
``classes.safetensors``    onnx, all    the class embeddings the host compares against (word2vec
                                        through the run's text projection, ``(C, E)`` float32);
                                        with the manifest's ``run`` (data config, feature widths,
                                        class names, calibration b) ``simulate --bundle DIR`` runs
                                        without the training checkpoint
``early_exit.json``        all          only when the run has an early-exit rule calibrated for
                                        this plan (``simulate --early-exit`` on the run): the rule
                                        ``simulate --bundle DIR --early-exit`` applies when the
                                        bundle runs without the checkpoint
``manifest.json``          all          what crosses the bridge every step (names, shapes, dtypes,
                                        units, ranges), the timing, the design-rule and resource
                                        report, and a SHA-256 per file
=========================  ===========  =========================================================

The manifest's ``plans`` names the plan each file carries: ``plan.safetensors`` (the run's own)
for the NIR graphs and the ONNX host, ``plan_netx.safetensors`` for the netx file when there is one.

The bundle is written into a temporary sibling folder and renamed into place at the end, so an
export that fails leaves nothing behind (and an existing ``DIR`` is replaced only with
``force``). :func:`load_bundle` verifies format version and checksums before anything reads it,
and then that the files describe the same plan (:func:`verify_consistency`): the NIR graphs'
metadata and parameters (``plan_from_nir``), the netx file's weights, biases, decays and
thresholds, and the ONNX graphs' baked-in conversion constants each against the plan file they
carry; the first disagreement is one line naming the file and the field.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from stft_neuro import __version__
from stft_neuro.checkpoint import atomic_folder
from stft_neuro.errors import UserError
from stft_neuro.hw_targets.errors import PlanFormatError
from stft_neuro.hw_targets.loihi2.plan import DeploymentPlan

if TYPE_CHECKING:
    import numpy as np

BUNDLE_FORMAT = "stft-neuro/bundle"
BUNDLE_VERSION = 1
TARGETS = ("nir", "lava", "onnx", "all")
MANIFEST = "manifest.json"
PLAN_FILE = "plan.safetensors"
NIR_FILE = "spiking.nir"
NETX_FILE = "spiking_netx.h5"
SNNTORCH_NIR_FILE = "spiking_snntorch.nir"
CLASSES_FILE = "classes.safetensors"
NETX_PLAN_FILE = "plan_netx.safetensors"


class BundleError(UserError):
    """A bundle folder that is missing, incomplete, corrupted, or of another format version."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_records(folder: Path, names: list[str] | None = None) -> dict[str, dict]:
    """The manifest's ``files`` of every bundle (export's and deploy's): ``{name: {"bytes",
    "sha256"}}`` for ``names`` in ``folder`` (default: every file in it), sorted by name."""
    paths = [folder / n for n in names] if names is not None else [p for p in folder.iterdir() if p.is_file()]
    return {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in sorted(paths)}


def file_problem(folder: Path, name: str, record: Any) -> str | None:
    """Why the bundle file ``name`` does not match its manifest ``record`` (not a plain name,
    missing, corrupted), naming its path, or None when it does."""
    if Path(name).name != name or name == MANIFEST:
        return f"{folder / MANIFEST} lists {name!r}, not a file of the bundle"
    if not (folder / name).is_file():
        return f"{folder / name} is missing (listed in the bundle's {MANIFEST})"
    if not isinstance(record, dict) or sha256(folder / name) != record.get("sha256"):
        return (f"{folder / name} is corrupted (SHA-256 differs from the bundle's {MANIFEST}): "
                "changed after it was written")
    return None


def bridge_description(plan: DeploymentPlan, dynamic_threshold: bool) -> dict:
    """What crosses the host <-> chip bridge at every step, with units and ranges."""
    lo, hi = plan.payload_range
    per_step = {
        "host_to_chip": [
            {"name": "payload", "shape": ["B", plan.n_in], "dtype": f"int{max(8, plan.input_bits)}",
             "port": "layer 1 Dense input (graded spikes, num_message_bits = input_bits)",
             "units": f"graded-spike payload; 1 LSB = {plan.input_scale!r} input-current units "
                      "(plan.encode_input: round(current / input_scale), saturating)",
             "range": [lo, hi]},
        ],
        "chip_to_host": [
            {"name": f"spikes_{l + 1}", "shape": ["B", n], "dtype": "bool",
             "units": "spike (1) or not (0) of each neuron of layer " + str(l + 1) + " at this step"}
            for l, n in enumerate(plan.sizes[1:])],
    }
    if dynamic_threshold:
        per_step["host_to_chip"].append(
            {"name": "theta", "shape": ["B", plan.num_layers], "dtype": "int32",
             "port": "threshold modulation of every LIF (not expressible in NIR or netx: the "
                     "project's ThetaLIF in Lava, sim/lava_procs.py)",
             "units": "threshold-mantissa offset: layer l spikes where v > (vth_l + theta_l) << 6; "
                      "host cue (threshold units) x threshold_scales[l], rounded (plan.theta_to_chip)",
             "range": [list(r) for r in plan.theta_range],
             "threshold_scales": list(plan.threshold_scales)})
    return {"per_step": per_step,
            "timing": {"num_steps": plan.num_steps, "dt_s": plan.dt, "dense_delay_steps": list(plan.delays),
                       "alignment": "layer l (1-based) integrates the input of step t at step t + l; "
                                    "the host sends theta for step t+1 after it received the spikes "
                                    "of step t (closed loop)"}}


@dataclass(frozen=True)
class Bundle:
    """A verified bundle folder: its manifest and plan (other files by path)."""

    path: Path
    manifest: dict
    plan: DeploymentPlan

    def file(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise BundleError(f"bundle {self.path} has no {name} (exported with --target "
                              f"{self.manifest.get('target')})")
        return self.path / name

    @property
    def run(self) -> dict | None:
        """What the host needs of the training run (``run_description``), or None for a bundle
        without the host side (targets nir, lava) or exported before bundles carried it."""
        return self.manifest.get("run")

    @property
    def netx_plan(self) -> DeploymentPlan:
        """The plan the netx file carries: ``plan_netx.safetensors`` when export derived one, else
        the run's plan."""
        if NETX_PLAN_FILE in self.manifest["files"]:
            return DeploymentPlan.load(self.path / NETX_PLAN_FILE)
        return self.plan

    def class_embeddings(self):
        """``(C, E)`` float32 class embeddings in the order of ``run["class_names"]``."""
        from safetensors.numpy import load_file
        return load_file(str(self.file(CLASSES_FILE)))["class_embeddings"]


def run_description(model, cfg, meta: dict, class_word2vec) -> tuple[dict, np.ndarray]:
    """What a hybrid run needs of the training run besides the host graphs, so that a bundle runs
    without the checkpoint -> (manifest entry, ``(C, E)`` float32 class embeddings).

    ``class_word2vec``: the benchmark's ``(C, 300)`` class embeddings (``Benchmark.class_embeddings``,
    the order of ``meta["class_names"]``); projected here by the run's text projection. ``b``: the
    calibration chosen on stage-1 validation (``meta.json`` ``progress.best_bias``), as ``eval``
    uses it. ``config``: the run's configuration, whose ``data`` section names the benchmark."""
    import numpy as np
    import torch
    with torch.no_grad():
        emb = model.embed_classes(torch.as_tensor(np.asarray(class_word2vec), dtype=torch.float32))
    emb = emb.float().cpu().numpy()
    run = {"config": cfg.to_dict(), "audio_dim": int(meta["audio_dim"]), "visual_dim": int(meta["visual_dim"]),
           "class_names": list(meta["class_names"]), "embedding_dim": int(emb.shape[1]),
           "calibration_bias": float(meta["progress"]["best_bias"]),
           "bias_source": "meta.json progress.best_bias (chosen on stage-1 validation)"}
    return run, emb


def load_bundle(path: str | Path) -> Bundle:
    """Open a bundle folder, verifying format, version and every file's checksum (one-line errors)."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"bundle {path} does not exist or is not a folder")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{path} is not a bundle (no {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BundleError(f"{mpath}: not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{mpath}: not an stft-neuro bundle manifest")
    if manifest.get("version") != BUNDLE_VERSION:
        raise BundleError(f"{path}: bundle format version {manifest.get('version')!r}; this "
                          f"stft-neuro ({__version__}) reads version {BUNDLE_VERSION}: re-export it")
    for name, info in manifest.get("files", {}).items():
        problem = file_problem(path, name, info)
        if problem is not None:
            raise BundleError(problem)
    try:
        plan = DeploymentPlan.load(path / PLAN_FILE)
        netx_plan = DeploymentPlan.load(path / NETX_PLAN_FILE) if NETX_PLAN_FILE in manifest.get("files", {}) else None
    except PlanFormatError as exc:
        raise BundleError(str(exc)) from None
    verify_consistency(path, manifest, plan, netx_plan)
    return Bundle(path=path, manifest=manifest, plan=plan)


def verify_consistency(path: Path, manifest: dict, plan: DeploymentPlan,
                       netx_plan: DeploymentPlan | None = None) -> None:
    """Check that every file of the bundle describes the plan it carries (``plan.safetensors``,
    or ``plan_netx.safetensors`` for the netx file); raise :class:`BundleError` naming the first
    file and field that disagree, in one line. The checksums prove the files are the ones
    exported; this proves they say the same thing (a file edited and re-checksummed is caught)."""
    from stft_neuro.export.netx_plan import plan_difference
    files = manifest.get("files", {})

    def fail(name: str, carried: str, what: str):
        raise BundleError(f"bundle {path}: {name} disagrees with {carried}: {what}")

    if netx_plan is not None:  # the same host conversions and timing; only the integers differ
        a, b = netx_plan.to_dict(), plan.to_dict()
        for key in ("input_scale", "input_bits", "sizes", "num_steps", "dt", "payload_dead_zone"):
            if a.get(key) != b.get(key):
                fail(NETX_PLAN_FILE, PLAN_FILE, f"{key}: {a.get(key)!r} vs {b.get(key)!r}")
    for name in (NIR_FILE, SNNTORCH_NIR_FILE):
        if name not in files:
            continue
        import nir

        from stft_neuro.converters.nir_out import NIRExportError, plan_from_nir
        try:
            graph = nir.read(str(path / name))
        except Exception as exc:  # noqa: BLE001 - nir/h5py raise many types for a damaged file
            raise BundleError(f"bundle {path}: {name} is not a readable NIR file ({type(exc).__name__})") from None
        try:
            back = plan_from_nir(graph, where=name)
        except NIRExportError as exc:
            raise BundleError(f"bundle {path}: {exc}") from None
        diff = plan_difference(plan, back)
        if diff is not None:
            fail(name, PLAN_FILE, diff)
    if NETX_FILE in files:
        from stft_neuro.converters.netx_out import NetxUnrepresentableError, netx_file_difference
        carried = netx_plan if netx_plan is not None else plan
        try:
            diff = netx_file_difference(path / NETX_FILE, carried)
        except NetxUnrepresentableError as exc:
            raise BundleError(f"bundle {path}: {NETX_PLAN_FILE if netx_plan is not None else PLAN_FILE}: {exc}") from None
        if diff is not None:
            fail(NETX_FILE, NETX_PLAN_FILE if netx_plan is not None else PLAN_FILE, diff)
    onnx_files = sorted(n for n in files if n.endswith(".onnx"))
    if onnx_files:
        from stft_neuro.export.onnx_host import baked_constants_difference
        for name in onnx_files:
            diff = baked_constants_difference(path / name, plan)
            if diff is not None:
                fail(name, PLAN_FILE, diff)


def export_bundle(model, plan: DeploymentPlan, quant_summary: dict, out: str | Path, target: str,
                  *, force: bool = False, source: str = "", nir_profile: str = "exact",
                  run: tuple[dict, np.ndarray] | None = None,
                  netx_plan: DeploymentPlan | None = None, netx_cost: dict | None = None,
                  early_exit: Path | None = None,
                  progress: Callable[[str], None] | None = None) -> dict:
    """Write the bundle for ``target`` into ``out`` atomically; returns the manifest.

    ``model``: the loaded STFT (its spiking branch calibrated); ``plan``: its frozen plan
    (``model.spiking.deployment_plan()``). Refuses a plan that breaks a design rule.
    ``nir_profile="snntorch"`` (targets nir and all) also writes ``spiking_snntorch.nir`` beside
    the exact ``spiking.nir``, and refuses (one line) a plan that profile cannot represent.
    ``run``: :func:`run_description`'s result; targets onnx and all write it (``classes.safetensors``
    and the manifest's ``run``), so that the bundle runs ``simulate`` without the checkpoint.
    ``netx_plan`` (targets lava and all): the plan the netx file carries when netx cannot carry
    ``plan`` (``export/netx_plan.py``: derived from the run by the one quantizer); written as
    ``plan_netx.safetensors``, with ``netx_cost`` (what it costs against ``plan``) in the manifest.
    Without it, a ``plan`` that netx cannot carry is one line naming layer and parameter.
    ``early_exit``: the run's early-exit rule file (``simulate/early_exit.py``), copied as
    ``early_exit.json`` when it was calibrated for ``plan`` (else left out, and said so)."""
    from stft_neuro.hw_targets.loihi2.report import resource_report

    if target not in TARGETS:
        raise UserError(f"export: unknown target {target!r} (one of {', '.join(TARGETS)})")
    from stft_neuro.converters.nir_profiles import PROFILES, NIRProfileError, profile_description
    if nir_profile not in PROFILES:
        raise UserError(f"export: unknown NIR profile {nir_profile!r} (one of {', '.join(PROFILES)})")
    if nir_profile != "exact" and target not in ("nir", "all"):
        raise UserError(f"export: --nir-profile {nir_profile} writes a NIR file: use it with "
                        "--target nir or --target all")
    profile_graph = None
    if nir_profile != "exact":  # refuse before anything is written
        from stft_neuro.converters.nir_out import plan_to_nir
        try:
            profile_graph = plan_to_nir(plan, profile=nir_profile)
        except NIRProfileError as exc:
            raise UserError(f"export --nir-profile {nir_profile}: {exc}") from None
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"export: {out} already exists (choose a new folder, or --force to replace it)")
    say = progress or (lambda _msg: None)
    resources = resource_report(plan.network)
    if not resources["design_rules"]["passed"]:
        raise UserError(f"export: the spiking branch breaks {resources['design_rules']['errors']} "
                        "Loihi 2 design rule(s); see `stft-neuro resources`")
    timings: dict[str, float] = {}
    with atomic_folder(out) as tmp:
        t0 = time.perf_counter()
        plan.save(tmp / PLAN_FILE)
        timings[PLAN_FILE] = time.perf_counter() - t0
        nir_files: dict[str, dict] = {}
        if target in ("nir", "all"):
            from stft_neuro.converters.nir_out import plan_to_nir, write_nir
            t0 = time.perf_counter()
            write_nir(plan_to_nir(plan), tmp / NIR_FILE)
            timings[NIR_FILE] = time.perf_counter() - t0
            nir_files[NIR_FILE] = profile_description(plan, "exact")
            say(f"wrote {NIR_FILE}")
            if profile_graph is not None:  # the snntorch profile, beside the exact file
                t0 = time.perf_counter()
                write_nir(profile_graph, tmp / SNNTORCH_NIR_FILE)
                timings[SNNTORCH_NIR_FILE] = time.perf_counter() - t0
                nir_files[SNNTORCH_NIR_FILE] = profile_description(plan, nir_profile)
                say(f"wrote {SNNTORCH_NIR_FILE}")
        netx = None
        carries: dict[str, str] = {}  # file -> the plan file it carries
        if target in ("nir", "all"):
            carries[NIR_FILE] = PLAN_FILE
            if profile_graph is not None:
                carries[SNNTORCH_NIR_FILE] = PLAN_FILE
        if target in ("lava", "all"):
            from stft_neuro.converters.netx_out import NetxUnrepresentableError, write_netx
            t0 = time.perf_counter()
            if netx_plan is not None:
                rules = resource_report(netx_plan.network)["design_rules"]
                if not rules["passed"]:
                    raise UserError(f"export --target {target}: the plan derived for netx breaks "
                                    f"{rules['errors']} Loihi 2 design rule(s)")
                netx_plan.save(tmp / NETX_PLAN_FILE)
            try:
                netx = write_netx(netx_plan if netx_plan is not None else plan, tmp / NETX_FILE)
            except NetxUnrepresentableError as exc:
                if netx_plan is None:
                    raise UserError(f"export --target {target}: {exc}") from None
                what = str(exc).split("; quantize with")[0]  # that advice was followed: the derived plan
                raise UserError(f"export --target {target}: even the plan derived for netx cannot be "
                                f"written: {what}") from None
            carries[NETX_FILE] = NETX_PLAN_FILE if netx_plan is not None else PLAN_FILE
            timings[NETX_FILE] = time.perf_counter() - t0
            say(f"wrote {NETX_FILE}" + (f" (the plan derived for netx, {NETX_PLAN_FILE})"
                                        if netx_plan is not None else ""))
        onnx = None
        if target in ("onnx", "all"):
            from stft_neuro.export.onnx_host import export_host_onnx
            t0 = time.perf_counter()
            onnx = export_host_onnx(model, plan, tmp)
            timings["onnx"] = time.perf_counter() - t0
            for role_file in sorted(set(onnx["roles"].values())):
                carries[role_file] = PLAN_FILE
            say("wrote the host ONNX graphs")
            if run is not None:
                from safetensors.numpy import save_file
                save_file({"class_embeddings": run[1]}, str(tmp / CLASSES_FILE))
                say(f"wrote {CLASSES_FILE}")
        exit_entry = _copy_exit_rule(early_exit, plan, tmp, say)
        files = file_records(tmp)
        spiking_cfg = model.spiking.cfg
        manifest = {
            "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "stft_neuro": __version__,
            "target": target, "source": source, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": files, "export_seconds": timings,
            "plan": plan.to_dict(),
            "bridge": bridge_description(plan, spiking_cfg.dynamic_threshold),
            "host": {"dynamic_threshold": spiking_cfg.dynamic_threshold, "tsf": spiking_cfg.tsf,
                     "glp": spiking_cfg.glp, "onnx": onnx},
            "netx": netx, "nir": nir_files,
            "plans": _plans_entry(carries, netx_plan is not None),
            "netx_cost": netx_cost if netx_plan is not None else None,
            "run": run[0] if run is not None and onnx is not None else None,
            "quantization": quant_summary, "early_exit": exit_entry,
            "design_rules": resources["design_rules"], "resources": resources.get("totals"),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=json_default) + "\n")
    return manifest


def _copy_exit_rule(path: Path | None, plan: DeploymentPlan, tmp: Path,
                    say: Callable[[str], None]) -> dict | None:
    """Copy the run's early-exit rule into the bundle when it was calibrated for ``plan`` ->
    the manifest's ``early_exit`` entry (None: no rule, or one made for another plan)."""
    if path is None or not Path(path).is_file():
        return None
    from stft_neuro.simulate.early_exit import RULE_FILE, EarlyExitError, ExitRule, plan_digest
    try:
        rule = ExitRule.load(path)
    except EarlyExitError as exc:
        say(f"not copied: the run's early-exit rule ({exc})")
        return None
    if rule.calibration.get("plan_sha256") != plan_digest(plan):
        say(f"not copied: {path} was calibrated for another plan than this bundle's")
        return None
    shutil.copyfile(path, tmp / RULE_FILE)
    say(f"wrote {RULE_FILE} (the run's early-exit rule)")
    return {"file": RULE_FILE, "calibration": rule.calibration}


def _plans_entry(carries: dict[str, str], derived: bool) -> dict:
    """The manifest's ``plans``: each plan file, what it is, and the files that carry it."""
    out = {PLAN_FILE: {"what": "the run's own deployment plan (model.spiking.deployment_plan())",
                       "carried_by": sorted(f for f, p in carries.items() if p == PLAN_FILE)}}
    if derived:
        out[NETX_PLAN_FILE] = {
            "what": "the plan derived for netx from the run's float parameters by the one quantizer "
                    "(quantize.plan_from_float(..., netx_compatible=True)); cost: netx_cost",
            "carried_by": sorted(f for f, p in carries.items() if p == NETX_PLAN_FILE)}
    return out


def json_default(obj):
    """``json.dumps`` fallback for numpy scalars and arrays and paths (manifests, results)."""
    import numpy as np
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
