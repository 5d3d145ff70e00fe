"""Read a NIR file written by any tool into a validated :class:`converters.nir_graph.Graph`.

The file is read with nir's own HDF5 reader (``nir.serialization.hdf2dict``, the first half of
``nir.read``); the nodes are then built from those dictionaries here rather than by nir's
dataclasses, because files other tools write routinely fail nir's checks (``assert`` on parameter
shapes, a type check that ``nir.read(type_check=False)`` does not switch off for nested graphs) and
nir's ``infer_types`` rewrites the graph it checks. An in-memory ``nir.NIRGraph`` takes the same
path through ``graph.to_dict()``.

What is loaded faithfully with one :class:`NIRQuirkWarning` per kind of quirk (naming the nodes):

- batched Input/Output types (``(1, n)`` or ``(B, n)`` where the graph computes on ``(n,)``),
- scalar or size-1 neuron/bias parameters (broadcast to the layer),
- missing shapes (Input/Output without ``shape``, Conv without ``input_shape``, Flatten without
  ``input_type``: inferred from the graph),
- Flatten dims counted with a batch axis (as ``torch.nn.Flatten`` counts them),
- nested graphs without explicit Input/Output nodes (edges then address inner nodes by dotted
  name), duplicated edges,
- parameters that make forward Euler unstable (``dt/tau > 1``: simulated as written),
- IF/I nodes with ``r = 1/dt`` (SpikingJelly's convention, ``converters.conventions.if_gain``).

What is refused in one line (:class:`NIRFileError`, a ``UserError``): a missing, empty, truncated or
non-HDF5 file, HDF5 that is not NIR, unknown node types (named), malformed nodes, and everything
:func:`converters.nir_graph.build_graph` refuses.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from stft_neuro.converters import conventions
from stft_neuro.converters.nir_graph import (NEURON_PARAMS, TIME_CONSTANTS, Graph, NIRGraphError,
                                             Quirks, RawNode, build_graph)


class NIRFileError(NIRGraphError):
    """A NIR file that cannot be read; the message names the file and what is wrong."""


class NIRQuirkWarning(UserWarning):
    """A NIR file deviates from the NIR spec in a way that was repaired faithfully."""


# The fields each NIR node type stores (besides ``type`` and ``metadata``); required ones first.
_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Input": ((), ("shape", "input_type")),
    "Output": ((), ("shape", "output_type")),
    "Affine": (("weight", "bias"), ()),
    "Linear": (("weight",), ()),
    "Scale": (("scale",), ()),
    "LIF": (("tau", "r", "v_leak", "v_threshold"), ("v_reset",)),
    "CubaLIF": (("tau_syn", "tau_mem", "r", "v_leak", "v_threshold"), ("v_reset", "w_in")),
    "IF": (("r", "v_threshold"), ("v_reset",)),
    "LI": (("tau", "r", "v_leak"), ()),
    "CubaLI": (("tau_syn", "tau_mem", "r", "v_leak"), ("w_in",)),
    "I": (("r",), ()),
    "Threshold": (("threshold",), ()),
    "Delay": (("delay",), ()),
    "Flatten": ((), ("start_dim", "end_dim", "input_type")),
    "Conv1d": (("weight",), ("bias", "stride", "padding", "dilation", "groups", "input_shape")),
    "Conv2d": (("weight",), ("bias", "stride", "padding", "dilation", "groups", "input_shape")),
    "SumPool2d": (("kernel_size",), ("stride", "padding")),
    "AvgPool2d": (("kernel_size",), ("stride", "padding")),
}
_DEFAULTS = {"v_reset": 0.0, "w_in": 1.0, "start_dim": 1, "end_dim": -1, "stride": 1,
             "padding": 0, "dilation": 1, "groups": 1}


def read_nir(path: str | os.PathLike, dt: float | None = None, *, warn: bool = True
             ) -> tuple[Graph, float, str]:
    """Read ``path`` -> ``(graph, dt, dt_source)``.

    ``dt`` (seconds) overrides the graph's metadata ``dt``; see
    :func:`converters.conventions.resolve_dt`. Quirks become :class:`NIRQuirkWarning` s (one per
    kind) when ``warn``; the graph's ``metadata["quirks"]`` lists them either way.
    """
    import h5py
    from nir.serialization import hdf2dict

    p = Path(path)
    if not p.is_file():
        raise NIRFileError(f"{p}: no such file")
    if p.stat().st_size == 0:
        raise NIRFileError(f"{p}: the file is empty")
    try:
        with h5py.File(p, "r") as f:
            if "node" not in f or not isinstance(f["node"], h5py.Group):
                raise NIRFileError(f"{p}: an HDF5 file but not a NIR graph (no 'node' group; "
                                   f"top-level keys: {sorted(f.keys())[:6]})")
            data = hdf2dict(f["node"])
            version = f["version"][()] if "version" in f else None
    except NIRFileError:
        raise
    except OSError as exc:  # h5py: not HDF5, truncated, unreadable
        raise NIRFileError(f"{p}: not a readable HDF5/NIR file ({_short(exc)})") from None
    except Exception as exc:  # a corrupt dataset inside a valid container
        raise NIRFileError(f"{p}: cannot read its HDF5 content ({_short(exc)})") from None
    meta = dict(data.get("metadata") or {})
    if version is not None:
        meta.setdefault("nir_version", version.decode() if isinstance(version, bytes) else version)
    return from_dict(data, dt, source=str(p), warn=warn, metadata=meta)


def from_nir(graph: Any, dt: float | None = None, *, warn: bool = True
             ) -> tuple[Graph, float, str]:
    """An in-memory ``nir.NIRGraph`` -> ``(graph, dt, dt_source)`` (same rules as :func:`read_nir`)."""
    return from_dict(graph.to_dict(), dt, source="<nir.NIRGraph>", warn=warn)


def from_dict(data: Mapping[str, Any], dt: float | None = None, *, source: str = "<dict>",
              warn: bool = True, metadata: Mapping[str, Any] | None = None
              ) -> tuple[Graph, float, str]:
    """A NIR graph dictionary (``NIRGraph.to_dict()`` or nir's ``hdf2dict``) -> graph, dt, source."""
    if _text(data.get("type", "NIRGraph")) != "NIRGraph" or not isinstance(data.get("nodes"), Mapping):
        raise NIRFileError(f"{source}: the top-level node is not a NIRGraph with nodes")
    quirks = Quirks()
    raw: dict[str, RawNode] = {}
    edges: list[tuple[str, str]] = []
    _flatten_into(data, "", raw, edges, quirks, source)
    meta = dict(metadata if metadata is not None else (data.get("metadata") or {}))
    try:
        dt_used, dt_source = conventions.resolve_dt(dt, meta)
    except ValueError as exc:
        raise NIRFileError(f"{source}: {exc}") from None
    graph = build_graph(raw, edges, meta, quirks)
    for name, node in graph.nodes.items():
        taus = {k: node.params[k] for k in TIME_CONSTANTS if k in node.params}
        bad = conventions.unstable_rates(dt_used, **taus)
        if bad:
            quirks.add(f"forward Euler unstable at dt={dt_used:g} s (dt/tau > 1; simulated as "
                       "written)", f"{name}.{'/'.join(bad)}")
        if node.kind in ("IF", "I") and conventions.if_gain(dt_used, node.params["r"])[1]:
            quirks.add("IF/I with r = 1/dt (SpikingJelly's convention: v += r*dt*x per step)",
                       name)
        if node.kind == "Delay":
            try:
                conventions.delay_steps(node.params["delay"], dt_used)
            except ValueError as exc:
                raise NIRGraphError(f"node {name!r} (Delay): {exc}") from None
    if warn:
        for quirk, names in quirks.found.items():
            warnings.warn(f"{source}: {quirk}: {', '.join(names[:8])}"
                          + (f" (+{len(names) - 8} more)" if len(names) > 8 else ""),
                          NIRQuirkWarning, stacklevel=2)
    graph = Graph(nodes=graph.nodes, edges=graph.edges, order=graph.order,
                  recurrent=graph.recurrent, incoming=graph.incoming, inputs=graph.inputs,
                  outputs=graph.outputs,
                  metadata={**graph.metadata, "quirks": dict(quirks.found)})
    return graph, dt_used, dt_source


def _flatten_into(data: Mapping[str, Any], prefix: str, raw: dict[str, RawNode],
                  edges: list[tuple[str, str]], quirks: Quirks, source: str) -> None:
    """Add ``data``'s nodes (nested graphs flattened to dotted names) and edges.

    A nested graph's Input/Output nodes become ``Identity`` nodes; an edge to the nested graph's
    name goes to its single Input, an edge from it leaves its single Output. Edges may also name
    inner nodes directly (``"sub.lif"``)."""
    nodes = data.get("nodes")
    if not isinstance(nodes, Mapping):
        raise NIRFileError(f"{source}: graph {prefix.rstrip('.') or '<top>'} has no 'nodes' group")
    ends: dict[str, tuple[str | None, str | None]] = {}
    for key, nd in nodes.items():
        name = prefix + str(key)
        if not isinstance(nd, Mapping) or "type" not in nd:
            raise NIRFileError(f"{source}: node {name!r} has no 'type'")
        kind = _text(nd["type"])
        if kind == "NIRGraph":
            _flatten_into(nd, name + ".", raw, edges, quirks, source)
            ins = [prefix + str(key) + "." + str(k) for k, v in nd["nodes"].items()
                   if isinstance(v, Mapping) and _text(v.get("type")) == "Input"]
            outs = [prefix + str(key) + "." + str(k) for k, v in nd["nodes"].items()
                    if isinstance(v, Mapping) and _text(v.get("type")) == "Output"]
            for lst in (ins, outs):
                for n in lst:
                    raw[n].kind = "Identity"
            if not ins or not outs:
                quirks.add("nested graph without Input/Output nodes (edges address inner nodes)",
                           name)
            ends[name] = (ins[0] if len(ins) == 1 else None, outs[0] if len(outs) == 1 else None)
            continue
        raw[name] = _raw_node(name, kind, nd, quirks, source)
    raw_edges = data.get("edges")
    if raw_edges is None:
        raw_edges = []
    arr = np.asarray(raw_edges, dtype=object)
    if arr.size and (arr.ndim != 2 or arr.shape[1] != 2):
        raise NIRFileError(f"{source}: edges must be (source, destination) pairs, got shape "
                           f"{arr.shape}")
    for s, d in arr.reshape(-1, 2) if arr.size else []:
        s, d = prefix + _text(s), prefix + _text(d)
        if s in ends:
            if ends[s][1] is None:
                raise NIRFileError(f"{source}: edge ({s!r}, {d!r}) leaves nested graph {s!r}, "
                                   "which has no single Output node")
            s = ends[s][1]
        if d in ends:
            if ends[d][0] is None:
                raise NIRFileError(f"{source}: edge ({s!r}, {d!r}) enters nested graph {d!r}, "
                                   "which has no single Input node")
            d = ends[d][0]
        edges.append((s, d))


def _raw_node(name: str, kind: str, nd: Mapping[str, Any], quirks: Quirks, source: str) -> RawNode:
    if kind not in _FIELDS:
        raise NIRGraphError(f"node {name!r}: node type {kind!r} is not supported (supported: "
                            f"{', '.join(sorted(_FIELDS))}, nested NIRGraph)")
    required, optional = _FIELDS[kind]
    params: dict[str, Any] = {}
    for key in required:
        if key not in nd:
            raise NIRGraphError(f"node {name!r} ({kind}): missing parameter {key!r}")
        params[key] = _array(nd[key], name, kind, key)
    for key in optional:
        if key in nd and nd[key] is not None:
            val = nd[key]
            if isinstance(val, Mapping):  # {"input": shape} / {"output": shape}
                val = next(iter(val.values()), None)
            if val is None:
                continue
            params[key] = val if isinstance(val, (str, bytes)) else _array(val, name, kind, key)
        elif key in _DEFAULTS:
            params[key] = np.asarray(_DEFAULTS[key], dtype=np.float64)
    hint = None
    for key in ("shape", "input_type", "output_type", "input_shape"):
        if key in params:
            val = params.pop(key)
            a = np.asarray(val).reshape(-1)
            hint = tuple(int(x) for x in a) if a.size and a.dtype.kind in "iuf" else None
    if kind in NEURON_PARAMS:
        for key in NEURON_PARAMS[kind]:
            a = np.asarray(params[key])
            if a.ndim == 0:
                quirks.add("scalar parameters (broadcast to the layer)", name)
    return RawNode(kind, params, hint)


def _array(val: Any, name: str, kind: str, key: str) -> Any:
    if isinstance(val, (str, bytes)):
        return val
    try:
        a = np.asarray(val)
        if a.dtype.kind == "O":
            raise TypeError("object array")
        if a.dtype.kind in "SU":
            return a
        return a.astype(np.float64) if a.dtype.kind in "fc" else a
    except Exception:
        raise NIRGraphError(f"node {name!r} ({kind}): parameter {key!r} is not numeric") from None


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf8", "replace")
    if isinstance(v, np.ndarray) and v.size == 1:
        return _text(v.reshape(-1)[0])
    return str(v)


def _short(exc: BaseException) -> str:
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return msg[:160]
