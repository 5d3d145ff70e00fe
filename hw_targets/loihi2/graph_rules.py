"""Design rules and core mapping of a :class:`~stft_neuro.hw_targets.loihi2.network.FixedPointGraph`.

The rules and the mapping are the STFT plan's (``rules.py``, ``mapping.py``), applied to the two
things a graph is made of:

- every **projection** (one Lava Dense) as a ``FixedPointLayer`` (``Projection.as_layer``): its
  weights, exponent and worst-case Dense output (:data:`PROJECTION_RULES`);
- every **population** (one Lava LIF process) as a ``FixedPointLayer`` whose weight is all its
  incoming projections side by side ``(n, fan-in)``: its neuron parameters, and its place on the
  cores (:data:`POPULATION_RULES`; the mapping puts each population on cores of its own, synapses
  stored dense on the destination cores, as ``mapping.py`` does for a layer);
- and two rules of the graph itself: :func:`max_profiles_per_layer` (Lava's LIF holds one
  ``du, dv, vth`` per process: ``converters/nir_fixed.MAX_PROFILES_PER_LAYER``) and
  :func:`weight_bits` (the float weights against Loihi 2's 8-bit mantissa: the quantized weights
  always fit 8 bits, so ``weight_mantissa_8bit`` cannot fail for a float graph; what can fail is
  that 8 bits under one exponent per source cannot hold its weights, and the small ones
  round to 0).

Not applied: ``layer_shapes_chain`` (a graph is not a chain; its shapes are checked when it is
built) and ``graded_payload_bits`` (the host's input bits are checked by the command, 2..8; every
other projection carries binary spikes). :func:`check_graph` returns every violation at once, each
naming the NIR node, the connection or population, the parameter, the rule, the limit and the
value.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from stft_neuro.hw_targets.loihi2 import rules as R
from stft_neuro.hw_targets.loihi2.mapping import Mapping, map_network
from stft_neuro.hw_targets.loihi2.network import (FixedPointGraph, FixedPointLayer,
                                                  FixedPointNetwork)
from stft_neuro.hw_targets.loihi2.resources import LOIHI2, Loihi2Target

PROJECTION_RULES = (R.integer_parameters, R.weight_mantissa_8bit, R.weight_mixed_sign_even,
                    R.weight_exp_range, R.dense_accumulator_32bit, R.dense_output_16bit,
                    R.u_input_no_wrap, R.u_worst_case_no_wrap)
POPULATION_RULES = (R.layer_names_unique, R.decay_12bit, R.vth_17bit, R.bias_mantissa_13bit,
                    R.bias_exponent_3bit, R.fan_in_fits_core, R.core_capacity, R.cores_per_chip,
                    R.synapses_per_chip)
#: Rules of ``rules.RULES`` that do not apply to a graph (module doc says why).
NOT_APPLIED = ("layer_shapes_chain", "graded_payload_bits")

#: The parameter each rule is about (for the report's ``parameter`` column).
PARAMETER = {
    "integer_parameters": "integer type", "weight_mantissa_8bit": "weight",
    "weight_mixed_sign_even": "weight", "weight_exp_range": "weight_exp",
    "dense_accumulator_32bit": "weight x input (accumulator)",
    "dense_output_16bit": "Dense output (a_out)", "u_input_no_wrap": "u (one step's input)",
    "u_worst_case_no_wrap": "u (sustained input)", "layer_names_unique": "name",
    "decay_12bit": "du/dv", "vth_17bit": "vth", "bias_mantissa_13bit": "bias_mant",
    "bias_exponent_3bit": "bias_exp", "fan_in_fits_core": "fan-in",
    "core_capacity": "neurons and synaptic memory per core", "cores_per_chip": "cores",
    "synapses_per_chip": "synapses", "max_profiles_per_layer": "(du, dv, vth) profiles",
    "weight_bits": "weight (mantissa bits)",
}


def projection_network(g: FixedPointGraph) -> FixedPointNetwork:
    """Every projection as a layer named ``"src->dst"`` (for the per-Dense rules)."""
    return FixedPointNetwork(tuple(pr.as_layer(g.population(pr.dst)) for pr in g.projections))


def population_network(g: FixedPointGraph) -> FixedPointNetwork:
    """Every population as a layer ``(n, fan-in)``: its incoming Dense weights side by side."""
    layers = []
    for p in g.populations:
        ws = [np.asarray(pr.weight) for pr in g.projections if pr.dst == p.name]
        w = np.hstack(ws) if ws else np.zeros((p.n, 0), np.int64)
        layers.append(FixedPointLayer(name=p.name, weight=w, weight_exp=0, du=p.du, dv=p.dv,
                                      vth=p.vth, bias_mant=np.asarray(p.bias_mant),
                                      bias_exp=p.bias_exp))
    return FixedPointNetwork(tuple(layers))


def map_graph(g: FixedPointGraph, target: Loihi2Target = LOIHI2) -> Mapping:
    """The populations placed on cores (``mapping.map_network`` of :func:`population_network`)."""
    return map_network(population_network(g), target)


def dest_cores(g: FixedPointGraph, mapping: Mapping, host_layers: tuple[str, ...] = ()
               ) -> dict[str, int]:
    """Per graph layer: the cores its spikes are sent to (every core of every population it
    projects into), plus 1 when the host reads it; at least 1."""
    cores = {}
    for a in mapping.allocations:
        cores[a.layer] = cores.get(a.layer, 0) + 1
    out = {}
    for layer, _ in g.layers:
        mine = {p.name for p in g.of_layer(layer)}
        dst = {pr.dst for pr in g.projections if pr.src in mine}
        out[layer] = max(1, sum(cores.get(d, 0) for d in dst) + (layer in host_layers))
    return out


def max_profiles_per_layer(g: FixedPointGraph, limit: int) -> list[R.Violation]:
    """A layer holds at most ``limit`` populations (distinct quantized ``(du, dv, vth)``)."""
    out = []
    for layer, n in g.layers:
        k = len(g.of_layer(layer))
        if k > limit:
            out.append(R._violation(
                "max_profiles_per_layer", layer, "distinct (du, dv, vth) profiles", k, limit, ">",
                f"its {n} neurons need one Lava LIF process per profile and one Dense per pair of "
                "profiles; give the layer fewer distinct time constants and thresholds"))
    return out


#: Shares of one neuron's drive on weights that rounded to 0 (``weight_bits``). Not hardware
#: limits: tolerances of this toolkit. Past the warning share the deployed neuron computes a
#: visibly different function from the float one (the quantization report's per-layer agreement
#: shows how much). Past the error share the neuron has lost most of what drove it, and the graph
#: is refused.
WEIGHTS_ZEROED_DRIVE_WARNING: float = 0.01
WEIGHTS_ZEROED_DRIVE_ERROR: float = 0.5


def weight_bits(quant: list[Any], warning: float = WEIGHTS_ZEROED_DRIVE_WARNING,
                error: float = WEIGHTS_ZEROED_DRIVE_ERROR, mantissa_bits: int = 8) -> list[R.Violation]:
    """Per graph layer (``nir_fixed.LayerQuant``): a violation when, for some neuron, the nonzero
    float weights that Loihi 2's ``mantissa_bits``-bit mantissa under its source's exponent
    rounds to 0 carry more than ``warning`` (a warning) or ``error`` (an error) of its drive (sum
    of |w| x the largest input of the source). Value and limit are in percent."""
    out = []
    for q in quant:
        share = q.weights_zeroed_drive
        if share > warning:
            severe = share > error
            out.append(R._violation(
                "weight_bits", q.name, "a neuron with this % of its drive on weights rounded to 0:",
                round(100 * share, 1), round(100 * (error if severe else warning), 1), ">",
                f"{q.weights_zeroed} of its weights round to 0: they span "
                f"{q.weight_bits_needed} signed bits under one exponent per source and a Loihi 2 "
                f"mantissa has {mantissa_bits}; narrow the layer's weight range (prune or clip the "
                "largest, or rescale) or split it", severity=R.ERROR if severe else R.WARNING))
    return out


def _row(v: R.Violation, g: FixedPointGraph, where: str) -> dict[str, Any]:
    """A violation with the NIR node (graph layer) and the connection or population it is about."""
    node = part = None
    if v.layer is not None:
        if where == "projection":
            part = v.layer
            node = g.population(v.layer.split("->", 1)[1]).layer
        elif where == "population":
            part = v.layer
            node = g.population(v.layer).layer
        else:
            node = v.layer
    return {"node": node, where if where != "graph" else "layer": part,
            "parameter": PARAMETER.get(v.rule, v.rule), **v.to_dict()}


def check_graph(g: FixedPointGraph, max_profiles: int, target: Loihi2Target = LOIHI2,
                quant: list[Any] | None = None) -> list[dict[str, Any]]:
    """Every design-rule violation (errors and warnings) of ``g``, as JSON-ready rows with keys
    ``node, parameter, rule, value, limit, severity, message`` (and ``projection`` or
    ``population``: the Dense ``"src->dst"`` or the LIF process it is about). ``quant``: the
    per-layer quantization record (``nir_fixed.quantize_graph``) for :func:`weight_bits`."""
    proj, pops = projection_network(g), population_network(g)
    rows = [_row(v, g, "graph") for v in max_profiles_per_layer(g, max_profiles)]
    rows += [_row(v, g, "graph") for v in weight_bits(quant or [])]
    rows += [_row(v, g, "projection") for v in R.check(proj, target, PROJECTION_RULES)]
    rows += [_row(v, g, "population") for v in R.check(pops, target, POPULATION_RULES)]
    return rows


def rules_checked() -> list[str]:
    return (["max_profiles_per_layer", "weight_bits"] + [r.__name__ for r in PROJECTION_RULES]
            + [r.__name__ for r in POPULATION_RULES])


def format_violations(rows: list[dict[str, Any]]) -> str:
    """One line per violation: ``[severity] node (part) parameter: message``."""
    return "\n".join(
        f"  - [{r['severity']}] node {r['node']!r}"
        + (f" ({r.get('projection') or r.get('population')})"
           if r.get("projection") or r.get("population") else "")
        + f", {r['parameter']}: {r['message']}" for r in rows)
