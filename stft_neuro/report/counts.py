"""Counts of what actually ran: spikes, synaptic events, neuron updates and host <-> chip messages.

Two sources, one result type (:class:`RunCounts`):

- :func:`count_plan_run`: records of a deployment plan's run (``simulate``'s ``records.npz``, any
  backend: reference simulator, Lava, torch deploy mode). Per layer ``l`` of the plan
  (``Dense_l -> LIF_l``) and step ``t``.
- :func:`count_graph_run`: a NIR graph run by the torch simulator (``run-nir --report``), per NIR
  node (weight nodes: Affine, Linear, Conv1d, Conv2d; neuron nodes: LIF, CubaLIF, IF, LI, CubaLI, I).

Definitions (every count is an integer, summed over the samples; :class:`RunCounts` divides by the
number of samples where a per-sample figure is asked for):

- **spikes[t]**: spikes a neuron layer emitted at step ``t``.
- **synaptic events[t]** of a weight layer: every nonzero presynaptic value sent at step ``t``
  times its fan-out of *nonzero* weights, ``sum_i [x_i[t] != 0] * #{j : W_ji != 0}``. Binary spikes
  and graded payloads count alike (a graded first-layer payload is one event per nonzero weight).
  For a plan, ``W`` is the Lava-effective weight (what the chip holds,
  ``weights.lava_effective_weights``) and the events of ``Dense_l`` are booked at the step the
  presynaptic values were *sent*; Lava delivers them one step later (``DENSE_DELAY_STEPS``). A
  convolution's fan-out is counted by applying it with binarised weights to the binarised input
  (bias dropped), which is exactly the sum above for its unrolled matrix. ``acs[t]``/``macs[t]``
  split the events by whether the sample's input at that step lies in {-1, 0, 1} (an accumulate)
  or not (a multiply-accumulate): NeuroBench's classification, made per sample and step.
- **dense ops[t]**: every weight used once per sample and step (``n_in * n_out`` for a dense
  layer; the same binarised application with all-ones weights and input for a convolution).
- **neuron updates**: every neuron is updated every step. An update is **active** when it changes
  the neuron's state and **inactive** otherwise. For Loihi's CUBA LIF the state is ``(u, v)``::

      u[t] = trunc(u[t-1] (4096 - du - 1) / 4096) + (a[t] << 6)
      v[t] = clip(trunc(v[t-1] (4096 - dv) / 4096) + u[t] + bias)  ->  spike, v[t] = 0 on spike

  so an update is active iff ``u[t] != u[t-1]`` or ``v[t] != v[t-1]`` (``v`` after reset; the state
  before step 0 is zero). A neuron at rest (``u = v = 0``, no input, no bias) is inactive; one that
  decays, integrates, or spikes and resets is active. For NIR neurons the state is ``v`` (and the
  synaptic current ``I`` of CubaLIF/CubaLI), compared the same way. The plan's ``u`` and ``v`` are
  not in the records: they are recomputed by replaying the recorded payloads and thetas through the
  bit-exact :class:`~stft_neuro.sim.reference.ReferenceSimulator`, and the replay must reproduce
  every recorded spike (otherwise :class:`ReportInputError`: the records are not of this plan).
- **NeuroBench membrane updates** (``nb_membrane_updates``): NeuroBench 2.3's ``MembraneUpdates``
  definition: all neurons at step 0, then the neurons whose stored post-reset membrane ``v``
  changed (``neurobench/metrics/workload/membrane_updates.py``).
- **host -> chip messages[t]**: nonzero payloads sent at step ``t`` (one graded message each; with
  the plan's payload dead zone ``k``, the host sent ``|q| <= k`` as 0, so they are not counted), and
  threshold messages: one per layer per sample per step when thresholds are dynamic (every value
  sent, zero or not; ``theta_nonzero`` counts the nonzero ones).
- **chip -> host spikes[t]**: the spikes the host reads: every layer's when thresholds are dynamic
  (the threshold cue reads each layer's own firing rate, ``model/host.py``), else the last layer's
  (TSF readout). For a NIR graph: the nonzero values arriving at its Output nodes.

**Early exit** (``simulate --early-exit``: the records' ``steps_run`` (N,), steps each sample ran):
only the steps a sample ran are counted. Its neuron updates (active and inactive), dense ops and
threshold messages stop at its exit; its spikes, payloads and thetas after the exit are zeros in the
records (checked: anything else is a :class:`ReportInputError`); the replay compares and counts
its state only over the steps it ran (the replay's later steps are not of this sample).

Host compute is counted separately by :func:`host_flops` (``torch.utils.flop_counter``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from stft_neuro.errors import UserError


class ReportInputError(UserError):
    """Records, plans or constants that cannot be reported on; the message names what is wrong."""


@dataclass
class LayerCounts:
    """Counts of one layer, summed over samples; arrays are ``(T,)`` int64 (one entry per step).

    A plan layer (``Dense -> LIF``) has both synapse and neuron counts; a NIR node has one kind.
    ``fan_in``/``synapses``/``weights``: inputs per neuron, nonzero weights, all weights.
    ``source``: the layer whose activity this layer's synapses receive (``"input"``: the host).
    ``dest_cores``: cores a spike of this layer is sent to (spike messages; 1 when unmapped)."""

    name: str
    kind: str
    neurons: int = 0
    spiking: bool = False
    spikes: np.ndarray | None = None
    active_updates: np.ndarray | None = None
    inactive_updates: np.ndarray | None = None
    nb_membrane_updates: int = 0
    synaptic_events: np.ndarray | None = None
    acs: np.ndarray | None = None
    macs: np.ndarray | None = None
    dense_ops: np.ndarray | None = None
    fan_in: int = 0
    synapses: int = 0
    weights: int = 0
    parameters: int = 0
    source: str | None = None
    graded_input: bool = False
    dest_cores: int = 1

    @property
    def has_neurons(self) -> bool:
        return self.neurons > 0

    @property
    def has_synapses(self) -> bool:
        return self.synaptic_events is not None


def _add(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None or b is None:
        return a if b is None else b
    return a + b


@dataclass
class RunCounts:
    """Everything counted in one run. ``layers`` keeps the network's order."""

    samples: int
    steps: int
    layers: dict[str, LayerCounts]
    payload_messages: np.ndarray          # (T,) nonzero host -> chip payloads
    theta_messages: np.ndarray            # (T,) threshold values sent (0 when static)
    theta_nonzero: np.ndarray             # (T,)
    chip_to_host_spikes: np.ndarray       # (T,)
    dynamic_threshold: bool = False
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def merge(self, other: "RunCounts") -> "RunCounts":
        """Counts of two disjoint sets of samples of the same network (chunked runs add up)."""
        if list(self.layers) != list(other.layers) or self.steps != other.steps:
            raise ReportInputError("cannot merge counts of different networks or step counts")
        layers = {}
        for name, a in self.layers.items():
            b = other.layers[name]
            merged = LayerCounts(**{**a.__dict__})
            for f in ("spikes", "active_updates", "inactive_updates", "synaptic_events", "acs",
                      "macs", "dense_ops"):
                setattr(merged, f, _add(getattr(a, f), getattr(b, f)))
            merged.nb_membrane_updates = a.nb_membrane_updates + b.nb_membrane_updates
            layers[name] = merged
        meta = dict(self.meta)
        if "sample_steps" in self.meta or "sample_steps" in other.meta:
            meta["sample_steps"] = (self.meta.get("sample_steps", self.samples * self.steps)
                                    + other.meta.get("sample_steps", other.samples * other.steps))
        return RunCounts(self.samples + other.samples, self.steps, layers,
                         self.payload_messages + other.payload_messages,
                         self.theta_messages + other.theta_messages,
                         self.theta_nonzero + other.theta_nonzero,
                         self.chip_to_host_spikes + other.chip_to_host_spikes,
                         self.dynamic_threshold, self.source, meta)

    def total(self, what: str) -> int:
        """Sum over layers and steps of one per-step count (``"spikes"``, ``"synaptic_events"``...)."""
        return int(sum(int(getattr(l, what).sum()) for l in self.layers.values()
                       if getattr(l, what) is not None))


