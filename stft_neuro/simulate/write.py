"""What ``simulate`` writes: the per-batch records merged in sample order with the predictions,
``records.npz`` (byte-reproducible), ``plan.safetensors`` and ``results.json``, into the folder
``checkpoint.atomic_folder`` gives (nothing partial remains after an error, Ctrl-C or SIGTERM). The record format is a contract (``stft-neuro report`` reads it; see the package doc).
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from stft_neuro.export.bundle import json_default

RECORDS = "records.npz"
RESULTS = "results.json"
PLAN_COPY = "plan.safetensors"


def merge(parts: list[dict], setup) -> dict[str, Any]:
    """The per-batch records of ``run_batches``, in sample order, stacked; the predictions (nearest
    class embedding, the calibration b on seen-class distances) made over all of them."""
    from stft_neuro.protocol import distances, predict

    bench, picks = setup.bench, setup.picks
    joint = np.concatenate([p["joint"] for p in parts])
    dist = distances(joint, setup.class_emb)
    pred = predict(dist, np.arange(setup.class_emb.shape[0]), bench.seen(2), setup.bias)
    L = len(parts[0]["spikes"])
    rounding = None
    if setup.onnx_host is not None and parts[0]["rounding"] is not None:
        rounding = {k: sum(p["rounding"][k] for p in parts) for k in parts[0]["rounding"]}
    return {
        "spikes": [np.concatenate([p["spikes"][l] for p in parts]) for l in range(L)],
        "theta": np.concatenate([p["theta"] for p in parts]) if setup.dynamic else None,
        "payloads": np.concatenate([p["payloads"] for p in parts]),
        "joint": joint, "dist": dist,
        "labels": np.array([bench.splits[s].labels[i] for s, i in picks], dtype=np.int64),
        "pred": pred.astype(np.int64),
        "sample_index": np.array([i for _, i in picks], dtype=np.int64),
        "split_name": np.array([s for s, _ in picks]),
        "onnx_vs_torch_rounding": rounding,
        "steps": (np.concatenate([p["steps"] for p in parts]) if parts[0].get("steps") is not None else None),
    }


def metrics(rec: dict[str, Any], setup) -> dict[str, float]:
    """S/U/HM/ZSL (and b) over the simulated samples, from the merged distances."""
    from stft_neuro.protocol import metrics_from_distances
    bench = setup.bench
    return metrics_from_distances(rec["dist"], rec["labels"], bench.seen(2), bench.unseen(2),
                                  setup.bias).to_dict()


def record_arrays(rec: dict[str, Any], num_layers: int, dynamic: bool) -> dict[str, np.ndarray]:
    """The arrays of ``records.npz``, in the file's order."""
    arrays = {f"spikes_{l + 1}": rec["spikes"][l] for l in range(num_layers)}
    if dynamic:
        arrays["theta"] = rec["theta"]
    arrays.update(payloads=rec["payloads"], labels=rec["labels"], pred=rec["pred"],
                  sample_index=rec["sample_index"], split_name=rec["split_name"])
    if rec.get("steps") is not None:   # early exit only: without it the file is as before
        arrays["steps_run"] = rec["steps"].astype(np.int64)
    return arrays


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


def results(setup, rec, arrays, work, ray_info, timings: dict[str, float]) -> dict[str, Any]:
    """results.json's dict. ``timings``: ``startup_s`` (seconds before the loop), ``loop_s``
    (seconds of the loop, sharded part with Ray)."""
    from stft_neuro.export.bundle import MANIFEST

    bundle, plan, total = setup.bundle, setup.plan, len(setup.picks)
    T = int(rec["payloads"].shape[1])
    sample_steps = int(rec["steps"].sum()) if rec.get("steps") is not None else total * T
    backend_s, loop_s, startup_s = work["backend_s"], timings["loop_s"], timings["startup_s"]
    bridge = work["lava"]
    startup_backend = bridge["build_s"] if bridge else 0.0
    return {
        "format": "stft-neuro/simulate", "version": 1,
        "backend": setup.backend, "host": setup.host,
        "chip_from": setup.chip_from, "chip_file": setup.chip_file,
        "bundle": None if bundle is None else {
            "path": str(bundle.path),
            "manifest_sha256": hashlib.sha256((bundle.path / MANIFEST).read_bytes()).hexdigest()},
        "checkpoint": setup.checkpoint,
        "split": setup.split, "splits": list(setup.chosen),
        "samples": total, "samples_per_split": setup.samples, "batch": setup.batch,
        "num_steps": T, "sizes": list(plan.sizes), "dynamic_threshold": setup.dynamic,
        # padded feature length S of the benchmark (the host's FLOPs per sample depend on it)
        "seconds": int(setup.bench.splits[setup.chosen[0]].audio.shape[1]),
        "metrics": metrics(rec, setup),
        "bias_source": (f"{bundle.path}/manifest.json run.calibration_bias" if setup.alone
                        else f"{setup.checkpoint}/meta.json progress.best_bias"),
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
        "early_exit": early_exit_results(setup, rec, T),
        "record_format": {k: [list(v.shape), str(v.dtype)] for k, v in arrays.items()},
    }


def early_exit_results(setup, rec, T: int) -> dict[str, Any] | None:
    """results.json's ``early_exit``: None when off; else the rule (as stored), where it came from,
    the steps run (mean, histogram, sample-steps) and the per-step predictions the host made."""
    if setup.exit_setup is None:
        return None
    from stft_neuro.simulate.early_exit import judged_steps, steps_histogram
    rule, steps = setup.exit_setup.rule, rec["steps"]
    return {"rule": rule.to_dict(), "describe": rule.describe(), "source": setup.exit_source,
            "steps_mean": float(steps.mean()), "sample_steps": int(steps.sum()),
            "sample_steps_full": int(steps.size * T), "steps_histogram": steps_histogram(steps),
            "judged_steps": int(judged_steps(steps, rule.min_steps, T).sum())}


def write(folder: Path, setup, arrays: dict[str, np.ndarray], results_dict: dict[str, Any]) -> None:
    """``records.npz``, ``plan.safetensors`` and ``results.json`` into ``folder``."""
    save_records(folder / RECORDS, arrays)
    setup.plan.save(folder / PLAN_COPY)
    if setup.exit_setup is not None:
        from stft_neuro.simulate.early_exit import RULE_FILE
        setup.exit_setup.rule.save(folder / RULE_FILE)
    (folder / RESULTS).write_text(json.dumps(results_dict, indent=2, default=json_default) + "\n")


