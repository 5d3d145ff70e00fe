"""``stft-neuro report --compare RUN [RUN ...]``: several runs' energy against their HM, on one plot.

Each RUN is a ``stft-neuro simulate`` output folder. It is counted exactly as ``report --run``
counts one (:func:`~stft_neuro.report.cli.report_run_folder`: records replayed through the
reference simulator, energy **estimates** from the same constants), and its S/U/HM come from its
``results.json`` (the metrics of the samples that run simulated: runs of few samples have noisy
HM). Output:

- a table (terminal), one row per run;
- ``--json FILE``: ``{"format": "stft-neuro/report-compare", "version": 1, "runs": [row, ...],
  "constants": {...}, "notes": [...]}``; a row holds ``name``, ``run``, ``samples``, ``S``, ``U``,
  ``HM``, ``chip_uj``, ``host_uj`` (None when the run names no checkpoint), ``hybrid_total_uj``,
  ``ann_branch_uj`` (the spiking branch as an ANN on the host), ``ann_total_uj`` (everything on
  the host), ``chip_over_ann``, ``payloads_per_sample``, ``synaptic_events_per_sample``,
  ``payload_dead_zone``, ``steps``;
- ``--png FILE`` (and ``--html FILE``: a page with the plot and the table): HM against the chip's
  energy per sample (left; the same branch as an ANN on the host marked as a dashed line) and
  against the hybrid total (right; everything on the host dashed). Linear axes from zero.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Mapping, Sequence

from stft_neuro.report.counts import ReportInputError

FORMAT = "stft-neuro/report-compare"
VERSION = 1


def _names(runs: Sequence[Path]) -> list[str]:
    """Short unique labels: the folder name, with its parent where names repeat."""
    names = [p.name for p in runs]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}/{p.name}" for p in runs]
    if len(set(names)) < len(names):
        names = [str(p) for p in runs]
    return names


def compare_row(name: str, run: Path, rep: Mapping[str, Any], results: Mapping[str, Any]) -> dict:
    e = rep["energy"]
    ann = e["ann_all_on_host"]
    metrics = results.get("metrics") or {}
    events = sum(d.get("synaptic_events", 0.0) for d in rep["layers"].values())
    uj = lambda v: None if v is None else float(v) / 1e6  # noqa: E731
    return {
        "name": name, "run": str(run), "samples": rep["samples"], "steps": rep["steps"],
        "S": metrics.get("S"), "U": metrics.get("U"), "HM": metrics.get("HM"),
        "chip_uj": uj(e["chip"]), "host_uj": uj(e["host"]), "hybrid_total_uj": uj(e["hybrid_total"]),
        "ann_branch_uj": uj(ann["spiking_branch_as_ann"]), "ann_total_uj": uj(ann["total_with_host"]),
        "chip_over_ann": (e["chip"] / ann["spiking_branch_as_ann"]
                          if ann["spiking_branch_as_ann"] > 0 else None),
        "payloads_per_sample": rep["messages"]["host_to_chip"]["payloads"],
        "synaptic_events_per_sample": events,
        "payload_dead_zone": rep["messages"]["host_to_chip"].get("payload_dead_zone", 0),
        "backend": rep["source"].get("backend"),
    }


def compare_runs(runs: Sequence[str | Path], constants: str | Path | None = None) -> dict:
    """Count every run folder and return the comparison dict (module doc)."""
    from stft_neuro.report.cli import report_run_folder

    paths = [Path(r) for r in runs]
    if not paths:
        raise ReportInputError("--compare needs at least one run folder")
    rows, consts = [], None
    for name, p in zip(_names(paths), paths):
        rep, extras = report_run_folder(p, constants)
        rows.append(compare_row(name, p, rep, extras["results"]))
        consts = rep["energy"]["constants"]
    return {"format": FORMAT, "version": VERSION, "estimate": True, "unit": "uJ per sample",
            "runs": rows, "constants": consts,
            "notes": ["Energies are estimates (Loihi per-operation model, Davies et al. 2018; no "
                      "per-operation table is published for Loihi 2; host 45 nm, Horowitz 2014).",
                      "HM is each run's own (results.json): runs of few samples have noisy HM."]}


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def format_compare_table(cmp: Mapping[str, Any]) -> str:
    head = (f"{'run':<24} {'samples':>7} {'HM':>6} {'chip uJ':>9} {'ANN uJ':>8} {'chip/ANN':>8} "
            f"{'hybrid uJ':>10} {'all-host uJ':>11} {'payloads':>9} {'dead zone':>9}")
    lines = ["energy per sample (ESTIMATES: Loihi per-op model, Davies 2018 - no Loihi 2 table is "
             "published; host 45 nm, Horowitz 2014)", head, "-" * len(head)]
    for r in cmp["runs"]:
        lines.append(f"{r['name'][:24]:<24} {r['samples']:>7} {_fmt(r['HM'], '.2f'):>6} "
                     f"{r['chip_uj']:>9.3f} {r['ann_branch_uj']:>8.3f} {_fmt(r['chip_over_ann'], '.2f'):>8} "
                     f"{r['hybrid_total_uj']:>10.3f} {r['ann_total_uj']:>11.3f} "
                     f"{r['payloads_per_sample']:>9.1f} {r['payload_dead_zone']:>9}")
    return "\n".join(lines)


def render_compare_png(cmp: Mapping[str, Any]) -> bytes:
    """HM vs chip energy (left) and vs hybrid total (right); linear axes from zero."""
    from stft_neuro.report.html import _fig, _png

    plt = _fig()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    rows = cmp["runs"]
    panels = ((axes[0], "chip_uj", "ann_branch_uj", "chip energy per sample (uJ, estimate)",
               "spiking branch as an ANN on the host"),
              (axes[1], "hybrid_total_uj", "ann_total_uj", "hybrid total per sample (uJ, estimate)",
               "everything on the host"))
    hms = [r["HM"] for r in rows if r["HM"] is not None]
    for ax, key, ref_key, xlabel, ref_label in panels:
        xs_max = 0.0
        for i, r in enumerate(rows):
            hm = r["HM"] if r["HM"] is not None else 0.0
            ax.scatter([r[key]], [hm], color=f"C{i % 10}", zorder=3,
                       label=r["name"] + ("" if r["HM"] is not None else " (no HM)"))
            ax.annotate(r["name"], (r[key], hm), fontsize=7, xytext=(3, 3), textcoords="offset points")
            xs_max = max(xs_max, r[key], r[ref_key])
        for j, ref in enumerate(sorted({round(r[ref_key], 9) for r in rows})):
            ax.axvline(ref, color="tab:red", linestyle="--", linewidth=1,
                       label=ref_label if j == 0 else None)
        ax.set_xlim(0, xs_max * 1.1 or 1.0)
        ax.set_ylim(0, (max(hms) * 1.15) if hms and max(hms) > 0 else 100.0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("HM (each run's samples)")
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_title("HM vs the chip's energy", fontsize=9)
    axes[1].set_title("HM vs the hybrid total (chip + host)", fontsize=9)
    return _png(fig)


def write_compare_html(cmp: Mapping[str, Any], png: bytes, table: str, path: str | Path) -> Path:
    path = Path(path)
    if not path.parent.is_dir():
        raise ReportInputError(f"{path}: folder {path.parent} does not exist")
    consts = "\n".join(
        f"<tr><td>{html.escape(k)}</td><td>{v['value']:g}</td><td>{html.escape(v['unit'])}</td>"
        f"<td>{html.escape(v['source'])}</td></tr>" for k, v in (cmp["constants"] or {}).items())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>stft-neuro report: compare</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:auto}} pre{{background:#f4f4f4;padding:8px}}
td{{border:1px solid #ccc;padding:2px 6px;font-size:90%}} img{{max-width:100%}}</style></head><body>
<h1>Energy vs HM, {len(cmp['runs'])} runs</h1>
<p>Energies are <b>estimates</b> (Loihi per-operation model, Davies et al. 2018; <b>no per-operation
table is published for Loihi 2</b>; host 45 nm, Horowitz 2014). Linear axes from zero.</p>
<img alt="compare" src="data:image/png;base64,{base64.b64encode(png).decode()}">
<pre>{html.escape(table)}</pre>
<table>{consts}</table>
</body></html>
"""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page)
    tmp.replace(path)
    return path