# ------------------------------------------------------------------------------------------------
# plan records (simulate, reference, Lava)

def _binary_mask(x: np.ndarray) -> np.ndarray:
    """(N, T, n) -> (N, T) True where every value lies in {-1, 0, 1} (an accumulate input)."""
    return np.all((x == 0) | (x == 1) | (x == -1), axis=-1)


def _synapse_counts(act: np.ndarray, fanout: np.ndarray, n_out: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``act`` (N, T, n_in) presynaptic values, ``fanout`` (n_in,) nonzero weights per input.

    Returns ``(events, acs, macs, dense)`` per step, each (T,) int64."""
    nz = (act != 0)
    per = nz.astype(np.int64) @ fanout.astype(np.int64)           # (N, T) events per sample-step
    binary = _binary_mask(act)                                      # (N, T)
    acs = np.where(binary, per, 0).sum(0)
    macs = np.where(binary, 0, per).sum(0)
    dense = np.full(act.shape[1], act.shape[0] * act.shape[2] * n_out, dtype=np.int64)
    return per.sum(0), acs.astype(np.int64), macs.astype(np.int64), dense


def count_plan_run(plan: Any, spikes: Sequence[np.ndarray], payloads: np.ndarray,
                   theta: np.ndarray | None = None, *, chunk: int = 512,
                   dest_cores: Sequence[int] | None = None,
                   steps_run: np.ndarray | None = None) -> RunCounts:
    """Count a run of ``plan`` from its records.

    Args:
        plan: the :class:`~stft_neuro.hw_targets.loihi2.plan.DeploymentPlan` that ran.
        spikes: per layer ``(N, T, n_l)`` spikes (bool or 0/1) as recorded.
        payloads: ``(N, T, n_in)`` integer payloads the host sent.
        theta: ``(N, T, L)`` integer threshold offsets sent, or None (static thresholds).
        chunk: samples replayed at once (memory bound; counts do not depend on it).
        dest_cores: cores each layer's spikes are sent to (default: the next layer's cores in
            ``mapping.map_network``, 1 for the last layer, whose spikes go to the host).
        steps_run: ``(N,)`` steps each sample ran (early exit; 1..T), None: every sample ran T.

    Raises :class:`ReportInputError` when shapes disagree with the plan or the replay through the
    reference simulator does not reproduce the recorded spikes.
    """
    from stft_neuro.hw_targets.loihi2.weights import lava_effective_weights
    from stft_neuro.sim.reference import ReferenceSimulator

    L = plan.num_layers
    payloads = np.asarray(payloads)
    if payloads.ndim != 3 or payloads.shape[2] != plan.n_in:
        raise ReportInputError(f"payloads have shape {payloads.shape}; the plan takes (N, T, "
                               f"{plan.n_in})")
    N, T = payloads.shape[:2]
    if len(spikes) != L:
        raise ReportInputError(f"the records hold {len(spikes)} spike layers; the plan has {L}")
    for l, (s, n) in enumerate(zip(spikes, plan.sizes[1:])):
        if np.shape(s) != (N, T, n):
            raise ReportInputError(f"spikes of layer {l + 1} have shape {np.shape(s)}; the plan "
                                   f"and payloads need ({N}, {T}, {n})")
    if theta is not None and np.shape(theta) != (N, T, L):
        raise ReportInputError(f"theta has shape {np.shape(theta)}; expected ({N}, {T}, {L})")
    if steps_run is not None:
        steps_run = _check_steps_run(steps_run, spikes, payloads, theta, N, T)
    if dest_cores is None:
        from stft_neuro.hw_targets.loihi2.mapping import map_network
        per_layer: dict[str, int] = {}
        for a in map_network(plan.network).allocations:
            per_layer[a.layer] = per_layer.get(a.layer, 0) + 1
        names = [layer.name for layer in plan.network.layers]
        dest_cores = [per_layer.get(names[l + 1], 1) for l in range(L - 1)] + [1]
    sim = ReferenceSimulator(plan)
    weights = [lava_effective_weights(layer.weight) for layer in plan.network.layers]
    result: RunCounts | None = None
    for start in range(0, N, max(1, int(chunk))):
        stop = min(N, start + max(1, int(chunk)))
        part = _count_plan_chunk(plan, sim, weights, [np.asarray(s[start:stop]) for s in spikes],
                                 payloads[start:stop],
                                 None if theta is None else np.asarray(theta)[start:stop],
                                 start, dest_cores,
                                 None if steps_run is None else steps_run[start:stop])
        result = part if result is None else result.merge(part)
    assert result is not None or N == 0
    if result is None:  # no samples: zero counts of the right shape
        result = _count_plan_chunk(plan, sim, weights, [np.zeros((0, T, n), bool) for n in plan.sizes[1:]],
                                   np.zeros((0, T, plan.n_in), np.int64), None, 0, dest_cores)
    result.source = "plan"
    result.meta["payload_dead_zone"] = int(getattr(plan, "payload_dead_zone", 0))
    result.meta["sample_steps"] = int(N * T if steps_run is None else steps_run.sum())
    if steps_run is not None:
        result.meta["steps_run"] = steps_run
    return result


def _check_steps_run(steps_run, spikes, payloads, theta, N: int, T: int) -> np.ndarray:
    """``steps_run`` as int64 (N,) in 1..T, with the records zero after every sample's exit."""
    s = np.asarray(steps_run)
    if s.shape != (N,) or s.dtype.kind not in "iu":
        raise ReportInputError(f"steps_run has shape {s.shape} and dtype {s.dtype}; expected ({N},) integers")
    if N and (s.min() < 1 or s.max() > T):
        raise ReportInputError(f"steps_run must lie in 1..{T} (the steps each sample ran); got "
                               f"{int(s.min())}..{int(s.max())}")
    s = s.astype(np.int64)
    after = np.arange(T)[None, :] >= s[:, None]                                   # (N, T) not run
    for name, arr in [("payloads", payloads), *((f"spikes_{l + 1}", a) for l, a in enumerate(spikes)),
                      *([("theta", theta)] if theta is not None else [])]:
        bad = np.argwhere(np.any(np.asarray(arr)[after] != 0, axis=-1)) if after.any() else np.zeros((0, 1))
        if len(bad):
            i = np.argwhere(after)[int(bad[0][0])]
            raise ReportInputError(f"{name} is nonzero at sample {int(i[0])}, step {int(i[1])}, after the "
                                   f"{int(s[i[0]])} steps steps_run says the sample ran")
    return s


