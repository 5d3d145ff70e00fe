"""The project's internal NIR graph: validated, normalised, ordered, ready to simulate or lower.

``converters.nir_in`` reads files (any tool's, quirks and all) into a :class:`Graph`; the torch
simulator (``converters.nir_torch``) and the Lava lowering (``converters.nir_lava``) only ever see a
:class:`Graph`, never a raw NIR object. A :class:`Graph` is data: frozen, every parameter a float64
numpy array of the node's full shape (scalars already broadcast), every node's input and output
shape known (without a batch axis), nested graphs flattened into dotted names.

Execution semantics (one step ``t``, shared by every backend)::

    for node in graph.order:                     # a topological order of the same-step edges
        x = sum over node's incoming edges (src, node):
                out[src][t]      if the edge is a same-step edge
                out[src][t - 1]  if it is in graph.recurrent (zero at t = 0)
        out[node][t] = node.step(x, state[node])

Recurrent edges are chosen, not declared: NIR edges are plain ``(src, dst)`` pairs and cycles are
allowed. Inside a strongly connected component, the edges that *leave a stateful node* (a neuron
or a Delay) are cut; the rest must be acyclic (else: an algebraic loop, a cycle through no neuron,
refused naming a node on it). The cut edges that then point backwards in the order are the
recurrent ones: they carry the previous step. For snnTorch's ``RLeaky`` (``lif -> w_rec -> lif``)
the recurrent edge is ``lif -> w_rec``, so ``w_rec``'s bias enters from step 0, as in snnTorch.

Incoming contributions are summed in a fixed order: edges from outside the node's cycle first,
then edges from inside it, each group in file order. That is snnTorch's order for ``RLeaky``
(``beta * mem + input + recurrent(spk)``), and float addition is not associative.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import numpy as np

from stft_neuro.errors import UserError


class NIRGraphError(UserError):
    """A NIR graph that cannot be simulated faithfully; the message names the node or edge."""


# What each node kind computes; ``params`` lists the per-element float parameters of neuron-like
# nodes (broadcast to the node's shape).
NEURON_PARAMS: dict[str, tuple[str, ...]] = {
    "LIF": ("tau", "r", "v_leak", "v_threshold", "v_reset"),
    "CubaLIF": ("tau_syn", "tau_mem", "r", "v_leak", "v_threshold", "v_reset", "w_in"),
    "IF": ("r", "v_threshold", "v_reset"),
    "LI": ("tau", "r", "v_leak"),
    "CubaLI": ("tau_syn", "tau_mem", "r", "v_leak", "w_in"),
    "I": ("r",),
    "Threshold": ("threshold",),
    "Delay": ("delay",),
    "Scale": ("scale",),
}
TIME_CONSTANTS = ("tau", "tau_syn", "tau_mem")
SPIKING = frozenset({"LIF", "CubaLIF", "IF", "Threshold"})
STATEFUL = frozenset({"LIF", "CubaLIF", "IF", "LI", "CubaLI", "I", "Delay"})
LINEAR = frozenset({"Affine", "Linear", "Scale", "Flatten", "Conv1d", "Conv2d", "SumPool2d",
                    "AvgPool2d", "Identity"})
KINDS = frozenset({"Input", "Output"}) | STATEFUL | LINEAR | {"Threshold"}


@dataclass(frozen=True)
class Node:
    """One node. ``kind`` is the NIR type name (``"Identity"`` for the Input/Output of a nested
    graph, which pass their input through). ``params``: float64 arrays (neuron parameters of shape
    ``in_shape``; ``weight``/``bias`` as NIR stores them) and ints/tuples (conv geometry).
    ``in_shape``/``out_shape``: one sample, no batch or time axis."""

    name: str
    kind: str
    params: Mapping[str, Any]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def stateful(self) -> bool:
        return self.kind in STATEFUL

    @property
    def spiking(self) -> bool:
        return self.kind in SPIKING

    @property
    def size(self) -> int:
        return int(np.prod(self.out_shape, dtype=np.int64))


@dataclass(frozen=True)
class Graph:
    """A validated graph. ``order``: every node, each after the sources of its same-step edges.
    ``incoming[n]``: ``(src, recurrent)`` pairs in summation order. ``recurrent``: the edges that
    carry the previous step. ``inputs``/``outputs``: names of the Input/Output nodes."""

    nodes: Mapping[str, Node]
    edges: tuple[tuple[str, str], ...]
    order: tuple[str, ...]
    recurrent: frozenset[tuple[str, str]]
    incoming: Mapping[str, tuple[tuple[str, bool], ...]]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def outgoing(self, name: str) -> list[str]:
        return [d for s, d in self.edges if s == name]

    def summary(self) -> dict[str, Any]:
        """Node counts by kind, neurons, edges: for reports and ``--json``."""
        kinds: dict[str, int] = {}
        for n in self.nodes.values():
            kinds[n.kind] = kinds.get(n.kind, 0) + 1
        return {"nodes": len(self.nodes), "edges": len(self.edges), "kinds": kinds,
                "recurrent_edges": sorted(map(list, self.recurrent)),
                "neurons": int(sum(n.size for n in self.nodes.values() if n.stateful)),
                "input_shape": list(self.nodes[self.inputs[0]].out_shape) if self.inputs else None,
                "output_shapes": {o: list(self.nodes[o].in_shape) for o in self.outputs}}


@dataclass
class RawNode:
    """A node before validation: kind, parameters as read, and the shape hints the file gave
    (``shape`` for Input/Output, ``input_shape`` for Conv, ``input_type`` for Flatten; None when
    missing)."""

    kind: str
    params: dict[str, Any]
    shape_hint: tuple[int, ...] | None = None


class Quirks:
    """Collects the irregularities a reader tolerated, by quirk name -> node names, so that each
    quirk becomes one warning (``converters.nir_in``)."""

    def __init__(self) -> None:
        self.found: dict[str, list[str]] = {}

    def add(self, quirk: str, node: str) -> None:
        names = self.found.setdefault(quirk, [])
        if node not in names:
            names.append(node)


def build_graph(raw: Mapping[str, RawNode], edges: Iterable[tuple[str, str]],
                metadata: Mapping[str, Any] | None = None, quirks: Quirks | None = None) -> Graph:
    """Validate ``raw`` nodes and ``edges`` into a :class:`Graph`.

    Raises :class:`NIRGraphError` (one line, naming the node or edge) for: no nodes, unknown kinds,
    edges to missing nodes, not exactly one Input, no Output, NaN/inf parameters, time constants
    <= 0, shapes that do not fit, algebraic loops, nodes no Input reaches.
    """
    quirks = quirks or Quirks()
    if not raw:
        raise NIRGraphError("the graph has no nodes")
    edges = tuple((str(s), str(d)) for s, d in edges)
    for name, node in raw.items():
        if node.kind not in KINDS:
            raise NIRGraphError(f"node {name!r}: node type {node.kind!r} is not supported "
                                f"(supported: {', '.join(sorted(KINDS - {'Identity'}))})")
    for s, d in edges:
        for end in (s, d):
            if end not in raw:
                raise NIRGraphError(f"edge ({s!r}, {d!r}) refers to node {end!r}, which the graph "
                                    "does not have")
    seen: set[tuple[str, str]] = set()
    unique = []
    for e in edges:  # a duplicated edge would double a contribution: keep one, say so
        if e in seen:
            quirks.add("duplicate edges (kept once)", f"{e[0]}->{e[1]}")
            continue
        seen.add(e)
        unique.append(e)
    edges = tuple(unique)
    inputs = tuple(n for n, r in raw.items() if r.kind == "Input")
    outputs = tuple(n for n, r in raw.items() if r.kind == "Output")
    if len(inputs) != 1:
        raise NIRGraphError(f"the graph must have exactly one Input node, it has {len(inputs)}"
                            + (f" ({', '.join(inputs)})" if inputs else ""))
    if not outputs:
        raise NIRGraphError("the graph has no Output node")
    for s, d in edges:
        if raw[d].kind == "Input":
            raise NIRGraphError(f"edge ({s!r}, {d!r}) leads into the Input node")
        if raw[s].kind == "Output":
            raise NIRGraphError(f"edge ({s!r}, {d!r}) leaves the Output node")
    for name, node in raw.items():
        _check_finite(name, node)

    preds: dict[str, list[str]] = {n: [] for n in raw}
    succs: dict[str, list[str]] = {n: [] for n in raw}
    for s, d in edges:
        preds[d].append(s)
        succs[s].append(d)
    reach = _reachable(inputs[0], succs)
    for name in raw:
        if name not in reach:
            raise NIRGraphError(f"node {name!r} ({raw[name].kind}) is not reachable from the Input "
                                f"node {inputs[0]!r}")
    for o in outputs:
        if not preds[o]:
            raise NIRGraphError(f"Output node {o!r} has no incoming edge")

    comp = _scc(list(raw), succs)
    order, recurrent = _order(raw, edges, comp, preds, succs, inputs[0])
    incoming = {}
    for n in raw:
        ins = [(s, (s, n) in recurrent) for s, d in edges if d == n]
        # feed-forward drive (from outside n's cycle) first, then feedback, file order within
        ins.sort(key=lambda sr: comp[sr[0]] == comp[n])
        incoming[n] = tuple(ins)

    nodes = _infer_shapes(raw, order, incoming, quirks, succs)
    return Graph(nodes=MappingProxyType(nodes), edges=edges, order=tuple(order),
                 recurrent=frozenset(recurrent), incoming=MappingProxyType(incoming),
                 inputs=inputs, outputs=outputs, metadata=MappingProxyType(dict(metadata or {})))


# ------------------------------------------------------------------------------------------------
# structure

def _reachable(start: str, succs: Mapping[str, list[str]]) -> set[str]:
    seen, stack = {start}, [start]
    while stack:
        for d in succs[stack.pop()]:
            if d not in seen:
                seen.add(d)
                stack.append(d)
    return seen


def _scc(names: list[str], succs: Mapping[str, list[str]]) -> dict[str, int]:
    """Tarjan's strongly connected components (iterative): node -> component id."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    comp: dict[str, int] = {}
    counter = 0
    for root in names:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack.add(v)
            recurse = False
            for j in range(i, len(succs[v])):
                w = succs[v][j]
                if w not in index:
                    work.append((v, j + 1))
                    work.append((w, 0))
                    recurse = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if recurse:
                continue
            if low[v] == index[v]:
                cid = len(set(comp.values()))
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp[w] = cid
                    if w == v:
                        break
            if work:
                u = work[-1][0]
                low[u] = min(low[u], low[v])
    return comp


