"""Energy *estimates* from counts: a Loihi per-operation model, a 45 nm host model, an all-on-host ANN.

Nothing here is measured: every figure is counts x a published per-operation energy, and is
labelled an estimate in every output. Constants (picojoules), each with its source:

- Loihi (Davies et al., "Loihi: a neuromorphic manycore processor with on-chip learning", IEEE
  Micro 38(1):82-99, 2018, Table 2, 0.75 V): 23.6 pJ per synaptic spike operation, 81 pJ per active
  and 52 pJ per inactive neuron update, 1.7 pJ per within-tile spike, 3.0 pJ per east-west and
  4.0 pJ per north-south tile hop. **No per-operation energy table is published for Loihi 2**; the
  Loihi figures are used as the closest published model.
- Host, 45 nm CMOS (Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC
  2014): fp32 multiply-accumulate 4.6 pJ (multiply 3.7 + add 0.9), fp32 add 0.9 pJ.
- Assumptions (not published; overridable): tile hops per spike message (placement is not
  modelled; one east-west hop and no north-south hop by default).

Models (per sample):

- chip = synaptic events x E_synop + active updates x E_active + inactive updates x E_inactive
  + spike messages x (E_within_tile + hops_ew x E_hop_ew + hops_ns x E_hop_ns), where a spike
  message is one spike sent to one destination core.
- host = host MACs (``FlopCounterMode`` FLOPs / 2) x E_mac.
- all on the host (equivalent ANN): the spiking branch's weight layers as dense fp32 layers run
  every step, Dense MACs x E_mac, plus the same host compute.
- the SNN papers' convention, for comparison: E_SNN = synaptic events x E_add (an AC on 45 nm)
  against E_ANN = Dense MACs x E_mac.

Host <-> chip transfers are counted, not priced (no published per-message energy).

Overrides: a TOML file with ``[constants]`` (or top-level) keys among :data:`CONSTANTS`, non-negative
numbers; anything else is refused with one line.
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from stft_neuro.hw_targets.loihi2.energy import CHIP_CONSTANTS, DAVIES  # noqa: F401 (re-exported)
from stft_neuro.report.counts import HostCompute, ReportInputError, RunCounts

HOROWITZ = "Horowitz, ISSCC 2014, 45 nm CMOS, fp32"


@dataclass(frozen=True)
class Constant:
    value: float
    unit: str
    source: str


_LOIHI = {k: Constant(*v) for k, v in CHIP_CONSTANTS.items()}
#: Loihi's constants come from ``hw_targets/loihi2/energy.py`` (one table, also used by the
#: differentiable training-time estimate); the host's are here.
CONSTANTS: dict[str, Constant] = {
    **{k: v for k, v in _LOIHI.items() if k.startswith("loihi_")},
    "host_fp32_mac_pj": Constant(4.6, "pJ per fp32 multiply-accumulate (3.7 mult + 0.9 add)", HOROWITZ),
    "host_fp32_add_pj": Constant(0.9, "pJ per fp32 add", HOROWITZ),
    **{k: v for k, v in _LOIHI.items() if not k.startswith("loihi_")},
}

NOTES = (
    "All energies are estimates: counts of what ran times published per-operation energies; "
    "nothing is measured.",
    "No per-operation energy table is published for Loihi 2; the chip model uses Loihi's "
    "(Davies et al. 2018, Table 2).",
    "Host compute counts matrix products only (torch FlopCounterMode); elementwise operations "
    "are not priced.",
    "Host <-> chip transfers are counted but not priced (no published per-message energy).",
)


def load_constants(path: str | Path | None = None) -> dict[str, Constant]:
    """The default constants, overridden by a TOML file. One-line :class:`ReportInputError` for a
    missing or malformed file, an unknown key, a non-number, or a negative or non-finite value."""
    consts = dict(CONSTANTS)
    if path is None:
        return consts
    p = Path(path)
    if not p.is_file():
        raise ReportInputError(f"{p}: no such constants file")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ReportInputError(f"{p}: not valid TOML ({str(exc).splitlines()[0]})") from None
    if "constants" in data:
        extra = sorted(set(data) - {"constants"})
        if extra:
            raise ReportInputError(f"{p}: unknown key(s) {', '.join(extra)} beside [constants]")
        table = data["constants"]
        if not isinstance(table, dict):
            raise ReportInputError(f"{p}: [constants] must be a table")
    else:
        table = data
    for key, value in table.items():
        if key not in CONSTANTS:
            raise ReportInputError(f"{p}: unknown constant {key!r} (known: {', '.join(CONSTANTS)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ReportInputError(f"{p}: constant {key!r} must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise ReportInputError(f"{p}: constant {key!r} must be a finite number >= 0, got {value!r}")
        consts[key] = Constant(float(value), CONSTANTS[key].unit, f"override from {p}")
    return consts


def layer_energy(layer: Any, consts: Mapping[str, Constant], samples: int) -> dict[str, float]:
    """Per-sample chip energy (pJ) of one layer by part; zero parts for what it does not have."""
    c = {k: v.value for k, v in consts.items()}
    N = max(1, samples)
    syn = float(layer.synaptic_events.sum()) * c["loihi_synop_pj"] if layer.has_synapses else 0.0
    neuron = 0.0
    spikes = 0.0
    if layer.has_neurons:
        neuron = (float(layer.active_updates.sum()) * c["loihi_neuron_update_active_pj"]
                  + float(layer.inactive_updates.sum()) * c["loihi_neuron_update_inactive_pj"])
        per_msg = (c["loihi_spike_within_tile_pj"] + c["hops_ew_per_spike_message"] * c["loihi_hop_ew_pj"]
                   + c["hops_ns_per_spike_message"] * c["loihi_hop_ns_pj"])
        if layer.spiking:
            spikes = float(layer.spikes.sum()) * layer.dest_cores * per_msg
    return {"synaptic": syn / N, "neuron_updates": neuron / N, "spike_messages": spikes / N,
            "total": (syn + neuron + spikes) / N}


def estimate(counts: RunCounts, host: Mapping[str, HostCompute] | None,
             consts: Mapping[str, Constant] | None = None) -> dict[str, Any]:
    """Per-sample energy estimates (pJ): per layer, chip, host, hybrid, all-on-host ANN, and the
    SNN papers' 45 nm convention; with every constant, its unit and source."""
    consts = consts or CONSTANTS
    c = {k: v.value for k, v in consts.items()}
    N = max(1, counts.samples)
    layers = {name: layer_energy(l, consts, counts.samples) for name, l in counts.layers.items()}
    chip = sum(e["total"] for e in layers.values())
    host_macs = sum(h.macs for h in host.values()) if host else 0
    host_pj = host_macs * c["host_fp32_mac_pj"]
    dense = sum(float(l.dense_ops.sum()) for l in counts.layers.values() if l.has_synapses) / N
    events = counts.total("synaptic_events") / N
    return {
        "estimate": True,
        "unit": "pJ per sample",
        "chip": chip,
        "host": host_pj if host else None,
        "hybrid_total": chip + host_pj,
        "host_available": bool(host),
        "ann_all_on_host": {"spiking_branch_as_ann_macs": dense,
                            "spiking_branch_as_ann": dense * c["host_fp32_mac_pj"],
                            "total_with_host": dense * c["host_fp32_mac_pj"] + host_pj,
                            "chip_over_spiking_branch_as_ann":
                                chip / (dense * c["host_fp32_mac_pj"]) if dense > 0 and c["host_fp32_mac_pj"] > 0
                                else None},
        "snn_papers_convention_45nm": {"E_SNN": events * c["host_fp32_add_pj"],
                                       "E_ANN": dense * c["host_fp32_mac_pj"],
                                       "formula": "E_SNN = synaptic events x fp32 add; "
                                                  "E_ANN = dense MACs x fp32 MAC"},
        "layers": layers,
        "constants": {k: {"value": v.value, "unit": v.unit, "source": v.source}
                      for k, v in consts.items()},
        "notes": list(NOTES),
    }
