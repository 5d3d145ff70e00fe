"""NIR graph -> Lava processes (``floating_pt``), run in Lava's CPU simulator (``Loihi2SimCfg``).

Two halves:

1. :func:`lower` (numpy and torch, no Lava): the graph becomes a :class:`LavaPlan` of neuron stages and
   the connections between them. Every chain of linear nodes between two neuron layers (Affine,
   Linear, Scale, Flatten, Conv1d/2d, SumPool2d, AvgPool2d, nested-graph Identity) is composed into
   one sparse matrix (computed by applying the node's own torch op, ``converters.nir_torch``, to
   identity columns: the same arithmetic as the torch backend, no second implementation). One
   connection is one Lava ``Sparse`` process in the float runner, convolutions as their exact
   sparse matrix: one code path, one delay rule. A connection that is exactly one ``Conv2d`` keeps
   its kernel too (``Connection.conv``): the fixed-point path runs it on Lava's ``Conv`` process
   (``converters/nir_fixed.py``). LIF, CubaLIF and IF become
   Lava LIF neurons (derived, forward Euler, ``converters.conventions``)::

       LIF      du = 1            dv = dt/tau      a_in = (r dt/tau) W x
       CubaLIF  du = dt/tau_syn   dv = dt/tau_mem  a_in = (r dt/tau_mem)(w_in dt/tau_syn) W x
       IF       du = 1            dv = 0           a_in = r W x  (r: conventions.if_gain)
       Threshold du = 1           dv = 1           a_in = W x    (z = x > threshold, no state)
       vth = v_threshold (>= 0); v_reset per neuron (Lava's LIF resets to 0: a v_reset != 0 runs
       on the project's VecLIF (float) / ResetLIF (fixed point) models, ``sim/lava_procs.py``)
       LI / CubaLI: as LIF / CubaLIF with no threshold and no reset (a *readout*: it may feed
       Output nodes only; Lava's float LIF cannot send v, so only the fixed-point path runs it,
       ``converters/nir_fixed.py``, where it sends its membrane v each step as a graded spike)

   Lava's LIF (``u = u(1-du) + a_in ; v = v(1-dv) + u + bias ; s = v > vth ; v[s] = 0``) is the
   reference's update with ``u = (r dt/tau_mem) I``. Lava's stock ``LIF`` holds one ``du``, ``dv``
   and ``vth`` per population; snnTorch writes them per neuron, so the neurons are ``VecLIF``: the
   same Lava float model (``AbstractPyLifModelFloat``: its ``subthr_dynamics``, ``reset_voltage``,
   ``run_spk``) with ``du``, ``dv``, ``vth`` as per-neuron vectors.

2. :class:`LavaFloatRunner`: builds the processes for a batch and runs them (Lava loaded, the
   runtime started and stopped by ``sim/lava_runtime.py``; ``VecLIF`` is in ``sim/lava_procs.py``).

Time alignment. Lava's ``Sparse``/``Dense`` deliver a step late: a neuron at depth ``d`` computes
reference step ``t`` at Lava step ``t + d``. Each connection is one Lava step; the steps the graph
itself delays by on the way (``lag``: 1 for a recurrent edge, ``k`` for a Delay node of ``k`` steps,
the same for every element) are taken out of it: ``d(dst) = d(src) + 1 - lag``. So a same-step
edge gives ``d(dst) = d(src) + 1``, a recurrent edge (previous step) ``d(dst) = d(src)``, and the
project's own export (``Affine -> Delay(dt) -> CubaLIF``, Lava's timing written in NIR) depth 0.
A graph whose depths disagree (skip connections of different length, a recurrent edge between
different layers, unequal or too long delays) is refused naming the node. The runner feeds the
``T`` input steps and then ``max d`` zero steps, and returns output ``t`` = Lava step ``t + d``:
outputs are aligned to input time, no step lost.

Constant drives (Affine biases, ``v_leak``) must start at a neuron's reference step 0 (or later,
behind a Delay), not at Lava step 0: they are sent through a host ``Injector`` and a ``Sparse`` into
``a_in``, switched on so that they arrive exactly then (a ``v_leak`` drive enters ``u`` as ``L`` at
the first step and ``du * L`` after, which adds exactly ``L`` to ``v`` each step). At depth 0 the
leak is Lava's own ``bias_mant``.

Many samples: one network per batch, every connection ``block_diag`` over the batch (``Sparse``) and
every neuron population ``B * n`` wide.

Lava computes in float64 with its own order of additions; the torch backend in float32 in
snnTorch's order: spikes could differ where a membrane lies within rounding of its threshold.
Measured here: no spike differs from snnTorch's own float32 run on any layer of 8 Leaky/Synaptic/
RLeaky networks (145,920 spike values) nor on the benchmark graph (B = 64, T = 100).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from stft_neuro.converters import conventions
from stft_neuro.converters.nir_graph import Graph, NIRGraphError
from stft_neuro.sim import lava_runtime

#: Spiking nodes, each a Lava LIF population. ``Threshold`` (``z = x > threshold``, no state) is
#: a LIF with ``du = dv = 1``: u and v hold only this step's input, exact in float; in fixed point
#: dv tops out at 4095 (``constants.DECAY_MAX``), so v keeps 1/4096 of itself (below 1/64 of the
#: threshold after a step without a spike), reported as ``dv_clipped``.
NEURONS = ("LIF", "CubaLIF", "IF", "Threshold")
#: Leaky integrators without spikes: lowered as stages (Lava's LIF dynamics, no threshold, no
#: reset) that only the fixed-point path runs, as readouts whose output is the membrane v
#: (``converters/nir_fixed.py``); they may feed Output nodes only.
READOUTS = ("LI", "CubaLI")


class LavaMappingError(NIRGraphError):
    """A graph (or node) that Lava's processes cannot express; the message names the node."""