def _order(raw, edges, comp, preds, succs, source) -> tuple[list[str], set[tuple[str, str]]]:
    """Topological order of the same-step edges and the set of recurrent edges (module doc)."""
    cut = {(s, d) for s, d in edges if comp[s] == comp[d] and raw[s].kind in STATEFUL}
    # discovery rank from the input (breadth first) breaks ties: upstream nodes first
    rank = {source: 0}
    frontier = [source]
    while frontier:
        nxt = []
        for v in frontier:
            for w in succs[v]:
                if w not in rank:
                    rank[w] = len(rank)
                    nxt.append(w)
        frontier = nxt
    indeg = {n: 0 for n in raw}
    for s, d in edges:
        if (s, d) not in cut:
            indeg[d] += 1
    heap = [(rank[n], n) for n in raw if indeg[n] == 0]
    heapq.heapify(heap)
    order: list[str] = []
    while heap:
        _, v = heapq.heappop(heap)
        order.append(v)
        for w in succs[v]:
            if (v, w) in cut:
                continue
            indeg[w] -= 1
            if indeg[w] == 0:
                heapq.heappush(heap, (rank[w], w))
    if len(order) != len(raw):
        done = set(order)
        size = {c: sum(1 for m in comp.values() if m == c) for c in set(comp.values())}
        stuck = sorted((n for n in raw if n not in done and (size[comp[n]] > 1 or n in succs[n])),
                       key=lambda n: rank[n])
        raise NIRGraphError(f"algebraic loop: the cycle through node {stuck[0]!r} passes through no "
                            "neuron (nodes on cycles without a neuron: " + ", ".join(stuck[:6]) + ")")
    pos = {n: i for i, n in enumerate(order)}
    recurrent = {(s, d) for s, d in cut if pos[s] >= pos[d]}
    return order, recurrent


