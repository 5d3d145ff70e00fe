"""A self-contained HTML page of a report, and the same plots as PNG files (matplotlib, Agg).

Plots (file names): ``raster.png`` (one sample's spikes, every layer), ``layers.png`` (spikes and
firing rate per layer), ``activity.png`` (spikes and synaptic events per step), ``theta.png``
(threshold offsets per step of the same sample, or a note that thresholds are static),
``energy.png`` (host vs chip, chip by part) and ``loihi_vs_ann.png`` (the spiking branch on Loihi
against the same branch as an ANN on the host, and the hybrid total against everything on the
host). Every axis is linear and starts at zero, so bar lengths and heights compare as ratios; the
one exception is ``theta.png``, whose offsets are signed (its axis includes zero and marks it). The page embeds each PNG as base64, carries the tables
and every energy constant with its source, and needs nothing else to display. A small inline
script marks on ``<body>`` how many images decoded (``data-images-ok``) and whether any script
error occurred (``data-script-errors``), so a headless browser can check the page.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

PLOTS = ("raster", "layers", "activity", "theta", "energy", "loihi_vs_ann")


def _fig():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _fig().close(fig)
    return buf.getvalue()


def render_plots(rep: Mapping[str, Any], sample_spikes: Sequence[np.ndarray] | None,
                 sample_theta: np.ndarray | None, sample_label: str = "sample 0") -> dict[str, bytes]:
    """PNG bytes of every plot. ``sample_spikes``: per neuron layer ``(T, n)`` of one sample (in
    the order of the report's neuron layers); ``sample_theta``: ``(T, L)`` or None."""
    plt = _fig()
    out: dict[str, bytes] = {}
    neuron = [(k, d) for k, d in rep["layers"].items() if "neurons" in d and d.get("spiking")]
    syn = [(k, d) for k, d in rep["layers"].items() if "synaptic_events" in d]

    n = max(1, len(sample_spikes or []))
    fig, axes = plt.subplots(n, 1, figsize=(8, 1.6 + 1.4 * n), squeeze=False, sharex=True)
    if sample_spikes:
        for ax, (name, _), s in zip(axes[:, 0], neuron, sample_spikes):
            t, i = np.nonzero(np.asarray(s))
            ax.scatter(t, i, s=4, marker="|", color="k")
            ax.set_ylabel(f"{name}\nneuron", fontsize=8)
            ax.set_ylim(-0.5, np.asarray(s).shape[1] - 0.5)
            ax.set_xlim(-0.5, np.asarray(s).shape[0] - 0.5)
        axes[0, 0].set_title(f"spike raster, {sample_label}")
    else:
        axes[0, 0].text(0.5, 0.5, "no per-sample spikes recorded", ha="center", va="center")
    axes[-1, 0].set_xlabel("step")
    out["raster"] = _png(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    names = [k for k, _ in neuron]
    a1.bar(names, [d["spikes"] for _, d in neuron], color="tab:blue")
    a1.set_title("spikes per sample")
    a2.bar(names, [d["firing_rate"] for _, d in neuron], color="tab:orange")
    a2.set_title("firing rate (spikes / neuron / step)")
    for a in (a1, a2):
        a.tick_params(axis="x", labelrotation=30, labelsize=8)
    out["layers"] = _png(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for k, d in neuron:
        a1.plot(d["spikes_per_step"], marker=".", label=k)
    for k, d in syn:
        a2.plot(d["synaptic_events_per_step"], marker=".", label=k)
    a1.set_title("spikes per step (per sample)")
    a2.set_title("synaptic events per step (per sample)")
    for a in (a1, a2):
        a.set_xlabel("step")
        a.set_ylim(bottom=0)
        if a.lines:
            a.legend(fontsize=7)
    out["activity"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6, 3))
    if sample_theta is not None:
        th = np.asarray(sample_theta)
        for l in range(th.shape[1]):
            ax.plot(th[:, l], marker=".", label=names[l] if l < len(names) else f"layer {l}")
        ax.axhline(0.0, color="0.6", linewidth=0.8)   # signed offsets: the axis includes zero
        lo, hi = ax.get_ylim()
        ax.set_ylim(min(lo, 0.0), max(hi, 0.0))
        ax.set_title(f"threshold offset theta per step, {sample_label} (mantissa units, signed)")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "static thresholds: no theta sent", ha="center", va="center")
        ax.set_axis_off()
    out["theta"] = _png(fig)

    e = rep["energy"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    parts = {"synaptic": 0.0, "neuron_updates": 0.0, "spike_messages": 0.0}
    for d in rep["layers"].values():
        for k in parts:
            parts[k] += d["energy_pj"][k]
    bottom = 0.0
    for k, v in parts.items():
        ax.bar(["chip (Loihi model)"], [v], bottom=bottom, label=k)
        bottom += v
    ax.bar(["host (45 nm)"], [e["host"] or 0.0], color="tab:gray", label="host MACs")
    if e["host"] is None:
        ax.annotate("n/a: " + str(rep["host"].get("why", ""))[:60], (1, 0), ha="center",
                    va="bottom", fontsize=7, rotation=90)
    ax.set_ylabel("pJ per sample (estimate)")
    ax.set_ylim(bottom=0)
    ax.set_title("energy estimate: host vs chip")
    ax.legend(fontsize=7)
    out["energy"] = _png(fig)
    out["loihi_vs_ann"] = _loihi_vs_ann(plt, rep)
    return out


def _loihi_vs_ann(plt, rep: Mapping[str, Any]):
    """Two panels on linear axes from zero: the spiking branch on Loihi vs the same branch as an
    ANN on the host, and the hybrid total vs everything on the host; each bar labelled in uJ."""
    e = rep["energy"]
    ann = e["ann_all_on_host"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    panels = ((a1, ["chip (Loihi model)", "as an ANN on the host"],
               [e["chip"], ann["spiking_branch_as_ann"]], "the spiking branch"),
              (a2, ["hybrid: Loihi + host", "all on the host"],
               [e["hybrid_total"], ann["total_with_host"]],
               "the whole model" + ("" if e["host"] is not None else " (host compute not counted)")))
    for ax, names, values, title in panels:
        uj = [v / 1e6 for v in values]
        bars = ax.bar(names, uj, color=["tab:green", "tab:red"])
        for b, v in zip(bars, uj):
            ax.annotate(f"{v:.3g} uJ", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom",
                        fontsize=8)
        ratio = (f"; Loihi / host = {values[0] / values[1]:.2f}" if values[1] > 0 else "")
        ax.set_title(f"{title}{ratio}", fontsize=9)
        ax.set_ylim(0, max(uj + [0.0]) * 1.15 or 1.0)
        ax.set_ylabel("uJ per sample (estimate)")
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("Loihi vs host (estimates: Davies 2018 per-op, no Loihi 2 table; Horowitz 2014)",
                 fontsize=9)
    return _png(fig)


def write_html(rep: Mapping[str, Any], path: str | Path, plots: Mapping[str, bytes],
               table: str, png_dir: str | Path | None = None) -> Path:
    """Write the page to ``path`` (and the PNGs to ``png_dir``, default the page's folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pdir = Path(png_dir) if png_dir is not None else path.parent
    pdir.mkdir(parents=True, exist_ok=True)
    for name, data in plots.items():
        (pdir / f"{name}.png").write_bytes(data)
    imgs = "\n".join(
        f'<figure><img id="plot-{n}" alt="{n}" src="data:image/png;base64,'
        f'{base64.b64encode(plots[n]).decode()}"><figcaption>{n}</figcaption></figure>'
        for n in plots)
    consts = "\n".join(
        f"<tr><td>{html.escape(k)}</td><td>{v['value']:g}</td><td>{html.escape(v['unit'])}</td>"
        f"<td>{html.escape(v['source'])}</td></tr>" for k, v in rep["energy"]["constants"].items())
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in rep["energy"]["notes"])
    nb = {k: rep[k] for k in ("Footprint", "ParameterCount", "ConnectionSparsity",
                              "ActivationSparsity", "SynapticOperations", "MembraneUpdates")}
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>stft-neuro report</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:auto}} pre{{background:#f4f4f4;padding:8px;overflow-x:auto}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 6px;font-size:90%}} img{{max-width:100%}}</style>
</head><body data-images-total="{len(plots)}" data-images-ok="pending" data-script-errors="pending">
<script>
window.__reportErrors = [];
window.addEventListener("error", function (e) {{ window.__reportErrors.push(String(e.message)); }});
window.addEventListener("load", function () {{
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }}).length;
  document.body.setAttribute("data-images-ok", String(ok));
  document.body.setAttribute("data-script-errors", String(window.__reportErrors.length));
}});
</script>
<h1>stft-neuro report</h1>
<p>{rep['samples']} sample(s) x {rep['steps']} steps. Energies are <b>estimates</b>
(Loihi per-operation model, Davies et al. 2018; <b>no per-operation table is published for Loihi 2</b>;
host 45 nm, Horowitz 2014).</p>
<h2>Per layer</h2><pre>{html.escape(table)}</pre>
<h2>NeuroBench 2.3 metrics (per sample)</h2><pre>{html.escape(json.dumps(nb, indent=2))}</pre>
<h2>Plots</h2>
{imgs}
<h2>Energy constants</h2>
<table><tr><th>name</th><th>value</th><th>unit</th><th>source</th></tr>
{consts}</table>
<ul>{notes}</ul>
</body></html>
"""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page)
    tmp.replace(path)
    return path