def _count_plan_chunk(plan, sim, weights, spikes, payloads, theta, offset, dest_cores,
                      steps_run=None) -> RunCounts:
    N, T = payloads.shape[:2]
    L = plan.num_layers
    # (N, T) steps each sample ran (early exit); the replay's other steps are not counted
    ran = (np.ones((N, T), bool) if steps_run is None
           else np.arange(T)[None, :] < np.asarray(steps_run)[:, None])
    ran_t = torch.from_numpy(ran)
    x = torch.from_numpy(payloads.astype(np.float32)).transpose(0, 1).contiguous()     # (T, N, n_in)
    th = None if theta is None else torch.from_numpy(theta.astype(np.float64)).transpose(0, 1)
    state = sim.reset(N)
    prev_u = [u.clone() for u in state.u]
    prev_v = [v.clone() for v in state.v]
    active = np.zeros((L, T), np.int64)
    nb_mem = np.zeros(L, np.int64)
    for t in range(T):
        out, state = sim.run(x[t:t + 1], None if th is None else th[t:t + 1].contiguous(), state)
        for l in range(L):
            got = out[l][0].numpy().astype(bool) & ran[:, t, None]                    # (N, n)
            want = spikes[l][:, t].astype(bool)
            if not np.array_equal(got, want):
                bad = np.argwhere(got != want)[0]
                raise ReportInputError(
                    f"the recorded spikes are not this plan's: replaying the recorded inputs "
                    f"through the reference simulator gives a different spike in layer "
                    f"{plan.network.layers[l].name} at sample {offset + int(bad[0])}, step {t}, "
                    f"neuron {int(bad[1])} (records from a different plan?)")
            u, v = state.u[l], state.v[l]
            live = ran_t[:, t, None].to(u.device)
            changed = ((u != prev_u[l]) | (v != prev_v[l])) & live
            active[l, t] = int(changed.sum())
            nb_mem[l] += int(live.sum()) * u.shape[1] if t == 0 else int(((v != prev_v[l]) & live).sum())
            prev_u[l], prev_v[l] = u.clone(), v.clone()
    layers: dict[str, LayerCounts] = {}
    src_name = "input"
    for l, layer in enumerate(plan.network.layers):
        w = weights[l]
        act = payloads if l == 0 else spikes[l - 1]
        fanout = (w != 0).sum(axis=0)                                                  # (n_in,)
        ev, acs, macs, dense = _synapse_counts(np.asarray(act, dtype=np.int64), fanout, w.shape[0])
        dense = ran.sum(0).astype(np.int64) * act.shape[2] * w.shape[0]         # the steps run only
        n = layer.n_out
        sp = spikes[l].astype(np.int64).sum(axis=(0, 2)) if N else np.zeros(T, np.int64)
        layers[layer.name] = LayerCounts(
            name=layer.name, kind="Dense+LIF", neurons=n, spiking=True, spikes=sp,
            active_updates=active[l], inactive_updates=ran.sum(0).astype(np.int64) * n - active[l],
            nb_membrane_updates=int(nb_mem[l]), synaptic_events=ev, acs=acs, macs=macs,
            dense_ops=dense, fan_in=int(w.shape[1]), synapses=int((w != 0).sum()),
            weights=int(w.size), parameters=int(w.size + n), source=src_name,
            graded_input=(l == 0), dest_cores=int(dest_cores[l]))
        src_name = layer.name
    dynamic = theta is not None
    read = list(range(L)) if dynamic else [L - 1]
    to_host = sum(spikes[l].astype(np.int64).sum(axis=(0, 2)) for l in read) if N else np.zeros(T, np.int64)
    return RunCounts(
        samples=N, steps=T, layers=layers,
        payload_messages=(payloads != 0).sum(axis=(0, 2)).astype(np.int64),
        theta_messages=(ran.sum(0).astype(np.int64) * L if dynamic else np.zeros(T, np.int64)),
        theta_nonzero=((theta != 0).sum(axis=(0, 2)).astype(np.int64) if dynamic
                       else np.zeros(T, np.int64)),
        chip_to_host_spikes=np.asarray(to_host, np.int64), dynamic_threshold=dynamic)