@dataclass(frozen=True)
class NeuronStage:
    """One Lava neuron population (one NIR LIF/CubaLIF/IF node), per-neuron vectors ``(n,)``.

    ``drive``: constant ``a_in`` per step from biases (already scaled), by the reference step it
    starts at (0, or later when the bias passed through a Delay); ``leak``: ``v_leak dt/tau_mem``
    added to ``v`` per step; ``depth``: Lava steps between input time and this stage's time. At
    depth 0 (the graph delays the stage's input itself, as the project's exported graphs do) the
    leak, and a drive from step 0 when ``du == 1``, are Lava's ``bias_mant``; otherwise they are sent
    through ``u`` by the bias injector (module doc)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    du: np.ndarray
    dv: np.ndarray
    vth: np.ndarray
    drive: dict[int, np.ndarray]
    leak: np.ndarray
    depth: int
    bias_mant: np.ndarray  # what Lava's LIF adds to v from its step 0 (depth-0 stages only)
    v_reset: np.ndarray | None = None  # per neuron, where v goes after a spike (None: 0)

    @property
    def n(self) -> int:
        return int(np.prod(self.shape))

    @property
    def readout(self) -> bool:
        """An LI/CubaLI stage: no threshold, no spikes; its output is its membrane v."""
        return self.kind in READOUTS

    @property
    def needs_injector(self) -> bool:
        return any(np.any(v != 0) for v in self.drive.values()) or (
            self.depth > 0 and bool(np.any(self.leak != 0)))

    def injected(self, t: int) -> np.ndarray:
        """``a_in`` from the bias injector at this stage's reference step ``t`` (may be < 0)."""
        a = np.zeros(self.n)
        for start, v in self.drive.items():
            if t >= start:
                a = a + v
        if self.depth > 0 and t >= 0:  # leak through u: L at the first step, du * L after
            a = a + (self.leak if t == 0 else self.du * self.leak)
        return a


@dataclass(frozen=True)
class Connection:
    """``weight`` ``(n_dst, n_src)`` scipy CSR, already scaled into ``a_in`` units. ``src`` is the
    Input node or a stage; ``lag``: reference steps the graph itself delays this input by (1 for a
    NIR recurrent edge, or a Delay node on the path)."""

    src: str
    dst: str
    weight: sp.csr_matrix
    lag: int
    #: the connection is exactly one NIR ``Conv2d`` from ``src`` (no other node between): its
    #: kernel ``weight`` (C_out, C_in/groups, kh, kw) times ``channel_scale`` (C_out,) is
    #: ``weight`` above, unrolled; with ``stride``, ``padding``, ``dilation``, ``groups``,
    #: ``in_shape`` (C, H, W), ``out_shape``. The fixed-point path runs it on Lava's ``Conv``.
    conv: dict | None = None

    @property
    def recurrent(self) -> bool:
        return self.lag > 0


