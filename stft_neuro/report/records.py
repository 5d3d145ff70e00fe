"""The ``simulate`` output folder: read it (for ``stft-neuro report --run DIR``) and write it.

A run folder holds:

- ``records.npz`` (``np.savez_compressed``, read without pickle): ``spikes_1``..``spikes_L``
  ``(N, T, n_l)`` bool; ``theta`` ``(N, T, L)`` int32 when thresholds are dynamic (absent
  otherwise); ``payloads`` ``(N, T, n_in)`` int16; ``labels``, ``pred``, ``sample_index`` ``(N,)``;
  ``split_name`` ``(N,)`` str.
- ``plan.safetensors``: the plan that ran (``DeploymentPlan.save``).
- ``results.json``: backend, host, bundle path and manifest sha256, metrics, timings (kept as is in
  the report's ``source``). If it names the training run (``"checkpoint"``: a run folder), host
  compute is counted on that run's model (:func:`~stft_neuro.report.counts.host_flops`).

:func:`write_run_folder` writes exactly that format (the tests use it with real simulator runs).
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stft_neuro.report.counts import ReportInputError

RECORDS = "records.npz"
PLAN = "plan.safetensors"
RESULTS = "results.json"


@dataclass
class RunFolder:
    """A loaded run folder. ``spikes``: per layer ``(N, T, n_l)`` bool."""

    path: Path
    plan: Any
    spikes: list[np.ndarray]
    payloads: np.ndarray
    theta: np.ndarray | None
    extra: dict[str, np.ndarray]
    results: dict[str, Any]


def read_run_folder(path: str | Path) -> RunFolder:
    """Load ``path``; one-line :class:`ReportInputError` for anything missing or malformed."""
    from stft_neuro.hw_targets.errors import PlanFormatError
    from stft_neuro.hw_targets.loihi2.plan import DeploymentPlan

    d = Path(path)
    if not d.is_dir():
        raise ReportInputError(f"{d}: no such run folder")
    for name in (RECORDS, PLAN):
        if not (d / name).is_file():
            raise ReportInputError(f"{d}: no {name} (not a `stft-neuro simulate` output folder)")
    try:
        plan = DeploymentPlan.load(d / PLAN)
    except PlanFormatError as exc:
        raise ReportInputError(str(exc)) from None
    try:
        with np.load(d / RECORDS, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ReportInputError(f"{d / RECORDS}: not a readable .npz without pickles "
                               f"({str(exc).splitlines()[0][:120]})") from None
    from stft_neuro.report.counts import spikes_from_mapping
    spikes = spikes_from_mapping(arrays, plan.num_layers)
    extra_layers = sorted(k for k in arrays if k.startswith("spikes_")
                          and k not in {f"spikes_{l}" for l in range(1, plan.num_layers + 1)})
    if extra_layers:
        raise ReportInputError(f"{d / RECORDS}: holds {', '.join(extra_layers)} but the plan has "
                               f"{plan.num_layers} layers (records from a different plan?)")
    if "payloads" not in arrays:
        raise ReportInputError(f"{d / RECORDS}: no 'payloads' array")
    results: dict[str, Any] = {}
    if (d / RESULTS).is_file():
        try:
            results = json.loads((d / RESULTS).read_text())
        except json.JSONDecodeError as exc:
            raise ReportInputError(f"{d / RESULTS}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    extra = {k: v for k, v in arrays.items() if k not in ("payloads", "theta") and not k.startswith("spikes_")}
    return RunFolder(d, plan, spikes, arrays["payloads"], arrays.get("theta"), extra, results)


def write_run_folder(path: str | Path, plan: Any, spikes: Sequence[np.ndarray], payloads: np.ndarray,
                     theta: np.ndarray | None, results: dict[str, Any], *,
                     labels: np.ndarray | None = None, pred: np.ndarray | None = None,
                     sample_index: np.ndarray | None = None,
                     split_name: np.ndarray | None = None) -> Path:
    """Write a run folder in the format above. ``spikes``: per layer ``(N, T, n_l)``."""
    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    N = int(np.shape(payloads)[0])
    arrays: dict[str, np.ndarray] = {f"spikes_{l + 1}": np.asarray(s).astype(bool)
                                     for l, s in enumerate(spikes)}
    arrays["payloads"] = np.asarray(payloads).astype(np.int16)
    if theta is not None:
        arrays["theta"] = np.asarray(theta).astype(np.int32)
    arrays["labels"] = np.asarray(labels if labels is not None else np.zeros(N, np.int64))
    arrays["pred"] = np.asarray(pred if pred is not None else np.zeros(N, np.int64))
    arrays["sample_index"] = np.asarray(sample_index if sample_index is not None else np.arange(N))
    arrays["split_name"] = np.asarray(split_name if split_name is not None else ["test"] * N, dtype=str)
    np.savez_compressed(d / RECORDS, **arrays)
    plan.save(d / PLAN)
    (d / RESULTS).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return d