# ------------------------------------------------------------------------------------------------
# fixed-point graphs (deploy): populations and Dense projections (converters/nir_fixed.py)

def count_fixed_graph_run(graph: Any, payloads: np.ndarray, spikes: Mapping[str, np.ndarray],
                          activity: Mapping[str, Mapping[str, np.ndarray]],
                          dest_cores: Mapping[str, int], outputs: Sequence[str]) -> RunCounts:
    """Count a run of a :class:`~stft_neuro.hw_targets.loihi2.network.FixedPointGraph`, per graph
    layer (its populations pooled), with the definitions above.

    Args:
        graph: the fixed-point graph that ran.
        payloads: ``(S, B, n_in)`` integer payloads sent at each Lava step (extra zero steps
            included).
        spikes: per layer ``(S, B, n)`` spikes of the run (``nir_fixed.run_reference`` or Lava).
        activity: per layer ``{"active": (S,), "v_changed": (S,)}`` from ``run_reference``'s
            ``activity`` (u or v changed; v changed), summed over the batch.
        dest_cores: per layer, the cores its spikes are sent to (1 for a layer read by the host).
        outputs: the layers the host reads (chip -> host spikes).

    A layer's synaptic events are those of every Dense into its populations: from the host's
    payloads, from spikes (its own one step earlier for a recurrent Dense) and from the constant
    bias sources (1 while switched on, ``nir_fixed.bias_signal``), each booked at the step sent.

    A readout layer (populations with ``readout``: NIR LI/CubaLI) has neuron updates but no
    spikes (``spikes`` holds its v there); what it sends the host is its v, one message per neuron
    per step (counted in ``chip_to_host_spikes``, graded).
    """
    from stft_neuro.converters.nir_fixed import bias_signal
    from stft_neuro.hw_targets.loihi2.network import GRAPH_INPUT

    x = np.asarray(payloads)
    S, B = int(x.shape[0]), int(x.shape[1])
    bias = bias_signal(graph, S)
    pop_layer = {p.name: p.layer for p in graph.populations}

    def sent(src: str) -> np.ndarray:  # (B, S, n_src) what the source sends
        if src == GRAPH_INPUT:
            return x.transpose(1, 0, 2)
        if src.startswith("bias:"):
            j = graph.bias_inputs.index(src)
            return np.broadcast_to(bias[None, :, j:j + 1], (B, S, 1))
        p = graph.population(src)
        return np.asarray(spikes[p.layer])[:, :, p.index].transpose(1, 0, 2)

    layers: dict[str, LayerCounts] = {}
    for name, n in graph.layers:
        pops = {p.name for p in graph.of_layer(name)}
        ev = acs = macs = dense = np.zeros(S, np.int64)
        fan_in = syn = nw = 0
        srcs, graded = [], False
        for pr in graph.projections:
            if pr.dst not in pops:
                continue
            w = np.asarray(pr.weight)
            e, a, m, d = _synapse_counts(np.asarray(sent(pr.src), np.int64), (w != 0).sum(0), w.shape[0])
            ev, acs, macs, dense = ev + e, acs + a, macs + m, dense + d
            syn += int((w != 0).sum())
            nw += int(w.size)
            graded |= pr.src == GRAPH_INPUT
            src = "input" if pr.src == GRAPH_INPUT else pop_layer.get(pr.src, pr.src)
            if src not in srcs:
                srcs.append(src)
                fan_in += graph.source_size(pr.src) if not pr.src.startswith("bias:") else 1
        readout = any(p.readout for p in graph.of_layer(name))
        active = np.asarray(activity[name]["active"], np.int64)
        nb = B * n + int(np.asarray(activity[name]["v_changed"])[1:].sum()) if S else 0
        layers[name] = LayerCounts(
            name=name, kind="Dense+LI" if readout else "Dense+LIF", neurons=n, spiking=not readout,
            spikes=(np.zeros(S, np.int64) if readout
                    else np.asarray(spikes[name]).astype(np.int64).sum(axis=(1, 2))),
            active_updates=active, inactive_updates=B * n - active, nb_membrane_updates=nb,
            synaptic_events=ev, acs=acs, macs=macs, dense_ops=dense, fan_in=fan_in, synapses=syn,
            weights=nw, parameters=nw + n, source=",".join(srcs) or None, graded_input=graded,
            dest_cores=int(dest_cores.get(name, 1)))
    zeros = np.zeros(S, np.int64)
    def host_messages(o: str) -> np.ndarray:  # a readout sends v: every neuron, every step
        if any(p.readout for p in graph.of_layer(o)):
            return np.full(S, B * dict(graph.layers)[o], np.int64)
        return np.asarray(spikes[o]).astype(np.int64).sum(axis=(1, 2))

    to_host = sum((host_messages(o) for o in outputs), zeros)
    return RunCounts(samples=B, steps=S, layers=layers,
                     payload_messages=(x != 0).sum(axis=(1, 2)).astype(np.int64),
                     theta_messages=zeros, theta_nonzero=zeros, chip_to_host_spikes=to_host,
                     source="fixed-point graph")