# ------------------------------------------------------------------------------------------------
# parameters

def _check_finite(name: str, node: RawNode) -> None:
    for key, val in node.params.items():
        if isinstance(val, np.ndarray) and val.dtype.kind == "f" and not np.all(np.isfinite(val)):
            bad = "NaN" if np.any(np.isnan(val)) else "infinite"
            raise NIRGraphError(f"node {name!r} ({node.kind}): parameter {key!r} has {bad} values")
        if key in TIME_CONSTANTS and isinstance(val, np.ndarray) and np.any(val <= 0):
            raise NIRGraphError(f"node {name!r} ({node.kind}): time constant {key!r} must be > 0 "
                                f"(smallest is {float(np.min(val)):g})")
    if node.kind == "Delay" and np.any(np.asarray(node.params["delay"]) < 0):
        raise NIRGraphError(f"node {name!r} (Delay): delays must be >= 0")


def _pair(v: Any, what: str, name: str, n: int = 2) -> tuple[int, ...]:
    a = np.asarray(v).reshape(-1)
    if a.size == 1:
        a = np.repeat(a, n)
    if a.size != n:
        raise NIRGraphError(f"node {name!r}: {what} must have {n} values, got {a.tolist()}")
    return tuple(int(x) for x in a)


def _conv_out(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def _infer_shapes(raw, order, incoming, quirks, succs) -> dict[str, Node]:
    """Walk ``order`` and give every node its input and output shape (recurrent edges are
    checked once every shape is known)."""
    out: dict[str, tuple[int, ...]] = {}
    nodes: dict[str, Node] = {}
    for name in order:
        r = raw[name]
        fwd = [s for s, rec in incoming[name] if not rec and s in out]
        if r.kind == "Input":
            in_shape = _input_shape(name, r, succs, raw, quirks)
        elif fwd:
            shapes = {out[s] for s in fwd}
            if len(shapes) > 1:
                raise NIRGraphError(f"node {name!r} receives different shapes: " + ", ".join(
                    f"{s} gives {out[s]}" for s in fwd))
            in_shape = shapes.pop()
        else:  # only fed by recurrent edges whose sources come later: use the node's own shape
            in_shape = _own_shape(name, r)
            if in_shape is None:
                raise NIRGraphError(f"node {name!r} ({r.kind}): cannot infer its input shape")
        params, out_shape = _node_shape(name, r, in_shape, quirks, succs, raw)
        out[name] = out_shape
        nodes[name] = Node(name, r.kind, MappingProxyType(params), in_shape, out_shape)
    for name in order:
        for s, rec in incoming[name]:
            if out[s] != nodes[name].in_shape:
                raise NIRGraphError(f"shape mismatch on edge ({s!r}, {name!r}): {s!r} gives "
                                    f"{out[s]}, {name!r} takes {nodes[name].in_shape}")
    return nodes


_RANK = {"Affine": 1, "Linear": 1, "Conv1d": 2, "Conv2d": 3, "SumPool2d": 3, "AvgPool2d": 3}


def _own_shape(name: str, r: RawNode) -> tuple[int, ...] | None:
    """The input shape a node declares by its own parameters, or None."""
    if r.kind in ("Affine", "Linear"):
        return (int(np.asarray(r.params["weight"]).shape[-1]),)
    if r.kind in NEURON_PARAMS:
        shapes = [np.shape(r.params[k]) for k in NEURON_PARAMS[r.kind] if k in r.params]
        full = [s for s in shapes if int(np.prod(s, dtype=np.int64)) > 1]
        return tuple(int(x) for x in full[0]) if full else None
    if r.kind in ("Conv1d", "Conv2d") and r.shape_hint:
        w = np.asarray(r.params["weight"])
        return (int(w.shape[1] * int(np.asarray(r.params.get("groups", 1)))),) + tuple(r.shape_hint)
    if r.kind in ("Output", "Identity") and r.shape_hint:
        return r.shape_hint
    return None


def _input_shape(name, r, succs, raw, quirks) -> tuple[int, ...]:
    """The Input node's per-sample shape, repairing a batched or missing shape from its consumers."""
    wanted = {s for s in (_own_shape(d, raw[d]) for d in succs[name]) if s is not None}
    ranks = {_RANK[raw[d].kind] for d in succs[name] if raw[d].kind in _RANK}
    hint = r.shape_hint
    if hint:
        if wanted and hint not in wanted:
            for cut in (1, 2):  # a batch (and time) axis written into the type
                if tuple(hint[cut:]) in wanted:
                    quirks.add("batched Input/Output type (leading batch axis dropped)", name)
                    return tuple(hint[cut:])
        if not wanted and len(ranks) == 1:
            rank = ranks.pop()
            if len(hint) in (rank + 1, rank + 2):
                quirks.add("batched Input/Output type (leading batch axis dropped)", name)
                return tuple(hint[len(hint) - rank:])
        return hint
    if len(wanted) == 1:
        quirks.add("missing shape (inferred from the graph)", name)
        return wanted.pop()
    raise NIRGraphError(f"Input node {name!r} has no shape and none can be inferred from "
                        "its consumers")


def _node_shape(name: str, r: RawNode, in_shape: tuple[int, ...], quirks: Quirks, succs, raw
                ) -> tuple[dict[str, Any], tuple[int, ...]]:
    """``(normalised params, out_shape)`` of one node given its input shape."""
    k, p = r.kind, dict(r.params)
    if k == "Input":
        return {}, in_shape
    if k in ("Output", "Identity"):
        hint = r.shape_hint
        if k == "Output" and hint != in_shape:
            if not hint:
                quirks.add("missing shape (inferred from the graph)", name)
            elif tuple(hint[1:]) == in_shape or tuple(hint[2:]) == in_shape:
                quirks.add("batched Input/Output type (leading batch axis dropped)", name)
            elif int(np.prod(hint)) == int(np.prod(in_shape)) and len(hint) != len(in_shape):
                quirks.add("Output type differs from its input in layout only", name)
            else:
                raise NIRGraphError(f"Output node {name!r} declares shape {hint}, its input "
                                    f"has shape {in_shape}")
        return {}, in_shape
    if k in ("Affine", "Linear"):
        w = np.asarray(p["weight"], dtype=np.float64)
        if w.ndim != 2:
            raise NIRGraphError(f"node {name!r} ({k}): weight must be 2-D (out, in), got {w.shape}")
        if in_shape != (w.shape[1],):
            raise NIRGraphError(f"shape mismatch at node {name!r} ({k}): weight {w.shape} takes "
                                f"({w.shape[1]},), its input has shape {in_shape}")
        p["weight"] = w
        if k == "Affine":
            b = np.asarray(p["bias"], dtype=np.float64)
            if b.size == 1 and w.shape[0] != 1:
                quirks.add("scalar parameters (broadcast to the layer)", name)
                b = np.full(w.shape[0], float(b.reshape(())))
            if b.shape != (w.shape[0],):
                raise NIRGraphError(f"shape mismatch at node {name!r} (Affine): bias {b.shape}, "
                                    f"weight {w.shape}")
            p["bias"] = b
        return p, (int(w.shape[0]),)
    if k in NEURON_PARAMS:
        for key in NEURON_PARAMS[k]:
            a = np.asarray(p[key], dtype=np.float64)
            if a.shape != in_shape:
                if a.size == 1:
                    if int(np.prod(in_shape)) != 1:
                        quirks.add("scalar parameters (broadcast to the layer)", name)
                    a = np.full(in_shape, float(a.reshape(-1)[0]))
                elif int(a.size) == int(np.prod(in_shape)) and a.ndim != len(in_shape):
                    quirks.add("parameter shape differs from the input in layout only", name)
                    a = a.reshape(in_shape)
                else:
                    raise NIRGraphError(f"shape mismatch at node {name!r} ({k}): parameter {key!r} "
                                        f"has shape {a.shape}, its input has shape {in_shape}")
            p[key] = a
        return p, in_shape
    if k == "Flatten":
        start, end = int(p.get("start_dim", 1)), int(p.get("end_dim", -1))
        wanted = {s for s in (_own_shape(d, raw[d]) for d in succs[name]) if s is not None}
        total = (int(np.prod(in_shape, dtype=np.int64)),)
        shape = _flatten(in_shape, start, end, name)
        if wanted == {total} and shape != total and start >= 1:
            shifted = _flatten(in_shape, start - 1, end - 1 if end > 0 else end, name)
            if shifted == total:  # dims counted with a batch axis, as torch.nn.Flatten does
                quirks.add("Flatten dims counted with a batch axis (shifted by one)", name)
                start, end, shape = start - 1, end - 1 if end > 0 else end, shifted
        p.update(start_dim=start, end_dim=end)
        return p, shape
    if k in ("Conv1d", "Conv2d"):
        nsp = 1 if k == "Conv1d" else 2
        w = np.asarray(p["weight"], dtype=np.float64)
        if w.ndim != nsp + 2:
            raise NIRGraphError(f"node {name!r} ({k}): weight must be {nsp + 2}-D, got {w.shape}")
        groups = int(np.asarray(p.get("groups", 1)))
        if len(in_shape) != nsp + 1 or in_shape[0] != w.shape[1] * groups:
            raise NIRGraphError(f"shape mismatch at node {name!r} ({k}): weight {w.shape} with "
                                f"groups={groups} takes {w.shape[1] * groups} channels and "
                                f"{nsp} spatial axes, its input has shape {in_shape}")
        if r.shape_hint and tuple(r.shape_hint) != in_shape[1:]:
            raise NIRGraphError(f"shape mismatch at node {name!r} ({k}): input_shape "
                                f"{r.shape_hint} but its input has spatial shape {in_shape[1:]}")
        if not r.shape_hint:
            quirks.add("missing shape (inferred from the graph)", name)
        stride = _pair(p.get("stride", 1), "stride", name, nsp)
        dil = _pair(p.get("dilation", 1), "dilation", name, nsp)
        pad_raw = p.get("padding", 0)
        if isinstance(pad_raw, np.ndarray) and pad_raw.dtype.kind in "SUO":
            pad_raw = pad_raw.reshape(-1)[0]
        if isinstance(pad_raw, (bytes, str)):
            mode = pad_raw.decode() if isinstance(pad_raw, bytes) else pad_raw
            if mode == "valid":
                pad = (0,) * nsp
            elif mode == "same":
                if any(s != 1 for s in stride) or any((d * (kk - 1)) % 2 for d, kk in
                                                      zip(dil, w.shape[2:])):
                    raise NIRGraphError(f"node {name!r} ({k}): padding='same' needs stride 1 and "
                                        "an odd effective kernel here")
                pad = tuple(d * (kk - 1) // 2 for d, kk in zip(dil, w.shape[2:]))
            else:
                raise NIRGraphError(f"node {name!r} ({k}): padding {mode!r} is not 'same', 'valid' "
                                    "or integers")
        else:
            pad = _pair(pad_raw, "padding", name, nsp)
        b = np.asarray(p.get("bias", np.zeros(w.shape[0])), dtype=np.float64).reshape(-1)
        if b.size == 1 and w.shape[0] != 1:
            quirks.add("scalar parameters (broadcast to the layer)", name)
            b = np.full(w.shape[0], float(b[0]))
        if b.shape != (w.shape[0],):
            raise NIRGraphError(f"shape mismatch at node {name!r} ({k}): bias {b.shape}, "
                                f"weight {w.shape}")
        spatial = tuple(_conv_out(in_shape[1 + i], w.shape[2 + i], stride[i], pad[i], dil[i])
                        for i in range(nsp))
        if any(s <= 0 for s in spatial):
            raise NIRGraphError(f"node {name!r} ({k}): kernel larger than its input {in_shape}")
        p.update(weight=w, bias=b, stride=stride, padding=pad, dilation=dil, groups=groups)
        return p, (int(w.shape[0]),) + spatial
    if k in ("SumPool2d", "AvgPool2d"):
        if len(in_shape) != 3:
            raise NIRGraphError(f"shape mismatch at node {name!r} ({k}): needs (C, H, W) input, "
                                f"got {in_shape}")
        ks = _pair(p["kernel_size"], "kernel_size", name)
        st = _pair(p.get("stride", ks), "stride", name)
        pad = _pair(p.get("padding", 0), "padding", name)
        spatial = tuple(_conv_out(in_shape[1 + i], ks[i], st[i], pad[i], 1) for i in range(2))
        if any(s <= 0 for s in spatial):
            raise NIRGraphError(f"node {name!r} ({k}): kernel larger than its input {in_shape}")
        p.update(kernel_size=ks, stride=st, padding=pad)
        return p, (in_shape[0],) + spatial
    raise NIRGraphError(f"node {name!r}: node type {k!r} is not supported")  # pragma: no cover


def _flatten(shape: tuple[int, ...], start: int, end: int, name: str) -> tuple[int, ...]:
    nd = len(shape)
    s = start + nd if start < 0 else start
    e = end + nd if end < 0 else end
    if not (0 <= s <= e < nd):
        raise NIRGraphError(f"node {name!r} (Flatten): start_dim={start}, end_dim={end} do not fit "
                            f"its input shape {shape}")
    return shape[:s] + (math.prod(shape[s:e + 1]),) + shape[e + 1:]
