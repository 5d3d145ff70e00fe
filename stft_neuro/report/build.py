"""Assemble a report (JSON-ready dict) from counts, and print it as a table.

JSON schema (version 1; every per-sample figure is a total over the samples divided by their
number; ``*_per_step`` lists have one entry per step)::

    format "stft-neuro/report", version 1, source {...}, samples N, steps T,
    steps_run {mean, sample_steps, histogram}                    # early exit only (else absent)
    Footprint, ParameterCount, ConnectionSparsity, ActivationSparsity,
    SynapticOperations {Effective_MACs, Effective_ACs, Dense}, MembraneUpdates   # NeuroBench 2.3
    layers {name: {kind, source, spiking,
                   neurons, spikes, spikes_per_step, firing_rate,                 # neuron layers
                   active_updates, inactive_updates,
                   synaptic_events, synaptic_events_per_step, effective_acs,     # weight layers
                   effective_macs, dense_ops, fan_in, synapses, weights,
                   energy_pj {synaptic, neuron_updates, spike_messages, total}}}
    messages {host_to_chip {payloads, payloads_per_step, theta, theta_per_step, theta_nonzero,
                            payload_dead_zone},
              chip_to_host {spikes, spikes_per_step}}
    host {available, why, counted_by, components {name: {flops, macs, estimate_macs, note}}}
    energy {estimate true, unit, chip, host, hybrid_total, ann_all_on_host {...},
            snn_papers_convention_45nm {...}, layers {...}, constants {name: {value, unit, source}},
            notes [...]}
    definitions {...}
"""
from __future__ import annotations

from typing import Any, Mapping

from stft_neuro.report import energy as E
from stft_neuro.report import neurobench as NB
from stft_neuro.report.counts import HostCompute, RunCounts

FORMAT = "stft-neuro/report"
VERSION = 1

DEFINITIONS = {
    "spikes": "spikes emitted by the layer, per sample (spikes_per_step: per sample and step)",
    "firing_rate": "spikes per neuron per step",
    "synaptic_events": "nonzero presynaptic values x their fan-out of nonzero weights, per sample; "
                       "booked at the step the presynaptic value was sent",
    "active_updates": "neuron updates that changed the neuron's state (u, v for Loihi CUBA LIF; "
                      "v, and I for CubaLIF, for NIR neurons); inactive_updates: the rest",
    "host_to_chip": "payloads: nonzero graded input values sent (with the plan's payload dead zone "
                    "k, payloads |q| <= k were sent as 0); theta: threshold values sent "
                    "(one per layer per step when thresholds are dynamic)",
    "chip_to_host": "spikes the host reads (every layer with dynamic thresholds, else the last; "
                    "NIR: the nonzero values reaching Output nodes)",
    "neurobench": NB.__doc__.split("\n\n")[1] if NB.__doc__ else "",
}


def _ps(arr, N: int) -> list[float]:
    return [float(v) / N for v in arr]


def build_report(counts: RunCounts, static: Mapping[str, Any], host: Mapping[str, HostCompute] | None,
                 consts: Mapping[str, E.Constant] | None = None, *, source: Mapping[str, Any] | None = None,
                 host_why: str = "") -> dict[str, Any]:
    """The report dict (see module doc)."""
    N = max(1, counts.samples)
    T = counts.steps
    # steps per sample that ran (T, or fewer with early exit): firing rates are per step run
    mean_steps = counts.meta.get("sample_steps", counts.samples * T) / N if counts.samples else T
    en = E.estimate(counts, host, consts)
    layers: dict[str, Any] = {}
    for name, l in counts.layers.items():
        d: dict[str, Any] = {"kind": l.kind, "source": l.source, "spiking": l.spiking}
        if l.has_neurons:
            sp = float(l.spikes.sum()) / N
            d.update(neurons=l.neurons, spikes=sp, spikes_per_step=_ps(l.spikes, N),
                     firing_rate=sp / (l.neurons * mean_steps) if mean_steps else 0.0,
                     active_updates=float(l.active_updates.sum()) / N,
                     inactive_updates=float(l.inactive_updates.sum()) / N,
                     active_updates_per_step=_ps(l.active_updates, N))
        if l.has_synapses:
            d.update(synaptic_events=float(l.synaptic_events.sum()) / N,
                     synaptic_events_per_step=_ps(l.synaptic_events, N),
                     effective_acs=float(l.acs.sum()) / N, effective_macs=float(l.macs.sum()) / N,
                     dense_ops=float(l.dense_ops.sum()) / N, fan_in=l.fan_in, synapses=l.synapses,
                     weights=l.weights, graded_input=l.graded_input)
        d["energy_pj"] = en["layers"][name]
        layers[name] = d
    rep: dict[str, Any] = {"format": FORMAT, "version": VERSION, "source": dict(source or {}),
                           "samples": counts.samples, "steps": T,
                           "dynamic_threshold": counts.dynamic_threshold}
    if counts.meta.get("steps_run") is not None:
        import numpy as np
        steps = np.asarray(counts.meta["steps_run"])
        vals, nums = np.unique(steps, return_counts=True)
        rep["steps_run"] = {"mean": float(steps.mean()) if steps.size else 0.0,
                            "sample_steps": int(steps.sum()),
                            "histogram": {str(int(v)): int(c) for v, c in zip(vals, nums)}}
    rep.update(NB.metrics(static, counts))
    rep["layers"] = layers
    rep["messages"] = {
        "host_to_chip": {"payloads": float(counts.payload_messages.sum()) / N,
                         "payloads_per_step": _ps(counts.payload_messages, N),
                         "theta": float(counts.theta_messages.sum()) / N,
                         "theta_per_step": _ps(counts.theta_messages, N),
                         "theta_nonzero": float(counts.theta_nonzero.sum()) / N,
                         "payload_dead_zone": int(counts.meta.get("payload_dead_zone", 0))},
        "chip_to_host": {"spikes": float(counts.chip_to_host_spikes.sum()) / N,
                         "spikes_per_step": _ps(counts.chip_to_host_spikes, N)},
    }
    rep["host"] = {
        "available": bool(host), "why": host_why if not host else "",
        "counted_by": "torch.utils.flop_counter.FlopCounterMode (matrix products; 2 FLOPs per MAC)",
        "components": {k: {"flops": h.flops, "macs": h.macs, "estimate_macs": h.estimate_macs,
                           "note": h.note} for k, h in (host or {}).items()},
    }
    rep["energy"] = {k: v for k, v in en.items() if k != "layers"}
    rep["definitions"] = DEFINITIONS
    return rep