@dataclass(frozen=True)
class LavaPlan:
    """What :func:`lower` makes of a graph: stages in execution order, connections, and which stage
    each Output node reads."""

    input: str
    in_shape: tuple[int, ...]
    stages: tuple[NeuronStage, ...]
    connections: tuple[Connection, ...]
    outputs: dict[str, str]
    dt: float

    @property
    def max_depth(self) -> int:
        return max((s.depth for s in self.stages), default=0)

    def stage(self, name: str) -> NeuronStage:
        return next(s for s in self.stages if s.name == name)


_LINEAR = ("Affine", "Linear", "Scale", "Flatten", "Conv1d", "Conv2d", "SumPool2d", "AvgPool2d",
           "Identity", "Output")


def lower(graph: Graph, dt: float) -> LavaPlan:
    """Graph -> :class:`LavaPlan`; :class:`LavaMappingError` (naming the node) if Lava cannot run it.

    Every node's output is tracked as a sum of terms ``M @ out[src][t - lag]`` (``src`` the Input or
    a neuron, ``M`` sparse) plus constants that switch on at a reference step; a Delay node of ``k``
    steps (the same for every element) adds ``k`` to the lags, a recurrent edge adds 1."""
    from stft_neuro.converters.nir_torch import TorchSimulator

    sim = TorchSimulator(graph, dt, dtype=torch.float64)
    Terms = dict  # (source, lag) -> CSR matrix
    Consts = dict  # start step -> vector
    expr: dict[str, tuple[Terms, Consts]] = {}
    stage_in: dict[str, tuple[Terms, Consts]] = {}
    src_name = graph.inputs[0]

    def basis(n: str) -> tuple[Terms, Consts]:
        return {(n, 0): sp.identity(graph.nodes[n].size, format="csr")}, {}

    for name in graph.order:
        node = graph.nodes[name]
        if node.kind == "Input":
            expr[name] = basis(name)
            continue
        acc: Terms = {}
        consts: Consts = {}
        for s, rec in graph.incoming[name]:
            # a recurrent edge leaves a stateful node, which may come later in the order
            terms, cs = basis(s) if rec else expr[s]
            for (src, lag), m in terms.items():
                key = (src, lag + int(rec))
                acc[key] = acc[key] + m if key in acc else m
            for start, v in cs.items():
                consts[start + int(rec)] = consts.get(start + int(rec), 0) + v
        if node.kind in NEURONS + READOUTS:
            stage_in[name] = (acc, consts)
            expr[name] = basis(name)
        elif node.kind in _LINEAR:
            a, b0 = _linear_map(sim, name)
            out_c = {start: a @ v for start, v in consts.items()}
            if np.any(b0 != 0):
                out_c[0] = out_c.get(0, 0) + b0
            expr[name] = ({k: (a @ m).tocsr() for k, m in acc.items()}, out_c)
        elif node.kind == "Delay":
            steps = conventions.delay_steps(node.params["delay"], dt).reshape(-1)
            if steps.size and np.ptp(steps) != 0:
                raise LavaMappingError(f"node {name!r} (Delay): delays differ across elements "
                                       f"({np.unique(steps)[:4].tolist()} steps); a Lava connection "
                                       "delays all of its synapses alike")
            k = int(steps[0]) if steps.size else 0
            expr[name] = ({(src, lag + k): m for (src, lag), m in acc.items()},
                          {start + k: v for start, v in consts.items()})
        else:  # I
            raise LavaMappingError(f"node {name!r} ({node.kind}) cannot run on Lava: an integrator "
                                   "without leak has no bounded v (its scale would depend on the run's "
                                   "length), and Lava's LIF sends spikes only")

    stages, conns, depth = [], [], {src_name: 0}
    for name in graph.order:
        if name not in stage_in:
            continue
        node = graph.nodes[name]
        acc, consts = stage_in[name]
        p = node.params
        readout = node.kind in READOUTS
        for (src, _lag) in acc:
            if src in stage_in and graph.nodes[src].kind in READOUTS:
                raise LavaMappingError(f"node {src!r} ({graph.nodes[src].kind}) feeds node {name!r}: "
                                       "a leaky integrator (no spikes) runs on Lava as a readout "
                                       "only, read by the host (Output), not by another layer")
        threshold = p["threshold"] if node.kind == "Threshold" else p.get("v_threshold")
        v_reset = (None if readout or not np.any(np.asarray(p.get("v_reset", 0.0)) != 0) else
                   np.broadcast_to(np.asarray(p["v_reset"], np.float64), node.out_shape).reshape(-1).copy())
        if not readout and np.any(np.asarray(threshold) < 0):
            raise LavaMappingError(f"node {name!r} ({node.kind}): v_threshold < 0 is not supported on "
                                   "Lava (neurons would spike before their aligned start)")
        n = node.size
        if node.kind in ("LIF", "LI"):
            du, dv = np.ones(n), conventions.rate(dt, p["tau"]).reshape(-1)
            scale = conventions.membrane_gain(dt, p["tau"], p["r"]).reshape(-1)
            leak = conventions.leak_drive(dt, p["tau"], p["v_leak"]).reshape(-1)
        elif node.kind in ("CubaLIF", "CubaLI"):
            du = conventions.rate(dt, p["tau_syn"]).reshape(-1)
            dv = conventions.rate(dt, p["tau_mem"]).reshape(-1)
            scale = (conventions.membrane_gain(dt, p["tau_mem"], p["r"])
                     * conventions.synapse_gain(dt, p["tau_syn"], p["w_in"])).reshape(-1)
            leak = conventions.leak_drive(dt, p["tau_mem"], p["v_leak"]).reshape(-1)
        elif node.kind == "Threshold":  # no state: u and v forget everything each step
            du, dv, scale, leak = np.ones(n), np.ones(n), np.ones(n), np.zeros(n)
        else:  # IF
            du, dv = np.ones(n), np.zeros(n)
            scale, leak = conventions.if_gain(dt, p["r"])[0].reshape(-1), np.zeros(n)
        d = None
        # inputs from earlier stages fix the depth; a stage's own recurrent input fits any depth
        for (src, lag), m in sorted(acc.items(), key=lambda kv: kv[0][0] == name):
            if src == name:
                if lag != 1:
                    raise LavaMappingError(f"node {name!r}: its input from itself is delayed {lag} "
                                           "steps; a Lava connection delays exactly 1")
                conns.append(Connection(src, name, sp.diags(scale) @ m, lag))
                continue
            if src not in depth:
                raise LavaMappingError(f"node {name!r}: its input from {src!r} comes later in the "
                                       "graph (a recurrent edge between different layers)")
            want = depth[src] + 1 - lag
            if d is not None and want != d:
                raise LavaMappingError(f"node {name!r}: inputs arrive through paths of different "
                                       "depth (a skip connection or unequal delays); Lava's "
                                       "one-step-per-connection delay cannot align them")
            d = want
            conns.append(Connection(src, name, sp.diags(scale) @ m, lag,
                                    _conv_info(graph, name, src, lag, scale)))
        if d is None:
            raise LavaMappingError(f"node {name!r}: no input from the graph's Input")
        if d < 0:
            raise LavaMappingError(f"node {name!r}: the graph delays its input by more steps than "
                                   "Lava's connections (one step each) can")
        drive = {start: scale * v for start, v in consts.items() if np.any(v != 0)}
        bias_mant = leak.copy() if d == 0 else np.zeros(n)
        if d == 0 and 0 in drive:  # needed at Lava step 0: the injector's Sparse is a step late
            if not np.all(du == 1):
                raise LavaMappingError(f"node {name!r}: a bias into its synaptic current from its "
                                       "first step, behind a delay: Lava cannot start it in time")
            bias_mant = bias_mant + drive.pop(0)  # du = 1: u-drive == v-drive
        depth[name] = d
        vth = (np.zeros(n) if readout
               else np.broadcast_to(np.asarray(threshold, dtype=np.float64), node.out_shape).reshape(-1))
        stages.append(NeuronStage(name, node.kind, node.out_shape, du, dv, vth, drive, leak, d,
                                  bias_mant, v_reset))
    outputs = {}
    for o in graph.outputs:
        terms, cs = expr[o]
        keys = list(terms)
        if (len(keys) != 1 or keys[0][1] != 0 or keys[0][0] not in stage_in or cs
                or (terms[keys[0]] != sp.identity(terms[keys[0]].shape[0])).nnz):
            raise LavaMappingError(f"Output node {o!r} must be fed by a neuron (LIF, CubaLIF, IF, "
                                   "Threshold, or an LI/CubaLI readout) on Lava, unchanged")
        outputs[o] = keys[0][0]
    return LavaPlan(src_name, graph.nodes[src_name].out_shape, tuple(stages), tuple(conns),
                    outputs, float(dt))