# ------------------------------------------------------------------------------------------------
# NIR graphs (run-nir)

WEIGHT_KINDS = ("Affine", "Linear", "Conv1d", "Conv2d")
NEURON_KINDS = ("LIF", "CubaLIF", "IF", "LI", "CubaLI", "I")


def _binarised_apply(node: Any, x: torch.Tensor, all_ones: bool = False) -> torch.Tensor:
    """Apply a weight node with weights ``W != 0`` (or all ones) and no bias to ``x != 0`` (or
    all ones), in float64: per output, the number of nonzero (input, weight) pairs."""
    import torch.nn.functional as F
    p = node.params
    w = torch.as_tensor(np.asarray(p["weight"]) != 0 if not all_ones
                        else np.ones_like(np.asarray(p["weight"])), dtype=torch.float64)
    xb = torch.ones_like(x, dtype=torch.float64) if all_ones else (x != 0).to(torch.float64)
    if node.kind in ("Affine", "Linear"):
        return xb @ w.T
    conv = F.conv1d if node.kind == "Conv1d" else F.conv2d
    return conv(xb, w, None, p["stride"], p["padding"], p["dilation"], p["groups"])


def count_graph_run(graph: Any, dt: float, x: np.ndarray | torch.Tensor) -> tuple[RunCounts, dict[str, np.ndarray]]:
    """Run ``graph`` on the torch simulator step by step and count every node.

    ``x``: ``(B, T, *in_shape)``. Returns the counts and every node's output
    ``{name: (B, T, *shape)}`` (the same as ``TorchSimulator.run(x, record=True)``).

    Layers are the weight nodes (Affine, Linear, Conv1d, Conv2d) and neuron nodes (LIF, CubaLIF,
    IF, LI, CubaLI, I), keyed by NIR node name, in the graph's order. A weight node's input at step
    ``t`` is the sum of its incoming edges (a recurrent edge carries step ``t - 1``), as simulated.
    """
    from stft_neuro.converters.nir_torch import TorchSimulator

    x = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    B, T = int(x.shape[0]), int(x.shape[1])
    sim = TorchSimulator(graph, dt)
    state = sim.reset(B)
    names = [n for n in graph.order if graph.nodes[n].kind in WEIGHT_KINDS + NEURON_KINDS]
    zeros = lambda: np.zeros(T, np.int64)  # noqa: E731
    acc: dict[str, dict[str, np.ndarray]] = {n: {k: zeros() for k in (
        "spikes", "active", "events", "acs", "macs", "dense")} for n in names}
    nb_mem = {n: 0 for n in names}
    prev_state = {n: {k: v.clone() for k, v in state[n].items()} for n in names
                  if graph.nodes[n].kind in NEURON_KINDS}
    prev_out: dict[str, torch.Tensor] = {}
    outs: list[dict[str, torch.Tensor]] = []
    to_host = zeros()
    with torch.no_grad():
        for t in range(T):
            out, state = sim.step(x[:, t], state, record=True)
            for n in names:
                node = graph.nodes[n]
                if node.kind in WEIGHT_KINDS:
                    parts = [(prev_out.get(s) if rec else out[s]) for s, rec in graph.incoming[n]]
                    parts = [p if p is not None else torch.zeros((B,) + graph.nodes[s].out_shape,
                                                                 dtype=sim.dtype)
                             for p, (s, _) in zip(parts, graph.incoming[n])]
                    xin = parts[0]
                    for p in parts[1:]:
                        xin = xin + p
                    per = _binarised_apply(node, xin).reshape(B, -1).sum(1)          # (B,)
                    flat = xin.reshape(B, -1)
                    binary = ((flat == 0) | (flat == 1) | (flat == -1)).all(1)
                    acc[n]["events"][t] = int(per.sum())
                    acc[n]["acs"][t] = int(per[binary].sum())
                    acc[n]["macs"][t] = int(per[~binary].sum())
                    acc[n]["dense"][t] = int(_binarised_apply(node, xin, all_ones=True).sum())
                else:
                    if node.spiking:
                        acc[n]["spikes"][t] = int((out[n] != 0).sum())
                    cur = state[n]
                    changed = torch.zeros(cur["v"].shape, dtype=torch.bool)
                    for k, v in cur.items():
                        changed |= v != prev_state[n][k]
                    acc[n]["active"][t] = int(changed.sum())
                    nb_mem[n] += cur["v"].numel() if t == 0 else int((cur["v"] != prev_state[n]["v"]).sum())
                    prev_state[n] = {k: v.clone() for k, v in cur.items()}
            for o in graph.outputs:
                to_host[t] += int((out[o] != 0).sum())
            prev_out = {s: out[s] for s, _ in graph.recurrent}
            outs.append({k: v.clone() for k, v in out.items()})
    layers: dict[str, LayerCounts] = {}
    for n in names:
        node = graph.nodes[n]
        srcs = [s for s, _ in graph.incoming[n]]
        src = "input" if srcs and graph.nodes[srcs[0]].kind == "Input" else (srcs[0] if srcs else None)
        if node.kind in WEIGHT_KINDS:
            w = np.asarray(node.params["weight"])
            nparams = int(w.size + (np.asarray(node.params["bias"]).size if "bias" in node.params else 0))
            layers[n] = LayerCounts(
                name=n, kind=node.kind, synaptic_events=acc[n]["events"], acs=acc[n]["acs"],
                macs=acc[n]["macs"], dense_ops=acc[n]["dense"],
                fan_in=int(np.prod(node.in_shape)), synapses=int((w != 0).sum()), weights=int(w.size),
                parameters=nparams, source=src,
                graded_input=bool(acc[n]["macs"].sum() > 0))
        else:
            size = node.size
            layers[n] = LayerCounts(
                name=n, kind=node.kind, neurons=size, spiking=node.spiking, spikes=acc[n]["spikes"],
                active_updates=acc[n]["active"], inactive_updates=B * size - acc[n]["active"],
                nb_membrane_updates=nb_mem[n], source=src)
    xin = x.reshape(B, T, -1)
    counts = RunCounts(samples=B, steps=T, layers=layers,
                       payload_messages=(xin != 0).sum(dim=(0, 2)).numpy().astype(np.int64),
                       theta_messages=zeros(), theta_nonzero=zeros(), chip_to_host_spikes=to_host,
                       source="nir")
    record = {k: torch.stack([o[k] for o in outs], 1).numpy() for k in (outs[0] if outs else {})}
    return counts, record


