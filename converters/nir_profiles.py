"""NIR export profiles: the faithful graph (``"exact"``) or one that snnTorch and nirtorch load.

``plan_to_nir(plan)`` (``converters/nir_out.py``) writes the ``"exact"`` profile: per layer
``Affine -> Delay -> CubaLIF``, one ``Output`` per layer, exact integer metadata. No public consumer
loads it (read from their source, snnTorch 1.0.0 and nirtorch 2.6 as installed here):

- ``nirtorch.nir_to_torch(graph, node_map)`` maps a node type only if ``node_map`` or its
  ``DEFAULT_MAP`` (Input, Output, Affine, Linear, Conv1d/2d, Flatten, AvgPool2d, SumPool2d) has
  it: ``nir.Delay`` raises ``ValueError: Unknown node type``. A graph with more than one ``Output``
  node never returns (its work queue re-enqueues the second ``Output`` forever; measured). Its
  default ``Affine`` map assigns ``module.weight.bias`` instead of ``module.bias``, so an Affine's
  bias is silently left at torch's random initialisation.
- ``snntorch.import_nir.import_from_nir(graph)`` is ``nir_to_torch`` with snnTorch's node map
  (Affine, Linear, Conv2d, Flatten, AvgPool2d, IF, LIF, CubaLIF). For ``CubaLIF`` it hard-codes
  ``dt = 1e-4`` s and asserts ``np.allclose(v_leak, 0)`` and ``np.allclose(r, tau_mem / dt)``;
  it takes ``alpha = 1 - dt/tau_syn``, ``beta = 1 - dt/tau_mem``, divides ``v_threshold`` by
  ``w_in dt/tau_syn`` unless that is ~1, and asserts the result is one value for the whole node
  (``snn.Synaptic`` has one threshold). It builds ``snn.Synaptic(reset_mechanism="zero",
  reset_delay=False, init_hidden=True)`` and ignores ``v_reset``::

      syn[t] = alpha syn[t-1] + x[t] ;  mem[t] = beta mem[t-1] + syn[t] ;  spk = mem > thr ; mem[spk] = 0

``plan_to_consumer_nir(plan, "snntorch")`` writes what both load, per layer
``linear_l -> lif_l`` and one ``output`` (the last layer's spikes):

- ``nir.Linear`` (no bias, so nirtorch's Affine bug cannot bite) with the exact profile's weights
  ``W << (weight_exp + 6)`` for a layer without biases; ``nir.Affine`` with bias ``b * du`` for a
  layer with biases (node name ``linear_l`` either way; see "Biases" below); ``CubaLIF`` with ``tau_syn = 1e-4/du``, ``w_in = 1/du``,
  ``tau_mem = 1e-4/dv``, ``r = 1/dv = tau_mem/1e-4``, ``v_leak = 0``, ``v_threshold = vth << 6``,
  ``v_reset = 0``: in snnTorch's ``dt`` the same per-step decays as the plan (``dt`` in the
  metadata is 1e-4 s; the plan's own ``dt`` stays in the plan JSON).
- **Dense delay convention.** Lava's Dense delivers one step late; NIR's ``Delay`` node cannot be
  loaded, so it is left out and the metadata says so (``stft_neuro.dense_delay``,
  ``stft_neuro.lag_steps``): fed the same inputs from step 0, layer ``l`` (1-based) of this graph
  spikes at step ``t`` where the deployed layer spikes at step ``t + l``. That holds exactly (in
  float) because the biases are zero and every state starts at zero: a layer that has received no
  input yet stays at rest, so the delayed network is the undelayed one shifted in time.
- **No threshold modulation.** NIR has no input port for it; the consumers' thresholds are the
  static ``vth << 6`` (``stft_neuro.theta_input`` says so). A plan trained with dynamic thresholds
  spikes differently there (docs/export.md: measured agreement).
- **Float, not fixed point.** The consumers compute in float32 what Lava's ``floating_pt`` computes;
  Lava ``fixed_pt`` (and the reference simulator) truncate the decays and the weight exponent.
  All parameters are integers below 2**24 in these units, so float32 holds them exactly.
- **Biases: a documented approximation** (issue 18). The deployed neuron adds its bias ``b`` to
  ``v`` every step; snnTorch's importer asserts ``v_leak = 0``, so the only place left is the
  synaptic current: an ``Affine`` bias ``c`` enters ``syn`` every step and reaches ``mem`` as
  ``c (1 - alpha**(t+1)) / (1 - alpha)``. With ``c = b * du`` (``du = 1 - alpha``) that is exactly
  ``b`` in the steady state and less in the first steps (``1 - alpha**(t+1)`` of it: 25 %, 44 %,
  58 %, ... at ``du = 0.25``). No exact form exists: constant ``b`` per step through a filter with
  ``alpha > 0`` needs a bias that changes with time, and snnTorch has no ``v_leak``. Second, with
  the Dense delays dropped, the deployed layer ``l`` has integrated its bias for ``l`` steps
  before its first input arrives and the profile's layer has not. Bias-free layers stay exact
  (``Linear``). Measured on trained runs (docs/export.md, "For snnTorch and nirtorch";
  ``tests/test_nir_consumers.py``): agreement with Loihi fixed point at lag ``l`` within about
  one point of the bias-free profile's in every layer. The metadata (``stft_neuro.bias_form``)
  and the manifest say so. A consumer that wants the exact network must train with ``--set
  spiking.bias=false``. nirtorch users must map ``nir.Affine`` themselves (its default map leaves
  the bias at torch's random initialisation; e.g. ``snntorch.import_nir._nir_to_snntorch_module``).
- **Refused** (:class:`NIRProfileError`, one line): decays outside ``(0, 1]``, as in the exact
  profile.
- **Reload.** Every ``lif_l`` keeps the exact profile's integer metadata and the graph keeps the
  plan, so :func:`converters.nir_out.plan_from_nir` rebuilds exactly the same plan from either
  profile (the delays are the plan's, not the graph's).
- **Hidden layers.** nirtorch returns one output; a consumer reads layer ``l``'s spikes with a
  forward hook on the ``lif_l`` module of the loaded ``GraphModule``.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from stft_neuro.converters.nir_out import (NIR_FORMAT, NIR_VERSION, NIRExportError,
                                           _lif_metadata)
from stft_neuro.hw_targets.loihi2 import constants as C
from stft_neuro.hw_targets.loihi2.plan import DeploymentPlan
from stft_neuro.hw_targets.loihi2.quantize import decay_to_float
from stft_neuro.hw_targets.loihi2.weights import effective_bias, lava_effective_weights

if TYPE_CHECKING:
    import nir

PROFILES = ("exact", "snntorch")
"""``exact``: the faithful graph (Delay nodes, one Output per layer); ``snntorch``: loadable by
snnTorch's ``import_from_nir`` and nirtorch's ``nir_to_torch`` (module doc)."""

SNNTORCH_DT_S = 1e-4
"""Seconds per step that ``snntorch/import_nir.py`` hard-codes for LIF and CubaLIF."""

DENSE_DELAY_DOC = ("not in this graph: the deployed network's Dense delays (plan.delays, one step "
                   "per layer in Lava) are left out because snnTorch and nirtorch cannot load "
                   "nir.Delay. Fed the same inputs from step 0, layer l (1-based) of this graph "
                   "spikes at step t where the deployed layer l spikes at step t + lag_steps[l-1] "
                   "(exact in float for layers without biases: every state starts at zero; "
                   "approximate for layers with biases, see stft_neuro.bias_form)")
BIAS_DOC = ("layers with biases: nir.Affine bias = bias * du on the synaptic current (snnTorch needs "
            "v_leak = 0), which equals the deployed per-step bias on v in the steady state and "
            "(1 - (1 - du)**(t+1)) of it at step t; and the deployed layer l has integrated its bias "
            "for lag_steps[l-1] steps before its first input, this graph's has not: an approximation "
            "(train with spiking.bias=false for an exact graph); layers without biases: nir.Linear, exact")
BIAS_FREE_DOC = "no biases: every synapse is a nir.Linear; the graph is exact up to the documented lag"
THETA_DOC = ("absent: NIR has no threshold-modulation port; thresholds are the static vth << 6, "
             "so a plan run with dynamic thresholds spikes differently here")
OUTPUT_DOC = ("one Output, the last layer's spikes (nirtorch 2.6 does not return from a graph with "
              "several Output nodes); read layer l with a forward hook on the module lif_l")


class NIRProfileError(NIRExportError):
    """A plan the chosen consumer profile cannot represent faithfully (one line, names the layer)."""


def lag_steps(plan: DeploymentPlan) -> tuple[int, ...]:
    """Per layer (1-based order), the steps by which the deployed layer lags the snntorch profile's
    layer: the sum of the Dense delays up to and including it (``(1, 2, ..., L)`` in Lava)."""
    return tuple(int(x) for x in np.cumsum(plan.delays))


def has_bias(plan: DeploymentPlan) -> bool:
    """True if any layer of ``plan`` has a nonzero bias (the snntorch profile is then approximate)."""
    return any(effective_bias(layer.bias_mant, layer.bias_exp).any() for layer in plan.network.layers)


def snntorch_problems(plan: DeploymentPlan) -> list[str]:
    """Every reason the snntorch profile would misrepresent ``plan`` (empty: it can be written)."""
    problems = []
    for layer in plan.network.layers:
        du, dv = decay_to_float(layer.du, layer.dv)
        if not (0 < du <= 1 and 0 < dv <= 1):
            problems.append(f"layer {layer.name} has decays du = {du}, dv = {dv} outside (0, 1] "
                            "(NIR's CubaLIF needs finite time constants)")
    return problems


def plan_to_snntorch_nir(plan: DeploymentPlan) -> "nir.NIRGraph":
    """The plan as ``input -> linear_1 -> lif_1 -> ... -> lif_L -> output`` in snnTorch's
    conventions (module doc), Lava fixed-point units (LSBs) as floats.

    Raises :class:`NIRProfileError` (one line, every problem) for a plan it cannot represent."""
    import nir

    problems = snntorch_problems(plan)
    if problems:
        raise NIRProfileError("NIR profile snntorch cannot represent this plan faithfully: "
                              + "; ".join(problems) + " (the exact profile can)")
    dt = SNNTORCH_DT_S
    nodes: dict = {"input": nir.Input(input_type=np.array([plan.n_in]))}
    edges: list[tuple[str, str]] = []
    src = "input"
    for l, layer in enumerate(plan.network.layers, start=1):
        du, dv = decay_to_float(layer.du, layer.dv)
        n = layer.n_out
        ones = np.ones(n)
        weight = (lava_effective_weights(layer.weight).astype(np.float64)
                  * 2.0 ** (layer.weight_exp + C.ACT_SHIFT))  # (n_out, n_in), LSBs per input unit
        bias = effective_bias(layer.bias_mant, layer.bias_exp).astype(np.float64)
        if bias.any():  # the documented approximation (module doc, "Biases")
            nodes[f"linear_{l}"] = nir.Affine(weight=weight, bias=bias * du)
        else:
            nodes[f"linear_{l}"] = nir.Linear(weight=weight)
        nodes[f"lif_{l}"] = nir.CubaLIF(
            tau_syn=ones * dt / du, tau_mem=ones * dt / dv, r=ones / dv, v_leak=np.zeros(n),
            v_threshold=ones * float(int(layer.vth) << C.VTH_SHIFT), v_reset=np.zeros(n),
            w_in=ones / du, metadata=_lif_metadata(layer))
        edges += [(src, f"linear_{l}"), (f"linear_{l}", f"lif_{l}")]
        src = f"lif_{l}"
    nodes["output"] = nir.Output(output_type=np.array([plan.sizes[-1]]))
    edges.append((src, "output"))
    metadata = {"dt": dt, "stft_neuro.format": NIR_FORMAT, "stft_neuro.version": NIR_VERSION,
                "stft_neuro.profile": "snntorch", "stft_neuro.units": "Lava fixed_pt (LSBs)",
                "stft_neuro.plan": json.dumps(plan.to_dict()),
                "stft_neuro.dense_delay": DENSE_DELAY_DOC,
                "stft_neuro.lag_steps": np.asarray(lag_steps(plan), dtype=np.int64),
                "stft_neuro.theta_input": THETA_DOC, "stft_neuro.outputs": OUTPUT_DOC,
                "stft_neuro.bias_form": BIAS_DOC if has_bias(plan) else BIAS_FREE_DOC}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata, type_check=True)


def profile_description(plan: DeploymentPlan, profile: str) -> dict:
    """What a bundle's manifest says about a NIR file of ``profile`` (JSON-ready)."""
    if profile == "exact":
        return {"profile": "exact", "dense_delays": "nir.Delay nodes (one dt each)",
                "outputs": "one Output per layer (spikes_1 .. spikes_L)",
                "threshold_modulation": "metadata stft_neuro.theta_input (the host sends it)"}
    return {"profile": "snntorch", "dt_s": SNNTORCH_DT_S,
            "loads_in": ["snntorch.import_nir.import_from_nir (snnTorch 1.0)",
                         "nirtorch.nir_to_torch (nirtorch 2.6; the caller maps CubaLIF)"],
            "dense_delays": DENSE_DELAY_DOC, "lag_steps": list(lag_steps(plan)),
            "threshold_modulation": THETA_DOC, "outputs": OUTPUT_DOC,
            "exact": not has_bias(plan), "bias_form": BIAS_DOC if has_bias(plan) else BIAS_FREE_DOC,
            "reload": "converters.nir_out.plan_from_nir rebuilds the exact plan"}


def plan_to_consumer_nir(plan: DeploymentPlan, profile: str) -> "nir.NIRGraph":
    """``plan`` as the NIR graph of ``profile`` (one of :data:`PROFILES`)."""
    if profile == "exact":
        from stft_neuro.converters.nir_out import plan_to_nir
        return plan_to_nir(plan)
    if profile == "snntorch":
        return plan_to_snntorch_nir(plan)
    raise NIRProfileError(f"unknown NIR profile {profile!r} (one of {', '.join(PROFILES)})")