def _conv_info(graph: Graph, name: str, src: str, lag: int, scale: np.ndarray) -> dict | None:
    """``Connection.conv`` when stage ``name``'s one input is a ``Conv2d`` whose one input is
    ``src`` itself (the graph's Input or a spiking stage) with no lag, and the stage's input scale
    is one value per output channel (so the kernel is shared); else None (a sparse matrix)."""
    inc = graph.incoming[name]
    if lag != 0 or len(inc) != 1 or inc[0][1]:
        return None
    conv = graph.nodes[inc[0][0]]
    if conv.kind != "Conv2d" or tuple(graph.incoming[conv.name]) != ((src, False),):
        return None
    if src != graph.inputs[0] and graph.nodes[src].kind not in NEURONS:
        return None
    p = conv.params
    c_out = conv.out_shape[0]
    per_channel = np.asarray(scale, np.float64).reshape(c_out, -1)
    if np.ptp(per_channel, axis=1).max(initial=0.0) != 0:
        return None
    return {"weight": np.asarray(p["weight"], np.float64), "channel_scale": per_channel[:, 0].copy(),
            "stride": tuple(int(a) for a in p["stride"]), "padding": tuple(int(a) for a in p["padding"]),
            "dilation": tuple(int(a) for a in p["dilation"]), "groups": int(p["groups"]),
            "in_shape": tuple(int(a) for a in graph.nodes[src].out_shape),
            "out_shape": tuple(int(a) for a in conv.out_shape)}