# ------------------------------------------------------------------------------------------------
# host compute

HOST_COMPONENTS = ("encoder", "threshold_cue", "readout", "transformer", "fusion", "projection")


@dataclass(frozen=True)
class HostCompute:
    """Per-sample host compute of one component.

    ``flops``: counted by ``torch.utils.flop_counter.FlopCounterMode`` on the real modules (it counts
    matrix products, convolutions and attention: 2 FLOPs per multiply-accumulate; elementwise work
    such as LayerNorm, GELU, softmax, sigmoid, entropy is not counted). ``macs = flops / 2``.
    ``estimate_macs``: an analytical estimate from the layer shapes, for comparison (an estimate)."""

    flops: int
    estimate_macs: int
    note: str = ""

    @property
    def macs(self) -> int:
        return self.flops // 2


def _counted(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as mode:
        fn()
    return int(mode.get_total_flops())


def host_flops(model: Any, seconds: int, lengths: int | None = None) -> dict[str, HostCompute]:
    """Host compute per sample of a real :class:`~stft_neuro.model.stft.STFT`, by component.

    Runs each host component of ``model`` once on one zero sample of ``seconds`` per-second
    features (``lengths`` valid, default all) under ``FlopCounterMode``:

    - ``encoder``: ``SpikingBranch.encode`` (LayerNorm, binning, GLP, the encoder Linear);
    - ``threshold_cue``: the host's side of the closed loop (``stft_neuro.closed_loop``:
      ``initial_cue`` + ``threshold_cue`` for the remaining T-1 steps), driven by a replay of
      silent spikes (elementwise only: 0 counted FLOPs; its estimate counts the elementwise
      operations);
    - ``readout``: TSF (or the mean) over the last layer's spikes, and with ``spiking.saliency``
      the saliency scores and the pooling of the binned features;
    - ``transformer``: ``LatentSemanticTransformer``;
    - ``fusion``: the Tucker (or concat) fusion, its output norm and the skip Linear;
    - ``projection``: the joint projection into the class-embedding space. (The class embeddings
      are computed once per class set, and the audio/visual projections and the reconstruction
      only serve training losses: not counted.)

    The values do not depend on the weights, only on the shapes. (Run with autograd enabled:
    ``FlopCounterMode``'s module tracker fails under ``no_grad``; nothing is backpropagated.)
    """
    from stft_neuro.model.host import valid_mask

    model = model.eval()
    S = int(seconds)
    n = torch.tensor([int(lengths or S)])
    a = torch.zeros(1, S, model.audio_dim)
    v = torch.zeros(1, S, model.visual_dim)
    mask = valid_mask(n, S)
    out: dict[str, HostCompute] = {}
    r = model.transformer(a, v, mask)
    out["transformer"] = HostCompute(_counted(lambda: model.transformer(a, v, mask)), 0,
                                     "attention and linear layers")
    br = model.spiking
    if br is not None:
        T, D, n_in = br.cfg.num_steps, model.audio_dim + model.visual_dim, br.cfg.input_dim
        hidden = br.cfg.hidden
        out["encoder"] = HostCompute(_counted(lambda: br.encode(a, v, n)), T * S * D + T * D * n_in,
                                     "estimate: binning T*S*D + encoder T*D*n_in")
        if br.cfg.dynamic_threshold:
            from stft_neuro.closed_loop import Replay, closed_loop
            silent = Replay([torch.zeros(T, 1, h) for h in hidden])  # no spikes; float units

            def cue() -> None:  # the host's side of the one closed loop: T thresholds
                closed_loop(br, silent, torch.zeros(T, 1, n_in), torch.zeros(1))
            # estimate (elementwise ops per step): mean over each layer, entropy (~6 per layer),
            # softplus x2, two products and a sum per layer
            out["threshold_cue"] = HostCompute(_counted(cue), T * (sum(hidden) + 12 * len(hidden)),
                                               "elementwise only: no matrix products to count")
        else:
            out["threshold_cue"] = HostCompute(0, 0, "static thresholds: no cue")
        last = torch.zeros(T, 1, hidden[-1])
        estimate, what = T * hidden[-1] * (2 if br.cfg.tsf else 1), "estimate: TSF score T*n_L + weighted sum T*n_L"
        if br.saliency is not None:  # spiking.saliency: a score per bin and head, the weighted sum
            K, H = br.saliency.bins, br.saliency.heads
            estimate += K * hidden[-1] * H + K * D
            what += " + saliency K*n_L*H + pooling K*D"
        binned = br.binned_features(a, v, n) if br.saliency is not None else None
        out["readout"] = HostCompute(_counted(lambda: br.readout(last))
                                     + (_counted(lambda: br.saliency(last, binned)) if binned is not None else 0),
                                     estimate, what)
        s = torch.zeros(1, br.out_dim)
    else:
        s = r.new_zeros(1, 0)
    pooled = torch.zeros(1, model.audio_dim + model.visual_dim)
    # the readout is STFT.joint_from (fusion, its norm, the skip paths, the projection); the
    # projection's share is counted on its own and the rest is the fusion's. An active ridge
    # readout (fusion.readout = ridge) is the projection: [h, p] (width + D) -> 300.
    proj_in, proj_out = ((model.ridge.mu.shape[0], model.ridge.weight.shape[1]) if model.ridge_active
                         else (model.joint.in_features, model.joint.out_features))
    projection = (_counted(lambda: model.ridge(torch.zeros(1, proj_in))) if model.ridge_active
                  else _counted(lambda: model.joint(torch.zeros(1, proj_in))))
    out["fusion"] = HostCompute(_counted(lambda: model.joint_from(r, s, pooled)) - projection, 0,
                                "Tucker/concat fusion + skip Linears")
    out["projection"] = HostCompute(projection, int(proj_in * proj_out), "estimate: (width [+ D]) * E")
    return {k: out[k] for k in HOST_COMPONENTS if k in out}


def spikes_from_mapping(records: Mapping[str, np.ndarray], num_layers: int) -> list[np.ndarray]:
    """``spikes_1``..``spikes_L`` of a ``records.npz`` as a list (missing ones: ReportInputError)."""
    missing = [f"spikes_{l}" for l in range(1, num_layers + 1) if f"spikes_{l}" not in records]
    if missing:
        raise ReportInputError(f"records lack {', '.join(missing)} (the plan has {num_layers} layers)")
    return [np.asarray(records[f"spikes_{l}"]) for l in range(1, num_layers + 1)]
