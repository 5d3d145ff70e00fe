"""A Loihi 2 resource report: where a network goes, how full each core is, which rules it breaks.

``resource_report`` returns plain JSON-able data (``json.dumps`` works on it as is);
``format_resource_report`` turns that data into a table for people. Every capacity number in the
report carries its provenance (``published`` / ``toolchain`` / ``assumption``, see
``resources.py``): the core count and memory are estimates of a placement, not a compiled one.
"""
from __future__ import annotations

from stft_neuro.hw_targets.loihi2.mapping import map_network
from stft_neuro.hw_targets.loihi2.network import FixedPointNetwork
from stft_neuro.hw_targets.loihi2.resources import LOIHI2, Loihi2Target
from stft_neuro.hw_targets.loihi2.rules import ERROR, RULES, check

#: Limits that exist on the hardware but are not modelled, with why.
NOT_MODELLED = (
    "input/output axons (fan-in/fan-out) per core: unpublished for Loihi 2 (Loihi 1: 4096/4096, "
    "nengo-loihi); not checked",
    "neuron state, microcode and routing-table memory: share the core's flexible SRAM with the "
    "synapses (unpublished split); not modelled",
    "Loihi 2's synapse encoding and compression: unpublished; memory estimated by the synapse "
    "format named in the limits",
)


def _round(x: float) -> float:
    return round(float(x), 6)


def resource_report(network: FixedPointNetwork, target: Loihi2Target = LOIHI2) -> dict:
    """Per-layer and per-core resources, totals and design-rule results, as JSON-able data."""
    violations = check(network, target)
    report: dict = {
        "target": {
            "name": "Loihi 2",
            "limits": [
                {"name": l.name, "value": l.value, "kind": l.kind, "source": l.source}
                for l in target.limits()
            ],
            "synapse_format": target.core.synapse_format.name,
            "not_modelled": list(NOT_MODELLED),
        },
        "layers": [],
        "cores": [],
        "totals": None,
        "design_rules": {
            "passed": not any(v.severity == ERROR for v in violations),
            "errors": sum(v.severity == ERROR for v in violations),
            "warnings": sum(v.severity != ERROR for v in violations),
            "rules_checked": [rule.__name__ for rule in RULES],
            "violations": [v.to_dict() for v in violations],
        },
    }
    well_formed = bool(network.layers) and all(
        getattr(layer.weight, "ndim", 0) == 2 for layer in network.layers)
    if not well_formed:
        return report  # layer_shapes_chain says why; nothing can be placed
    mapping = map_network(network, target)
    core = target.core
    for layer in network.layers:
        allocs = mapping.for_layer(layer.name)
        report["layers"].append({
            "name": layer.name,
            "n_in": layer.n_in,
            "neurons": layer.n_out,
            "synapses": layer.n_out * layer.n_in,
            "cores": len(allocs),
            "neurons_per_core": [a.neurons for a in allocs],
            "memory_bits_per_core": [a.synaptic_memory_bits for a in allocs],
            "max_neuron_utilisation": _round(max((a.neuron_utilisation(core) for a in allocs),
                                                 default=0.0)),
            "max_memory_utilisation": _round(max((a.memory_utilisation(core) for a in allocs),
                                                 default=0.0)),
        })
    for a in mapping.allocations:
        report["cores"].append({
            "core": a.core_index,
            "chip": mapping.chip_of(a),
            "layer": a.layer,
            "neuron_range": list(a.neuron_range),
            "neurons": a.neurons,
            "synapses": a.synapses,
            "synaptic_memory_bits": a.synaptic_memory_bits,
            "neuron_utilisation": _round(a.neuron_utilisation(core)),
            "memory_utilisation": _round(a.memory_utilisation(core)),
            "fits": a.fits(core),
        })
    n = max(mapping.cores_used, 1)
    report["totals"] = {
        "neurons": mapping.neurons,
        "synapses": mapping.synapses,
        "synaptic_memory_bits": mapping.synaptic_memory_bits,
        "cores_used": mapping.cores_used,
        "chips_needed": mapping.chips_needed,
        "cores_per_chip": target.chip.neuro_cores,
        "chips_in_target": target.chip.n_chips,
        "mean_neuron_utilisation": _round(sum(a.neuron_utilisation(core)
                                              for a in mapping.allocations) / n),
        "mean_memory_utilisation": _round(sum(a.memory_utilisation(core)
                                              for a in mapping.allocations) / n),
    }
    return report


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def format_resource_report(report: dict) -> str:
    """A human-readable table of :func:`resource_report`'s data."""
    out = ["Loihi 2 resource report (a placement estimate, not a compiled mapping)", ""]
    out.append("Limits (kind: published = Intel/Intel Labs documents, toolchain = Lava source, "
               "assumption = chosen here):")
    out += ["  " + r for r in _table(
        ["limit", "value", "kind", "source"],
        [[l["name"], l["value"], l["kind"], l["source"]] for l in report["target"]["limits"]])]
    out.append(f"  synapse memory model: {report['target']['synapse_format']}")
    out += [f"  not modelled: {t}" for t in report["target"]["not_modelled"]]
    out.append("")
    if report["layers"]:
        out.append("Layers:")
        out += ["  " + r for r in _table(
            ["layer", "n_in", "neurons", "synapses", "cores", "neurons/core", "max mem/core (bits)",
             "max neuron util", "max mem util"],
            [[l["name"], l["n_in"], l["neurons"], l["synapses"], l["cores"],
              ",".join(str(n) for n in sorted(set(l["neurons_per_core"]))),
              max(l["memory_bits_per_core"], default=0),
              f"{l['max_neuron_utilisation']:.1%}", f"{l['max_memory_utilisation']:.1%}"]
             for l in report["layers"]])]
        t = report["totals"]
        out += ["", (f"Totals: {t['neurons']} neurons, {t['synapses']} synapses, "
                     f"{t['synaptic_memory_bits']} bits of synaptic memory, {t['cores_used']} cores "
                     f"on {t['chips_needed']} chip(s) of {t['cores_per_chip']} cores "
                     f"(target: {t['chips_in_target']}); mean utilisation "
                     f"{t['mean_neuron_utilisation']:.1%} neurons, "
                     f"{t['mean_memory_utilisation']:.1%} memory")]
    else:
        out.append("Layers: none placed (the network is not well-formed; see the design rules)")
    dr = report["design_rules"]
    out += ["", f"Design rules: {'PASS' if dr['passed'] else 'FAIL'} "
                f"({dr['errors']} error(s), {dr['warnings']} warning(s), "
                f"{len(dr['rules_checked'])} rules checked)"]
    out += [f"  - [{v['severity']}] {v['message']}" for v in dr["violations"]]
    return "\n".join(out)
