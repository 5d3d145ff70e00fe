"""A :class:`~stft_neuro.hw_targets.loihi2.network.FixedPointGraph` as one safetensors file.

The same container as the STFT plan (``DeploymentPlan.save``): integer arrays as tensors
(``populations.<i>.index``, ``populations.<i>.bias_mant``, ``populations.<i>.v_reset`` where a
population resets to other than 0, ``projections.<j>.weight``, and ``projections.<j>.kernel`` for
a convolution, whose geometry is in the header; int32), the
rest as JSON in the header metadata under ``stft_neuro.graph`` with a format name and version,
and the host's input conversion (``input_scale``: float input per payload LSB) and ``dt``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from stft_neuro.hw_targets.errors import PlanFormatError
from stft_neuro.hw_targets.loihi2.network import FixedPointGraph, Population, Projection

GRAPH_FORMAT = "stft-neuro/fixed-point-graph"
GRAPH_VERSION = 1
METADATA_KEY = "stft_neuro.graph"


def graph_header(g: FixedPointGraph, input_scale: float, dt: float) -> dict[str, Any]:
    """Everything but the arrays, JSON-ready."""
    return {"format": GRAPH_FORMAT, "version": GRAPH_VERSION, "n_in": g.n_in,
            "input_bits": g.input_bits, "input_scale": float(input_scale), "dt": float(dt),
            "layers": [list(x) for x in g.layers], "depth": [list(x) for x in g.depth],
            "bias_inputs": list(g.bias_inputs),
            "populations": [{"name": p.name, "layer": p.layer, "du": p.du, "dv": p.dv,
                             "vth": p.vth, "bias_exp": p.bias_exp,
                             **({"readout": True, "state_scale": float(p.state_scale)}
                                if p.readout else {})} for p in g.populations],
            "projections": [{"src": p.src, "dst": p.dst, "weight_exp": int(p.weight_exp),
                             "num_message_bits": int(p.num_message_bits),
                             **({"conv": {k: (list(v) if isinstance(v, tuple) else v)
                                          for k, v in p.conv.items() if k != "kernel"}}
                                if p.conv is not None else {})}
                            for p in g.projections]}


def save_graph(g: FixedPointGraph, path: str | Path, input_scale: float, dt: float) -> Path:
    """Write ``g`` to ``path`` (``.safetensors``)."""
    from safetensors.numpy import save_file

    t = {}
    for i, p in enumerate(g.populations):
        t[f"populations.{i}.index"] = np.ascontiguousarray(p.index, dtype=np.int32)
        t[f"populations.{i}.bias_mant"] = np.ascontiguousarray(p.bias_mant, dtype=np.int32)
        if p.v_reset is not None:
            t[f"populations.{i}.v_reset"] = np.ascontiguousarray(p.v_reset, dtype=np.int32)
    for j, p in enumerate(g.projections):
        t[f"projections.{j}.weight"] = np.ascontiguousarray(p.weight, dtype=np.int32)
        if p.conv is not None:
            t[f"projections.{j}.kernel"] = np.ascontiguousarray(p.conv["kernel"], dtype=np.int32)
    save_file(t, str(path), metadata={METADATA_KEY: json.dumps(graph_header(g, input_scale, dt))})
    return Path(path)


def _conv(geometry: dict | None, kernel: np.ndarray | None) -> dict | None:
    """A projection's ``conv`` from its header geometry and its kernel tensor (both or neither)."""
    if geometry is None and kernel is None:
        return None
    if geometry is None or kernel is None:
        raise KeyError("a convolution projection needs both its geometry and its kernel")
    return {"kernel": kernel.astype(np.int64), "groups": int(geometry["groups"]),
            **{k: tuple(int(a) for a in geometry[k])
               for k in ("stride", "padding", "dilation", "in_shape", "out_shape")}}


def load_graph(path: str | Path) -> tuple[FixedPointGraph, dict[str, Any]]:
    """Read a file of :func:`save_graph` -> ``(graph, header)``; :class:`PlanFormatError` names
    what is wrong."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = (f.metadata() or {}).get(METADATA_KEY)
            arr = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise PlanFormatError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        h = json.loads(meta or "")
        if h.get("format") != GRAPH_FORMAT or h.get("version") != GRAPH_VERSION:
            raise PlanFormatError(f"{path}: format {h.get('format')!r} version {h.get('version')!r}"
                                  f" is not {GRAPH_FORMAT!r} version {GRAPH_VERSION}")
        pops = tuple(Population(p["name"], p["layer"], arr[f"populations.{i}.index"].astype(np.int64),
                                int(p["du"]), int(p["dv"]), int(p["vth"]),
                                arr[f"populations.{i}.bias_mant"].astype(np.int64), int(p["bias_exp"]),
                                bool(p.get("readout", False)), float(p.get("state_scale", 1.0)),
                                (arr[f"populations.{i}.v_reset"].astype(np.int64)
                                 if f"populations.{i}.v_reset" in arr else None))
                     for i, p in enumerate(h["populations"]))
        projs = tuple(Projection(p["src"], p["dst"], arr[f"projections.{j}.weight"].astype(np.int64),
                                 int(p["weight_exp"]), int(p["num_message_bits"]),
                                 _conv(p.get("conv"), arr.get(f"projections.{j}.kernel")))
                      for j, p in enumerate(h["projections"]))
        g = FixedPointGraph(int(h["n_in"]), int(h["input_bits"]),
                            tuple((str(a), int(b)) for a, b in h["layers"]),
                            tuple((str(a), int(b)) for a, b in h["depth"]), pops, projs,
                            tuple(h["bias_inputs"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise PlanFormatError(f"{path}: not a fixed-point graph ({exc!r})") from None
    return g, h
