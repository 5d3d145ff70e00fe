"""Design rules for Loihi 2: named pure functions ``rule(network, target) -> list[Violation]``.

``check`` runs every rule in :data:`RULES` and returns every violation at once;
``ensure_deployable`` raises one :class:`~stft_neuro.hw_targets.errors.DesignRuleError` that lists all of them.
Each message names the rule, the layer, the value, the limit and by how much it is exceeded, e.g.
``Design rule weight_mantissa_8bit: layer lif2 has weight 300 > 254 (by 46) ...``.

Bit widths come from ``constants.py`` (Lava's ``fixed_pt`` models), capacities from
``resources.py``, placement from ``mapping.py``. Three kinds of rules:

- parameter ranges: a value outside them is changed (clipped, truncated, wrapped) by Lava or
  cannot be represented on the chip;
- structure and capacity: layer shapes chain, the placement fits the cores and chips;
- exactness of the integer arithmetic: the worst case over all inputs of the Dense accumulation
  must not overflow Lava's int32, the 16-bit Dense output, nor wrap the 24-bit ``u``.

Worst-case input: each layer's :attr:`~stft_neuro.hw_targets.loihi2.network.FixedPointLayer.payload`
(signed ``num_message_bits``-bit integers for graded spikes, 0 or 1 for binary spikes); the bounds
are the layer's properties (``network.py``), computed there once for every consumer.
``u_worst_case_no_wrap`` bounds ``u`` under that input held for ever
(``FixedPointLayer.u_sustained_bound``); whether that input can occur depends on the data, so it
is a *warning*: ``ensure_deployable`` raises on errors only.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from stft_neuro.hw_targets.errors import DesignRuleError
from stft_neuro.hw_targets.loihi2 import constants as C
from stft_neuro.hw_targets.loihi2.mapping import Mapping, map_network
from stft_neuro.hw_targets.loihi2.network import FixedPointLayer, FixedPointNetwork
from stft_neuro.hw_targets.loihi2.resources import LOIHI2, Loihi2Target
from stft_neuro.hw_targets.loihi2.weights import weight_sign_mode

logger = logging.getLogger(__name__)

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Violation:
    """One broken design rule.

    Attributes:
        rule: the rule's name (the function's name).
        layer: the layer's name, or ``None`` for a rule about the whole network.
        message: one line: rule, layer, value, limit and excess.
        value: the offending value (the worst one, for arrays).
        limit: the limit it breaks.
        severity: ``"error"`` (not deployable as is) or ``"warning"`` (input-dependent hazard).
    """

    rule: str
    layer: str | None
    message: str
    value: float
    limit: float
    severity: str = ERROR

    def to_dict(self) -> dict:
        return {
            "rule": self.rule, "layer": self.layer, "message": self.message,
            "value": self.value, "limit": self.limit, "severity": self.severity,
        }


Rule = Callable[[FixedPointNetwork, Loihi2Target], "list[Violation]"]


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def _num(x) -> float | int:
    """A JSON-friendly Python number."""
    if isinstance(x, (np.integer, int)):
        return int(x)
    return float(x)


def _violation(rule: str, layer: str | None, what: str, value, limit, op: str,
               detail: str = "", severity: str = ERROR) -> Violation:
    value, limit = _num(value), _num(limit)
    by = abs(value - limit)
    where = f"layer {layer}" if layer is not None else "the network"
    msg = f"Design rule {rule}: {where} has {what} {value} {op} {limit} (by {_num(by)})"
    if detail:
        msg += f"; {detail}"
    return Violation(rule=rule, layer=layer, message=msg, value=value, limit=limit,
                     severity=severity)


def _range(rule: str, layer: str, what: str, values, lo, hi, detail: str = "") -> list[Violation]:
    """Violations of ``lo <= values <= hi``: the worst value on each side, with a count."""
    arr = np.asarray(values)
    if arr.size == 0:
        return []
    out = []
    for bad, worst, limit, op in (
        (arr > hi, arr.max(), hi, ">"),
        (arr < lo, arr.min(), lo, "<"),
    ):
        n_bad = int(np.count_nonzero(bad))
        if n_bad:
            extra = ""
            if arr.ndim > 0:
                first = tuple(int(i) for i in np.argwhere(bad)[0])
                extra = f"{n_bad} of {arr.size} out of range, first at {list(first)}"
            text = "; ".join(t for t in (extra, detail) if t)
            out.append(_violation(rule, layer, what, worst, limit, op, text))
    return out


def _bounds(rule: str, layer: str, what: str, lo_val: int, hi_val: int, lo: int, hi: int,
            detail: str = "") -> list[Violation]:
    """Violations of ``lo <= lo_val`` and ``hi_val <= hi`` (a worst-case interval)."""
    out = []
    if hi_val > hi:
        out.append(_violation(rule, layer, what, hi_val, hi, ">", detail))
    if lo_val < lo:
        out.append(_violation(rule, layer, what, lo_val, lo, "<", detail))
    return out


def _is_matrix(layer: FixedPointLayer) -> bool:
    return isinstance(layer.weight, np.ndarray) and layer.weight.ndim == 2


def accumulation_bounds(network: FixedPointNetwork, index: int) -> tuple[int, int]:
    """Worst-case ``(min, max)`` over neurons and inputs of layer ``index``'s ``weight @ s``
    (``FixedPointLayer.accumulation_range``)."""
    return network.layers[index].accumulation_range


def dense_output_bounds(network: FixedPointNetwork, index: int) -> tuple[int, int]:
    """Worst-case ``(min, max)`` of layer ``index``'s Dense output ``a_out``
    (``FixedPointLayer.dense_output_range``)."""
    return network.layers[index].dense_output_range


def _arith_layers(network: FixedPointNetwork):
    """Layers with an integer weight matrix and an integer ``weight_exp`` (others are reported
    by ``layer_shapes_chain`` / ``integer_parameters``)."""
    for i, layer in enumerate(network.layers):
        if (_is_matrix(layer) and np.issubdtype(layer.weight.dtype, np.integer)
                and isinstance(layer.weight_exp, (int, np.integer))
                and not isinstance(layer.weight_exp, bool)):
            yield i, layer


# ------------------------------------------------------------------------------------------------
# Parameter ranges (constants.py)
# ------------------------------------------------------------------------------------------------


def integer_parameters(network: FixedPointNetwork, target: Loihi2Target = LOIHI2) -> list[Violation]:
    """Weights, biases and every scalar parameter are integers (Lava casts floats silently)."""
    out = []
    for layer in network.layers:
        for name in ("weight", "bias_mant"):
            arr = np.asarray(getattr(layer, name))
            if not np.issubdtype(arr.dtype, np.integer):
                out.append(Violation(
                    "integer_parameters", layer.name,
                    f"Design rule integer_parameters: layer {layer.name} has {name} of dtype "
                    f"{arr.dtype}, not an integer type", 0, 0))
        for name in ("weight_exp", "du", "dv", "vth", "bias_exp", "num_message_bits"):
            v = getattr(layer, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                out.append(Violation(
                    "integer_parameters", layer.name,
                    f"Design rule integer_parameters: layer {layer.name} has {name} = {v!r}, "
                    f"not an integer", 0, 0))
    return out


def weight_mantissa_8bit(network: FixedPointNetwork, target: Loihi2Target = LOIHI2) -> list[Violation]:
    """Weights within Lava's 8-bit range for their sign mode (``constants.WEIGHT_*``).

    Excitatory ``[0, 255]``, inhibitory ``[-255, 0]``, mixed ``[-256, 254]`` (an 8-bit signed
    mantissa ``m`` times 2). Outside it Lava's Dense clips.
    """
    out = []
    for layer in network.layers:
        if not _is_matrix(layer) or layer.weight.size == 0:
            continue
        mode = weight_sign_mode(layer.weight)
        lo, hi = {
            "excitatory": (0, C.WEIGHT_MAX_UNSIGNED),
            "inhibitory": (-C.WEIGHT_MAX_UNSIGNED, 0),
            "mixed": (C.WEIGHT_MIN_MIXED, C.WEIGHT_MAX_MIXED),
        }[mode]
        out += _range("weight_mantissa_8bit", layer.name, "weight", layer.weight, lo, hi,
                      f"{mode} weights must lie in [{lo}, {hi}]")
    return out


def weight_mixed_sign_even(network: FixedPointNetwork, target: Loihi2Target = LOIHI2) -> list[Violation]:
    """Mixed-sign weights are multiples of 2: Lava truncates their lowest bit (``truncate_weights``)."""
    out = []
    for layer in network.layers:
        if not _is_matrix(layer) or layer.weight.size == 0 or weight_sign_mode(layer.weight) != "mixed":
            continue
        odd = np.asarray(layer.weight) % C.WEIGHT_MIXED_STEP != 0
        n_odd = int(np.count_nonzero(odd))
        if n_odd:
            first = [int(i) for i in np.argwhere(odd)[0]]
            value = _num(layer.weight[tuple(first)])
            out.append(Violation(
                "weight_mixed_sign_even", layer.name,
                f"Design rule weight_mixed_sign_even: layer {layer.name} has {n_odd} odd "
                f"mixed-sign weights (first {value} at {first}); Lava truncates each by 1 to a "
                f"multiple of {C.WEIGHT_MIXED_STEP}", value, C.WEIGHT_MIXED_STEP))
    return out


def weight_exp_range(network: FixedPointNetwork, target: Loihi2Target = LOIHI2) -> list[Violation]:
    """``WEIGHT_EXP_MIN <= weight_exp <= WEIGHT_EXP_MAX``."""
    return [v for layer in network.layers
            for v in _range("weight_exp_range", layer.name, "weight_exp", layer.weight_exp,
                            C.WEIGHT_EXP_MIN, C.WEIGHT_EXP_MAX)]


def decay_12bit(network: FixedPointNetwork, target: Loihi2Target = LOIHI2) -> list[Violation]:
    """du and dv are unsigned 12-bit: ``[0, DECAY_MAX]``."""
    return [v for layer in network.layers for name in ("du", "dv")
            for v in _range("decay_12bit", layer.name, name, getattr(layer, name),
                            0, C.DECAY_MAX)]


def vth_17bit(network: FixedPointNetwork, target: Loihi2Target = LOIHI2) -> list[Violation]:
    """The threshold mantissa is unsigned 17-bit: ``[0, VTH_MAX]``."""
    return [v for layer in network.layers
            for v in _range("vth_17bit", layer.name, "vth", layer.vth, 0, C.VTH_MAX)]


def bias_mantissa_13bit(network: FixedPointNetwork, target: Loihi2Target = LOIHI2) -> list[Violation]:
    """Bias mantissas are signed 13-bit: ``[BIAS_MANT_MIN, BIAS_MANT_MAX]``."""
    return [v for layer in network.layers
            for v in _range("bias_mantissa_13bit", layer.name, "bias_mant", layer.bias_mant,
                            C.BIAS_MANT_MIN, C.BIAS_MANT_MAX)]


def bias_exponent_3bit(network: FixedPointNetwork, target: Loihi2Target = LOIHI2) -> list[Violation]:
    """The bias exponent is unsigned 3-bit: ``[BIAS_EXP_MIN, BIAS_EXP_MAX]``."""
    return [v for layer in network.layers
            for v in _range("bias_exponent_3bit", layer.name, "bias_exp", layer.bias_exp,
                            C.BIAS_EXP_MIN, C.BIAS_EXP_MAX)]


def graded_payload_bits(network: FixedPointNetwork, target: Loihi2Target = LOIHI2) -> list[Violation]:
    """``0 <= num_message_bits <= MESSAGE_BITS_MAX``; the host input (layer 0) ``<= INPUT_BITS_MAX``."""
    out = []
    for i, layer in enumerate(network.layers):
        hi = C.INPUT_BITS_MAX if i == 0 else C.MESSAGE_BITS_MAX
        detail = ("the host's graded input is limited to INPUT_BITS_MAX" if i == 0
                  else "Loihi 2 graded spikes carry at most MESSAGE_BITS_MAX bits")
        out += _range("graded_payload_bits", layer.name, "num_message_bits",
                      layer.num_message_bits, 0, hi, detail)
    return out


# ------------------------------------------------------------------------------------------------
# Structure
# ------------------------------------------------------------------------------------------------


def layer_shapes_chain(network: FixedPointNetwork, target: Loihi2Target = LOIHI2) -> list[Violation]:
    """At least one layer; weights 2-D; ``bias_mant`` is ``(n_out,)``; ``n_in(l) == n_out(l-1)``."""
    rule = "layer_shapes_chain"
    if not network.layers:
        return [Violation(rule, None, f"Design rule {rule}: the network has no layers", 0, 1)]
    out = []
    prev: FixedPointLayer | None = None
    for layer in network.layers:
        if not _is_matrix(layer):
            shape = np.shape(layer.weight)
            out.append(Violation(rule, layer.name,
                                 f"Design rule {rule}: layer {layer.name} has weight of shape "
                                 f"{shape}, not (n_out, n_in)", len(shape), 2))
            prev = None
            continue
        bias_shape = np.shape(layer.bias_mant)
        if bias_shape != (layer.n_out,):
            out.append(Violation(rule, layer.name,
                                 f"Design rule {rule}: layer {layer.name} has bias_mant of shape "
                                 f"{bias_shape} != ({layer.n_out},) (its n_out)",
                                 int(np.prod(bias_shape)), layer.n_out))
        if prev is not None and layer.n_in != prev.n_out:
            out.append(_violation(rule, layer.name, "n_in", layer.n_in, prev.n_out, "!=",
                                  f"the previous layer {prev.name} has n_out {prev.n_out}"))
        prev = layer
    return out


def layer_names_unique(network: FixedPointNetwork, target: Loihi2Target = LOIHI2) -> list[Violation]:
    """Layer names are unique (reports and mappings refer to layers by name)."""
    seen: dict[str, int] = {}
    for layer in network.layers:
        seen[layer.name] = seen.get(layer.name, 0) + 1
    return [Violation("layer_names_unique", name,
                      f"Design rule layer_names_unique: layer name {name!r} is used {n} times",
                      n, 1)
            for name, n in seen.items() if n > 1]


# ------------------------------------------------------------------------------------------------
# Capacity (mapping.py, resources.py)
# ------------------------------------------------------------------------------------------------


def _mapping(network: FixedPointNetwork, target: Loihi2Target) -> Mapping | None:
    """The mapping, when the network is well-formed enough to place."""
    if not network.layers or not all(_is_matrix(layer) for layer in network.layers):
        return None
    return map_network(network, target)


def fan_in_fits_core(network: FixedPointNetwork, target: Loihi2Target = LOIHI2) -> list[Violation]:
    """One neuron's ``n_in`` synapses fit in one core's synaptic memory."""
    core = target.core
    out = []
    for layer in network.layers:
        if not _is_matrix(layer):
            continue
        bits = core.memory_bits(layer.n_in, 1)
        if bits > core.synaptic_memory_bits:
            out.append(_violation(
                "fan_in_fits_core", layer.name, "synaptic memory per neuron (bits)", bits,
                core.synaptic_memory_bits, ">",
                f"fan-in {layer.n_in} x {core.synapse_format.weight_bits}-bit weights do not fit "
                f"one core's {core.synaptic_memory_bits} bits"))
    return out


def core_capacity(network: FixedPointNetwork, target: Loihi2Target = LOIHI2) -> list[Violation]:
    """Every core of the mapping holds at most ``max_neurons`` and its synaptic memory."""
    mapping = _mapping(network, target)
    if mapping is None:
        return []
    core = target.core
    out = []
    for a in mapping.allocations:
        if a.neurons > core.max_neurons:
            out.append(_violation("core_capacity", a.layer, f"on core {a.core_index} neurons",
                                  a.neurons, core.max_neurons, ">"))
        if a.synaptic_memory_bits > core.synaptic_memory_bits:
            out.append(_violation("core_capacity", a.layer,
                                  f"on core {a.core_index} synaptic memory (bits)",
                                  a.synaptic_memory_bits, core.synaptic_memory_bits, ">"))
    return out


def cores_per_chip(network: FixedPointNetwork, target: Loihi2Target = LOIHI2) -> list[Violation]:
    """The mapping needs at most ``n_chips * neuro_cores`` cores."""
    mapping = _mapping(network, target)
    if mapping is None:
        return []
    chip = target.chip
    available = chip.n_chips * chip.neuro_cores
    if mapping.cores_used <= available:
        return []
    per_layer = ", ".join(f"{layer.name}: {len(mapping.for_layer(layer.name))}"
                          for layer in network.layers)
    return [_violation("cores_per_chip", None, "cores", mapping.cores_used, available, ">",
                       f"{mapping.chips_needed} chips of {chip.neuro_cores} cores needed, the "
                       f"target has {chip.n_chips}; cores per layer: {per_layer}")]


def synapses_per_chip(network: FixedPointNetwork, target: Loihi2Target = LOIHI2) -> list[Violation]:
    """The synapses placed on each chip number at most ``max_synapses`` (120 M)."""
    mapping = _mapping(network, target)
    if mapping is None:
        return []
    per_chip: dict[int, int] = {}
    for a in mapping.allocations:
        per_chip[mapping.chip_of(a)] = per_chip.get(mapping.chip_of(a), 0) + a.synapses
    return [_violation("synapses_per_chip", None, f"on chip {c} synapses", n,
                       target.chip.max_synapses, ">")
            for c, n in sorted(per_chip.items()) if n > target.chip.max_synapses]


# ------------------------------------------------------------------------------------------------
# Exactness of the integer arithmetic
# ------------------------------------------------------------------------------------------------


def dense_accumulator_32bit(network: FixedPointNetwork, target: Loihi2Target = LOIHI2) -> list[Violation]:
    """The worst-case ``weight @ s`` fits Lava's int32 accumulator (it would wrap silently)."""
    lim = 2 ** (C.ACCUM_BITS - 1)
    out = []
    for i, layer in _arith_layers(network):
        lo, hi = accumulation_bounds(network, i)
        out += _bounds("dense_accumulator_32bit", layer.name, "worst-case accumulation",
                       lo, hi, -lim, lim - 1, "Lava's int32 accumulator would wrap")
    return out


