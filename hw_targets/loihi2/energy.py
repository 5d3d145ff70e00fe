"""The chip's energy per sample as a differentiable torch estimate, for energy-aware training.

This is an **estimate** (counts x published per-operation energies; nothing is measured), with the
same per-operation model, constants and count definitions as the report
(``stft_neuro/report/energy.py`` prices what ``stft_neuro/report/counts.py`` counts from a run's
records). The constants live here, once; the report reads them from this module.

Per-operation constants (pJ), Loihi (Davies et al., "Loihi: a neuromorphic manycore processor
with on-chip learning", IEEE Micro 38(1):82-99, 2018, Table 2, 0.75 V). **No per-operation energy
table is published for Loihi 2**; Loihi's is the closest published model:

====================================  =======  ==================================================
``loihi_synop_pj``                    23.6     per synaptic spike operation
``loihi_neuron_update_active_pj``     81.0     per active neuron update
``loihi_neuron_update_inactive_pj``   52.0     per inactive neuron update
``loihi_spike_within_tile_pj``        1.7      per within-tile spike
``loihi_hop_ew_pj`` / ``_ns_pj``      3.0/4.0  per east-west / north-south tile hop
``hops_ew_per_spike_message``         1        assumption (placement not modelled)
``hops_ns_per_spike_message``         0        assumption (placement not modelled)
====================================  =======  ==================================================

Model, per sample (a batch's totals divided by its ``B`` samples)::

    E_chip = sum_l  synaptic_events_l     x loihi_synop_pj
                  + active_updates_l      x loihi_neuron_update_active_pj
                  + inactive_updates_l    x loihi_neuron_update_inactive_pj
                  + spikes_l x dest_cores_l x (within_tile + hops_ew x hop_ew + hops_ns x hop_ns)

- ``synaptic_events_l = sum_{t, b, i} [x_l[t, b, i] != 0] * #{j : W_l[j, i] != 0}``: every nonzero
  presynaptic value (a graded host payload for layer 0, a spike of layer ``l - 1`` otherwise) times
  its fan-out of nonzero (Lava-effective) weights, over all ``T`` steps sent.
- neuron updates: every neuron every step (``T * B * n_l``); *active* when it changed the neuron's
  state ``(u, v)``, *inactive* otherwise.
- spike messages: each spike of layer ``l`` is sent to every core of the next layer
  (``mapping.map_network``; the last layer's spikes go to the host: 1 message each).

Gradients. "Nonzero" is a step function; :func:`nonzero_surrogate` keeps its exact value forward
and back-propagates the derivative of ``tanh(|x| / width)`` (``width`` in the tensor's own units:
payload LSBs, weight LSBs), so the energy term pushes small payloads and small weights to zero.
Spikes are 0/1 and nonzero of a spike is the spike itself: the spikes' own surrogate gradients
flow. Neuron updates carry no gradient (active vs inactive is a property of the integer state;
with ``active_updates="replay"`` they are recounted exactly, without autograd).

Typical use (deploy mode / QAT: every value exact, so the estimate equals the report's count)::

    plan, report = model.spiking.deployment_plan()
    x, g = model.spiking.encode(audio, visual, lengths)
    rec = model.spiking.drive(x, g, model.spiking.chip)           # deploy mode
    payloads = plan.encode_input(x)                               # (T, B, n_in), STE to x
    w = chip_weights(plan, report, model.spiking.chip.weights)    # exact ints, STE to float weights
    e_uj = chip_energy_uj(payloads, rec.spikes, w, plan=plan, theta=rec.theta)
    # (the same: chip_energy_of_record(rec, payloads, w, plan=plan).total_uj)
    loss = task_loss + lam * torch.relu(e_uj - budget_uj)

Float training (no integer run): pass the float-mode spikes, ``payloads = plan.encode_input(x)``
of the current plan (its straight-through gradient reaches ``x``) or ``x / input_scale``, and the
float weights with ``weight_width`` in their units (e.g. the layer's weight LSB); the neuron
updates then come from the plan's replay of those payloads, or ``active_updates="all"`` (an upper
bound, no replay). The value is the deployed chip's energy only when the spikes are the integer
run's (deploy mode).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor

DAVIES = ("Davies et al., IEEE Micro 38(1):82-99, 2018, Table 2 (Loihi, 0.75 V); no per-operation "
          "table is published for Loihi 2")
PLACEMENT = "assumption: placement not modelled"

#: The chip's per-operation constants: name -> (value, unit, source). The report's energy model
#: (``stft_neuro.report.energy.CONSTANTS``) is built from this table.
CHIP_CONSTANTS: dict[str, tuple[float, str, str]] = {
    "loihi_synop_pj": (23.6, "pJ per synaptic spike op", DAVIES),
    "loihi_neuron_update_active_pj": (81.0, "pJ per active neuron update", DAVIES),
    "loihi_neuron_update_inactive_pj": (52.0, "pJ per inactive neuron update", DAVIES),
    "loihi_spike_within_tile_pj": (1.7, "pJ per within-tile spike", DAVIES),
    "loihi_hop_ew_pj": (3.0, "pJ per east-west tile hop", DAVIES),
    "loihi_hop_ns_pj": (4.0, "pJ per north-south tile hop", DAVIES),
    "hops_ew_per_spike_message": (1.0, "east-west hops per spike message", PLACEMENT),
    "hops_ns_per_spike_message": (0.0, "north-south hops per spike message", PLACEMENT),
}

PJ_PER_UJ = 1e6


class _Nonzero(torch.autograd.Function):
    """``[x != 0]`` forward; ``d tanh(|x| / width) / dx`` backward."""

    @staticmethod
    def forward(ctx, x: Tensor, width: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.width = width
        return (x != 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        w = ctx.width
        th = torch.tanh(x.abs() / w)
        return grad * torch.sign(x) * (1.0 - th * th) / w, None


def nonzero_surrogate(x: Tensor, width: float = 1.0) -> Tensor:
    """``[x != 0]`` (exact, in ``x``'s float dtype) with the gradient of ``tanh(|x| / width)``.

    A tensor without gradient (or an integer tensor) gives the exact indicator as float64."""
    if not x.is_floating_point():
        return (x != 0).to(torch.float64)
    if not x.requires_grad:
        return (x != 0).to(x.dtype)
    return _Nonzero.apply(x, float(width))


def beyond_dead_zone(payloads: Tensor, k: int) -> Tensor:
    """Sent payloads (``|q| > k`` or 0) -> ``sign(q) (|q| - k)`` where nonzero: the same nonzeros,
    with the gradient of ``q`` (straight through); the distance to the dead zone's edge."""
    if not k or not payloads.is_floating_point():
        return payloads
    d = payloads.detach()
    return payloads - d.sign() * float(k)


@dataclass(frozen=True)
class ChipEnergy:
    """One batch's chip energy estimate. Tensors in float64.

    ``total_uj`` (scalar, with gradients): microjoules per sample. ``synaptic_uj``,
    ``neuron_updates_uj``, ``spike_messages_uj``: its parts (per sample). Per layer ``(L,)``, totals
    over the batch (exact integers): ``synaptic_events``, ``active_updates``,
    ``inactive_updates``, ``spikes``; ``dest_cores`` per layer; ``samples`` = B; ``estimate`` True."""

    total_uj: Tensor
    synaptic_uj: Tensor
    neuron_updates_uj: Tensor
    spike_messages_uj: Tensor
    synaptic_events: Tensor
    active_updates: Tensor
    inactive_updates: Tensor
    spikes: Tensor
    dest_cores: tuple[int, ...]
    samples: int
    estimate: bool = True

    def as_dict(self) -> dict[str, object]:
        """Plain numbers (no tensors), e.g. for logging."""
        f = lambda t: [float(v) for v in t.detach().reshape(-1)]  # noqa: E731
        return {"estimate": True, "unit": "uJ per sample", "total_uj": float(self.total_uj.detach()),
                "synaptic_uj": float(self.synaptic_uj.detach()),
                "neuron_updates_uj": float(self.neuron_updates_uj.detach()),
                "spike_messages_uj": float(self.spike_messages_uj.detach()),
                "synaptic_events": f(self.synaptic_events), "active_updates": f(self.active_updates),
                "inactive_updates": f(self.inactive_updates), "spikes": f(self.spikes),
                "dest_cores": list(self.dest_cores), "samples": self.samples}


def dest_cores_of(plan_or_sizes) -> tuple[int, ...]:
    """Cores each layer's spikes are sent to: the next layer's cores in ``mapping.map_network``
    (as the report counts them), 1 for the last layer (its spikes go to the host).

    ``plan_or_sizes``: a ``DeploymentPlan``, a ``FixedPointNetwork`` or the sizes
    ``(n_in, n_1, ..., n_L)`` (the core count of a layer depends only on its shape)."""
    from stft_neuro.hw_targets.loihi2.mapping import cores_for_layer
    from stft_neuro.hw_targets.loihi2.resources import LOIHI2

    sizes = getattr(plan_or_sizes, "sizes", plan_or_sizes)
    sizes = tuple(int(n) for n in sizes)
    cores = [cores_for_layer(a, b, LOIHI2.core) for a, b in zip(sizes[:-1], sizes[1:])]
    return tuple(cores[1:]) + (1,)


def chip_weights(plan, report, float_weights: Sequence[Tensor]) -> list[Tensor]:
    """The chip's weights as the estimator takes them: the plan's Lava-effective integers forward,
    gradients straight through to ``float_weights`` (``quantize.qat_layers``; ``report`` is the
    :class:`~stft_neuro.hw_targets.loihi2.quantize.QuantizationReport` of ``plan``)."""
    from stft_neuro.hw_targets.loihi2.quantize import qat_layers

    biases = [w.new_zeros(w.shape[0]) for w in float_weights]
    return [lay.weight for lay in qat_layers(plan, report, list(float_weights), biases)]


@torch.no_grad()
def replay_active_updates(plan, payloads: Tensor, theta: Tensor | None) -> Tensor:
    """Active neuron updates per layer ``(L,)`` (float64, totals over the batch) of ``plan`` run on
    ``payloads`` ``(T, B, n_in)`` and ``theta`` ``(T, B, L)`` or None, by the fixed-point arithmetic
    (``arithmetic.chip_step``): an update is active when it changed ``u`` or ``v`` (``v`` after
    reset; the state before step 0 is zero)."""
    from stft_neuro.hw_targets.loihi2 import arithmetic as A

    layers = A.network_arith(plan.network, device=payloads.device)
    x = payloads.detach().to(torch.float64)
    th = None if theta is None else theta.detach().to(torch.float64)
    state = A.zero_state(layers, x.shape[1], dtype=torch.float64, device=x.device)
    active = torch.zeros(len(layers), dtype=torch.float64, device=x.device)
    for t in range(x.shape[0]):
        _, new = A.chip_step(x[t], None if th is None else th[t], state, layers)
        for l in range(len(layers)):
            changed = (new.u[l] != state.u[l]) | (new.v[l] != state.v[l])
            active[l] += changed.sum()
        state = new
    return active


def chip_energy(payloads: Tensor, spikes: Sequence[Tensor], weights: Sequence[Tensor], *,
                plan=None, theta: Tensor | None = None,
                active_updates: Tensor | str | None = None,
                dest_cores: Sequence[int] | None = None,
                constants: Mapping[str, float] | None = None,
                payload_width: float = 4.0, weight_width: float = 1.0,
                payload_dead_zone: int = 0) -> ChipEnergy:
    """The chip's energy per sample (an estimate; module doc), differentiable.

    Args:
        payloads: ``(T, B, n_in)`` what the host sends each step, in payload LSBs (integer values;
            ``plan.encode_input(currents)``, whose gradient reaches the currents). Zeros are not
            sent and cost nothing.
        spikes: per layer ``(T, B, n_l)`` spikes, 0/1 (with their surrogate gradients).
        weights: per layer ``(n_l, n_{l-1})`` the weights the chip holds (integer values; a weight
            is a synapse when nonzero): :func:`chip_weights` in training, or the plan's
            Lava-effective weights. Float weights may be passed for a float-mode estimate; then
            "nonzero" is ``w != 0`` of those floats.
        plan: the ``DeploymentPlan`` that ran (for the neuron-update replay and the core mapping).
        theta: ``(T, B, L)`` threshold offsets sent (mantissa units) or None; for the replay.
        active_updates: ``(L,)`` active-update totals over the batch (e.g. counted from the states
            of the run), or ``"replay"`` (recount exactly through the plan's fixed-point
            arithmetic; needs ``plan``; the default when a plan is given), or ``"all"`` (every update
            counted active: an upper bound, the default without a plan).
        dest_cores: cores each layer's spikes go to (default :func:`dest_cores_of`).
        constants: pJ overrides by the keys of :data:`CHIP_CONSTANTS`.
        payload_width, weight_width: surrogate widths of "nonzero" (payload LSBs, weight LSBs).
        payload_dead_zone: the plan's dead zone ``k`` (payloads ``|q| <= k`` were sent as 0): the
            count is the same, but a sent payload's surrogate measures its distance to the zone's
            edge, ``|q| - k``, so that the gradient reaches the payloads just outside it (with the
            distance to 0 a payload beyond ``k`` is ``k / payload_width`` surrogate widths away and
            gets no gradient: QAT at ``k = 112`` then raised its payloads, unchecked, from 228 to
            2,269 per sample while its spikes fell to zero).

    Returns :class:`ChipEnergy`; ``.total_uj`` is microjoules per sample (scalar, float64).
    """
    c = {k: v[0] for k, v in CHIP_CONSTANTS.items()}
    if constants:
        unknown = sorted(set(constants) - set(c))
        if unknown:
            raise ValueError(f"chip_energy: unknown constant(s) {', '.join(unknown)}")
        c.update({k: float(v) for k, v in constants.items()})
    L = len(weights)
    if len(spikes) != L:
        raise ValueError(f"chip_energy: {len(spikes)} spike layers for {L} weight layers")
    if payloads.dim() != 3:
        raise ValueError(f"chip_energy: payloads must be (T, B, n_in), got {tuple(payloads.shape)}")
    T, B = int(payloads.shape[0]), int(payloads.shape[1])
    sizes = (int(payloads.shape[2]), *(int(w.shape[0]) for w in weights))
    for l, (s, w) in enumerate(zip(spikes, weights)):
        if tuple(s.shape) != (T, B, sizes[l + 1]) or int(w.shape[1]) != sizes[l]:
            raise ValueError(f"chip_energy: layer {l}: spikes {tuple(s.shape)} / weights "
                             f"{tuple(w.shape)} do not fit payloads {tuple(payloads.shape)}")
    f64 = torch.float64
    dev = payloads.device
    events, spike_tot = [], []
    pre_nz = nonzero_surrogate(beyond_dead_zone(payloads, payload_dead_zone), payload_width).to(f64)
    for l in range(L):
        fan = nonzero_surrogate(weights[l], weight_width).to(f64).sum(0)        # (n_in,) fan-out
        events.append(pre_nz.sum((0, 1)) @ fan)                                   # sum_{t,b,i}
        s = spikes[l].to(f64)
        spike_tot.append(s.sum())
        pre_nz = s  # a spike is its own nonzero indicator
    events_t = torch.stack(events)
    spikes_t = torch.stack(spike_tot)
    updates = torch.tensor([T * B * n for n in sizes[1:]], dtype=f64, device=dev)
    if active_updates is None:
        active_updates = "replay" if plan is not None else "all"
    if isinstance(active_updates, str):
        if active_updates == "all":
            active = updates.clone()
        elif active_updates == "replay":
            if plan is None:
                raise ValueError("chip_energy: active_updates='replay' needs the plan")
            active = replay_active_updates(plan, payloads, theta).to(dev)
        else:
            raise ValueError(f"chip_energy: active_updates must be a tensor, 'replay' or 'all', "
                             f"got {active_updates!r}")
    else:
        active = torch.as_tensor(active_updates, dtype=f64, device=dev).detach().reshape(L)
    inactive = updates - active
    if dest_cores is None:
        dest_cores = dest_cores_of(plan if plan is not None else sizes)
    cores = torch.tensor([float(k) for k in dest_cores], dtype=f64, device=dev)
    per_msg = (c["loihi_spike_within_tile_pj"] + c["hops_ew_per_spike_message"] * c["loihi_hop_ew_pj"]
               + c["hops_ns_per_spike_message"] * c["loihi_hop_ns_pj"])
    n = float(max(1, B))
    syn = events_t.sum() * c["loihi_synop_pj"] / n / PJ_PER_UJ
    neu = ((active * c["loihi_neuron_update_active_pj"]).sum()
           + (inactive * c["loihi_neuron_update_inactive_pj"]).sum()) / n / PJ_PER_UJ
    msg = (spikes_t * cores).sum() * per_msg / n / PJ_PER_UJ
    return ChipEnergy(total_uj=syn + neu + msg, synaptic_uj=syn, neuron_updates_uj=neu,
                      spike_messages_uj=msg, synaptic_events=events_t.detach(),
                      active_updates=active.detach(), inactive_updates=inactive.detach(),
                      spikes=spikes_t.detach(), dest_cores=tuple(int(k) for k in dest_cores),
                      samples=B)


def chip_energy_uj(payloads: Tensor, spikes: Sequence[Tensor], weights: Sequence[Tensor],
                   **kwargs) -> Tensor:
    """:func:`chip_energy`'s ``total_uj``: the chip's energy per sample in microjoules (an
    estimate), a float64 scalar with gradients to the payloads, spikes and weights."""
    return chip_energy(payloads, spikes, weights, **kwargs).total_uj


def chip_energy_of_record(record, payloads: Tensor, weights: Sequence[Tensor], **kwargs) -> ChipEnergy:
    """:func:`chip_energy` of what the host's ``SpikingBranch.drive`` returned: ``record.spikes``
    (per layer ``(T, B, n_l)``) and ``record.theta`` (``(T, B, L)`` or None), with the ``payloads``
    the host sent (``plan.encode_input(x)``); other arguments as :func:`chip_energy`."""
    kwargs.setdefault("theta", record.theta)
    return chip_energy(payloads, record.spikes, weights, **kwargs)