def format_table(rep: Mapping[str, Any]) -> str:
    """A terminal table per layer plus the NeuroBench keys and the energy estimates."""
    head = (f"{'layer':<16} {'kind':<10} {'neurons':>8} {'spikes':>10} {'rate':>7} "
            f"{'syn.events':>12} {'active upd':>11} {'energy pJ':>11}")
    ran = (f" (early exit: {rep['steps_run']['mean']:.2f} steps run per sample)" if rep.get("steps_run") else "")
    lines = [f"report: {rep['samples']} sample(s) x {rep['steps']} steps{ran} (per-sample figures)", head,
             "-" * len(head)]
    for name, d in rep["layers"].items():
        lines.append(
            f"{name[:16]:<16} {d['kind'][:10]:<10} {d.get('neurons', ''):>8} "
            f"{(format(d['spikes'], '.1f') if 'spikes' in d else ''):>10} "
            f"{(format(d['firing_rate'], '.3f') if 'firing_rate' in d else ''):>7} "
            f"{(format(d['synaptic_events'], '.1f') if 'synaptic_events' in d else ''):>12} "
            f"{(format(d['active_updates'], '.1f') if 'active_updates' in d else ''):>11} "
            f"{d['energy_pj']['total']:>11.4g}")
    so = rep["SynapticOperations"]
    m = rep["messages"]
    e = rep["energy"]
    lines += [
        "",
        f"NeuroBench: Footprint {rep['Footprint']} B, ParameterCount {rep['ParameterCount']}, "
        f"ConnectionSparsity {rep['ConnectionSparsity']:.4f}, ActivationSparsity "
        f"{rep['ActivationSparsity']:.4f}, MembraneUpdates {rep['MembraneUpdates']:.1f}",
        f"SynapticOperations: Effective_MACs {so['Effective_MACs']:.1f}, Effective_ACs "
        f"{so['Effective_ACs']:.1f}, Dense {so['Dense']:.1f}",
        f"host -> chip: {m['host_to_chip']['payloads']:.1f} payloads"
        + (f" (dead zone |q| <= {m['host_to_chip']['payload_dead_zone']} sent as 0)"
           if m['host_to_chip'].get('payload_dead_zone') else "")
        + f", {m['host_to_chip']['theta']:.1f} theta values; chip -> host: "
        f"{m['chip_to_host']['spikes']:.1f} spikes",
        "energy ESTIMATES (pJ per sample; Loihi per-op model, Davies 2018 - no Loihi 2 table is "
        "published; host 45 nm, Horowitz 2014):",
        f"  chip {e['chip']:.4g}, host "
        + (f"{e['host']:.4g}" if e['host'] is not None else f"n/a ({rep['host']['why']})")
        + f", hybrid {e['hybrid_total']:.4g}; spiking branch as an ANN on the host "
        f"{e['ann_all_on_host']['spiking_branch_as_ann']:.4g} "
        f"({e['ann_all_on_host']['spiking_branch_as_ann_macs']:.4g} MACs)"
        + (f"; chip / ANN = {e['ann_all_on_host']['chip_over_spiking_branch_as_ann']:.3f}"
           if e['ann_all_on_host'].get('chip_over_spiking_branch_as_ann') is not None else ""),
    ]
    return "\n".join(lines)