def dense_output_16bit(network: FixedPointNetwork, target: Loihi2Target = LOIHI2) -> list[Violation]:
    """The worst-case Dense output (after ``weight_exp``) fits 16 signed bits (``A_OUT_BITS``)."""
    out = []
    for i, layer in _arith_layers(network):
        lo, hi = dense_output_bounds(network, i)
        out += _bounds("dense_output_16bit", layer.name, "worst-case Dense output",
                       lo, hi, C.A_OUT_MIN, C.A_OUT_MAX,
                       f"the synaptic input is {C.A_OUT_BITS}-bit signed (constants.A_OUT_BITS); "
                       f"lower weight_exp or the weights")
    return out


def u_input_no_wrap(network: FixedPointNetwork, target: Loihi2Target = LOIHI2) -> list[Violation]:
    """One step's worst-case input ``a_out << ACT_SHIFT`` alone stays inside u's 24-bit range."""
    out = []
    for i, layer in _arith_layers(network):
        lo, hi = dense_output_bounds(network, i)
        lo, hi = lo << C.ACT_SHIFT, hi << C.ACT_SHIFT
        # u wraps when > UV_MAX_VAL or <= -UV_MAX_VAL (constants.U_WRAP)
        out += _bounds("u_input_no_wrap", layer.name, "worst-case input to u (a_out << 6)",
                       lo, hi, -C.UV_MAX_VAL + 1, C.UV_MAX_VAL, "u would wrap in a single step")
    return out