def _linear_map(sim: Any, name: str) -> tuple[sp.csr_matrix, np.ndarray]:
    """The node's map ``x -> A x + b`` as (CSR ``A`` (n_out, n_in), ``b`` (n_out,)), by applying the
    torch backend's own op to identity columns in chunks (float64)."""
    node = sim.graph.nodes[name]
    n_in = int(np.prod(node.in_shape))
    op = sim.ops[name]
    with torch.no_grad():
        b = sim._apply(op, [torch.zeros((1,) + node.in_shape, dtype=torch.float64)], None)
        b = b.reshape(-1).numpy().copy()
        cols = []
        for start in range(0, n_in, 1024):
            stop = min(n_in, start + 1024)
            eye = torch.zeros((stop - start, n_in), dtype=torch.float64)
            eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            y = sim._apply(op, [eye.reshape((stop - start,) + node.in_shape)], None)
            cols.append(sp.csr_matrix(y.reshape(stop - start, -1).numpy() - b[None, :]))
    return sp.vstack(cols).T.tocsr(), b


def to_float_layers(plan: LavaPlan) -> list:
    """A chain ``Input -> (linear nodes) [-> Delay] -> LIF/CubaLIF/IF -> ... -> neuron`` as the
    project's ``hw_targets.loihi2.quantize.FloatLayer`` list, for ``quantize_network`` (the
    fixed-point path). Pure: the plan is not changed.

    Requires: every stage fed by exactly the previous one (no recurrence, no skips), one ``du``,
    ``dv`` and threshold per layer (FloatLayer holds scalars), no constant drive into ``u`` unless
    ``du == 1`` (it is then the same as a bias on ``v``). ``LavaMappingError`` otherwise.

    Timing: a FloatLayer network runs with Lava's native one-step delay per layer and its bias acts
    from Lava step 0. For the project's own export (``Affine -> Delay(dt) -> CubaLIF``, every stage
    at depth 0) that is exactly the graph. For a graph without Delays (snnTorch's), layer ``l`` is
    at depth ``l``: shift its outputs back by ``plan.stages[l].depth`` as :class:`LavaFloatRunner`
    does; with nonzero biases the first ``depth`` steps then differ from the aligned float run
    (the bias integrates before the first input arrives).
    """
    from stft_neuro.hw_targets.loihi2.quantize import FloatLayer

    layers, prev = [], plan.input
    by_dst: dict[str, list[Connection]] = {}
    for c in plan.connections:
        by_dst.setdefault(c.dst, []).append(c)
    for st in plan.stages:
        if st.readout:
            raise LavaMappingError(f"node {st.name!r} ({st.kind}): a readout (no spikes), not a "
                                   "FloatLayer")
        if st.v_reset is not None:
            raise LavaMappingError(f"node {st.name!r} ({st.kind}): v_reset != 0, not a FloatLayer "
                                   "(which resets to 0)")
        conns = by_dst.get(st.name, [])
        if len(conns) != 1 or conns[0].src != prev or conns[0].src == st.name:
            raise LavaMappingError(f"node {st.name!r}: not a plain chain layer (fed by "
                                   f"{[c.src for c in conns]}), FloatLayer cannot express it")
        for what, v in (("du", st.du), ("dv", st.dv), ("v_threshold", st.vth)):
            if np.ptp(v) != 0:
                raise LavaMappingError(f"node {st.name!r}: per-neuron {what} differs across the "
                                       "layer; FloatLayer holds one value")
        drive = sum(st.drive.values(), np.zeros(st.n))
        if st.du[0] != 1 and np.any(drive != 0):
            raise LavaMappingError(f"node {st.name!r}: a bias into a synaptic current (du < 1) is "
                                   "not a FloatLayer bias")
        bias = st.bias_mant if st.depth == 0 else st.leak  # bias_mant = leak (+ early drive) at 0
        layers.append(FloatLayer(name=st.name, weight=conns[0].weight.toarray(), bias=bias + drive,
                                 du=float(st.du[0]), dv=float(st.dv[0]), threshold=float(st.vth[0])))
        prev = st.name
    return layers