def u_worst_case_no_wrap(network: FixedPointNetwork, target: Loihi2Target = LOIHI2) -> list[Violation]:
    """Under the worst-case input held every step, ``|u| <= A * 4096 / (du + 1)``
    (``FixedPointLayer.u_sustained_bound``) stays where Lava's wrap cannot act (below ``2**23``).

    A warning: reaching it needs every input at its worst every step for about
    ``4096 / (du + 1)`` steps.
    """
    out = []
    for i, layer in _arith_layers(network):
        if not isinstance(layer.du, (int, np.integer)) or not 0 <= layer.du <= C.DECAY_MAX:
            continue
        if layer.u_can_wrap:
            out.append(_violation(
                "u_worst_case_no_wrap", layer.name, "worst-case sustained |u| bound",
                layer.u_sustained_bound, C.UV_MAX_VAL - 1, ">",
                f"u can wrap if inputs stay at their worst for ~{C.DECAY_UNITY // (int(layer.du) + 1)} "
                f"steps (du={int(layer.du)})", severity=WARNING))
    return out


# ------------------------------------------------------------------------------------------------
# Running them
# ------------------------------------------------------------------------------------------------

#: Every design rule, in the order they are reported.
RULES: tuple[Rule, ...] = (
    layer_shapes_chain,
    layer_names_unique,
    integer_parameters,
    weight_mantissa_8bit,
    weight_mixed_sign_even,
    weight_exp_range,
    decay_12bit,
    vth_17bit,
    bias_mantissa_13bit,
    bias_exponent_3bit,
    graded_payload_bits,
    fan_in_fits_core,
    core_capacity,
    cores_per_chip,
    synapses_per_chip,
    dense_accumulator_32bit,
    dense_output_16bit,
    u_input_no_wrap,
    u_worst_case_no_wrap,
)


def check(network: FixedPointNetwork, target: Loihi2Target = LOIHI2,
          rules: Sequence[Rule] = RULES) -> list[Violation]:
    """Run every rule; return all violations (errors and warnings), in rule order."""
    return [v for rule in rules for v in rule(network, target)]


def errors(violations: Sequence[Violation]) -> list[Violation]:
    return [v for v in violations if v.severity == ERROR]


def format_violations(violations: Sequence[Violation]) -> str:
    return "\n".join(f"  - [{v.severity}] {v.message}" for v in violations)


def ensure_deployable(network: FixedPointNetwork, target: Loihi2Target = LOIHI2) -> list[Violation]:
    """Raise :class:`DesignRuleError` listing every error; log warnings; return the warnings."""
    found = check(network, target)
    errs = errors(found)
    warns = [v for v in found if v.severity != ERROR]
    for w in warns:
        logger.warning("%s", w.message)
    if errs:
        raise DesignRuleError(
            f"the network is not deployable on Loihi 2: {len(errs)} design rule violation(s)"
            + (f" and {len(warns)} warning(s)" if warns else "")
            + ":\n" + format_violations(errs + warns))
    return warns