# ------------------------------------------------------------------------------------------------
# Lava (loaded, started and stopped by stft_neuro.sim.lava_runtime)


def lava_available() -> bool:
    """Whether Lava imports (:func:`stft_neuro.sim.lava_runtime.lava_available`)."""
    return lava_runtime.lava_available()


@dataclass
class LavaFloatRunner:
    """Run a :class:`LavaPlan` on Lava ``floating_pt``, one network per batch (see module doc).

    ``run(x)`` with ``x`` ``(B, T, *in_shape)`` returns ``{output: (B, T, *shape)}`` aligned to input
    time (``record=True``: every stage's spikes, keyed by node name). ``timing``: the last run's
    :class:`~stft_neuro.sim.lava_runtime.LavaTiming` (``steps`` counts Lava steps, input steps
    plus the ``max_depth`` zero steps). The runtime is started and stopped by
    :class:`~stft_neuro.sim.lava_runtime.LavaRuntime` (drained on success and ordinary errors,
    terminated after Ctrl-C / SIGTERM or a failed process model; nothing left behind)."""

    plan: LavaPlan
    timing: lava_runtime.LavaTiming = field(default_factory=lava_runtime.LavaTiming)

    def run(self, x: np.ndarray, record: bool = False) -> dict[str, np.ndarray]:
        try:
            lv = lava_runtime.load()
        except lava_runtime.LavaUnavailableError as exc:
            raise LavaMappingError(f"the lava backend: {exc}") from None
        plan = self.plan
        for st in plan.stages:
            if st.readout:
                raise LavaMappingError(
                    f"node {st.name!r} ({st.kind}) cannot run on Lava floating_pt: Lava's float LIF "
                    "sends spikes only; an LI/CubaLI readout runs in fixed point (--fixed-point)")
        x = np.asarray(x, dtype=np.float64)
        B, T = int(x.shape[0]), int(x.shape[1])
        n_in = int(np.prod(plan.in_shape))
        xs = x.reshape(B, T, n_in)
        S = T + plan.max_depth
        self.timing = timing = lava_runtime.LavaTiming()
        t0 = time.perf_counter()
        names = [s.name for s in plan.stages]
        watch = names if record else sorted(set(plan.outputs.values()), key=names.index)

        inj = lv.Injector(shape=(B * n_in,))
        lifs = {}
        for st in plan.stages:
            lifs[st.name] = lv.VecLIF(shape=(B * st.n,), du=np.tile(st.du, B),
                                      dv=np.tile(st.dv, B), vth=np.tile(st.vth, B),
                                      bias_mant=np.tile(st.bias_mant, B), name=st.name,
                                      v_reset=None if st.v_reset is None else np.tile(st.v_reset, B))
        for c in plan.connections:
            w = sp.block_diag([c.weight] * B, format="csr")
            from_input = c.src == plan.input
            conn = lv.Sparse(weights=w, num_message_bits=24 if from_input else 0)
            (inj.out_port if from_input else lifs[c.src].s_out).connect(conn.s_in)
            conn.a_out.connect(lifs[c.dst].a_in)
        biased = [st for st in plan.stages if st.needs_injector]
        offsets = np.cumsum([0] + [st.n for st in biased])
        injectors = [inj]
        if biased:
            bias_inj = lv.Injector(shape=(int(offsets[-1]),))
            for st, off in zip(biased, offsets):
                sel = sp.csr_matrix((np.ones(st.n), (np.arange(st.n), off + np.arange(st.n))),
                                    shape=(st.n, int(offsets[-1])))
                conn = lv.Sparse(weights=sp.vstack([sel] * B, format="csr"), num_message_bits=24)
                bias_inj.out_port.connect(conn.s_in)
                conn.a_out.connect(lifs[st.name].a_in)
            injectors.append(bias_inj)
        exts = [lv.Extractor(shape=(B * plan.stage(n).n,)) for n in watch]
        for n, e in zip(watch, exts):
            lifs[n].s_out.connect(e.in_port)
        cfg = lv.Loihi2SimCfg(select_tag="floating_pt", exception_proc_model_map={
            lv.Injector: lv.PyLoihiInjectorModel, lv.Extractor: lv.PyLoihiExtractorModel,
            lv.VecLIF: lv.PyVecLifModelFloat})
        raw = {n: np.zeros((S, B * plan.stage(n).n), dtype=np.float32) for n in watch}
        zeros = np.zeros(B * n_in)
        with lava_runtime.LavaRuntime(lifs[names[0]], cfg, injectors, exts, timing=timing) as rt:
            rt.run_steps(S)
            t1 = time.perf_counter()
            timing.build_s = t1 - t0  # processes, compile, start (the runtime's own figure + Python)
            for s in range(S):
                inputs = [xs[:, s].reshape(-1) if s < T else zeros]
                if biased:
                    inputs.append(self._bias_step(biased, s))
                for n, out in zip(watch, rt.step(inputs)):
                    raw[n][s] = out
            timing.steps_s += time.perf_counter() - t1
            timing.steps += S
            timing.sample_steps += B * T
        result = {}
        for n in watch:
            st = plan.stage(n)
            result[n] = raw[n][st.depth:st.depth + T].reshape(T, B, *st.shape).swapaxes(0, 1)
        if record:
            return result
        return {o: result[s] for o, s in plan.outputs.items()}

    @staticmethod
    def _bias_step(biased: list[NeuronStage], s: int) -> np.ndarray:
        """What the bias injector sends at Lava step ``s`` (it arrives at ``s + 1``, the stage's
        reference step ``s + 1 - depth``)."""
        return np.concatenate([st.injected(s + 1 - st.depth) for st in biased])
