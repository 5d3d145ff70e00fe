"""NeuroBench 2.3's metrics, by its definitions, from counts of what actually ran.

Definitions as in NeuroBench 2.3's source (``neurobench/metrics/static/*.py``,
``neurobench/metrics/workload/*.py``, ``neurobench/metrics/utils/layers/*.py``):

- ``Footprint``: bytes of the parameters and buffers that define the network.
- ``ParameterCount``: number of parameters (weights and biases of the connection layers; neuron
  constants are buffers, as in snnTorch).
- ``ConnectionSparsity``: zero weights / all weights of the connection (weight) layers. NeuroBench
  rounds to 4 decimals; the value here is not rounded.
- ``ActivationSparsity``: 1 - nonzero / all outputs of the spiking layers, over every step and
  sample (the input is not counted).
- ``SynapticOperations``: per connection-layer call, input and weights binarised, bias ignored:
  ops = active inputs x nonzero fan-out; ``Effective_ACs`` where the input lies in {-1, 0, 1},
  ``Effective_MACs`` otherwise; ``Dense`` = every weight once per call. Divided by the number of
  samples (not by the steps).
- ``MembraneUpdates``: all neurons at step 0, then the neurons whose stored post-reset membrane
  changed, divided by the number of samples.

What is counted is what ran (``counts.py``), not NeuroBench's hooks: NeuroBench counts a layer
once per *call*, so a layer that snnTorch calls twice per step is counted twice by NeuroBench
(snnTorch 1.0's ``RLeaky`` with ``reset_mechanism="zero"`` evaluates its recurrent ``Linear`` twice
per step, ``_base_zero`` -> ``_base_state_function`` twice); here each connection is counted once per
step, the number of operations a chip performs. NeuroBench also classifies AC vs MAC per call
(whole batch); here per sample and step (identical unless a batch mixes binary and graded inputs
of one layer at one step).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from stft_neuro.report.counts import RunCounts

#: Bytes per stored value of a plan (Loihi widths, constants.py): weights are 8-bit mantissas,
#: bias mantissas 13-bit (2 bytes), per-layer scalars (weight_exp, du, dv, vth, bias_exp,
#: num_message_bits) held as int32.
PLAN_WEIGHT_BYTES = 1
PLAN_BIAS_BYTES = 2
PLAN_SCALAR_BYTES = 4
PLAN_SCALARS_PER_LAYER = 6
#: A NIR graph's parameters held as float32 (what snnTorch and the torch simulator hold).
GRAPH_VALUE_BYTES = 4

KEYS = ("Footprint", "ParameterCount", "ConnectionSparsity", "ActivationSparsity",
        "SynapticOperations", "MembraneUpdates")


def plan_static(plan: Any) -> dict[str, Any]:
    """``Footprint``, ``ParameterCount``, ``ConnectionSparsity`` of a deployment plan (effective
    weights, as the chip holds them)."""
    from stft_neuro.hw_targets.loihi2.weights import lava_effective_weights
    weights = [lava_effective_weights(layer.weight) for layer in plan.network.layers]
    n_w = sum(int(w.size) for w in weights)
    n_b = sum(int(np.asarray(layer.bias_mant).size) for layer in plan.network.layers)
    zeros = sum(int((w == 0).sum()) for w in weights)
    return {"Footprint": n_w * PLAN_WEIGHT_BYTES + n_b * PLAN_BIAS_BYTES
            + plan.num_layers * PLAN_SCALARS_PER_LAYER * PLAN_SCALAR_BYTES,
            "ParameterCount": n_w + n_b,
            "ConnectionSparsity": zeros / n_w if n_w else 0.0}


def fixed_graph_static(graph: Any) -> dict[str, Any]:
    """``Footprint``, ``ParameterCount``, ``ConnectionSparsity`` of a fixed-point graph
    (``FixedPointGraph``: the Lava-effective weights of every projection, a bias mantissa per
    neuron, and per population ``du, dv, vth, bias_exp`` and per projection ``weight_exp,
    num_message_bits`` as scalars), in the plan's byte widths."""
    n_w = sum(int(np.asarray(p.weight).size) for p in graph.projections)
    zeros = sum(int((np.asarray(p.weight) == 0).sum()) for p in graph.projections)
    n_b = sum(int(np.asarray(p.bias_mant).size) for p in graph.populations)
    scalars = 4 * len(graph.populations) + 2 * len(graph.projections)
    return {"Footprint": n_w * PLAN_WEIGHT_BYTES + n_b * PLAN_BIAS_BYTES + scalars * PLAN_SCALAR_BYTES,
            "ParameterCount": n_w + n_b,
            "ConnectionSparsity": zeros / n_w if n_w else 0.0}


def graph_static(graph: Any) -> dict[str, Any]:
    """``Footprint`` (every numeric parameter of every node, float32), ``ParameterCount``
    (weights and biases of Affine/Linear/Conv nodes) and ``ConnectionSparsity`` of a NIR graph."""
    from stft_neuro.report.counts import WEIGHT_KINDS
    values = params = n_w = zeros = 0
    for node in graph.nodes.values():
        for key, val in node.params.items():
            if isinstance(val, np.ndarray) and val.dtype.kind in "fiu":
                values += int(val.size)
        if node.kind in WEIGHT_KINDS:
            w = np.asarray(node.params["weight"])
            n_w += int(w.size)
            zeros += int((w == 0).sum())
            params += int(w.size) + (int(np.asarray(node.params["bias"]).size) if "bias" in node.params else 0)
    return {"Footprint": values * GRAPH_VALUE_BYTES, "ParameterCount": params,
            "ConnectionSparsity": zeros / n_w if n_w else 0.0}


def workload(counts: RunCounts) -> dict[str, Any]:
    """``ActivationSparsity``, ``SynapticOperations``, ``MembraneUpdates`` per sample."""
    N = max(1, counts.samples)
    spiking = [l for l in counts.layers.values() if l.spiking]
    outputs = sum(l.neurons for l in spiking) * counts.steps * counts.samples
    fired = sum(int(l.spikes.sum()) for l in spiking)
    syn = [l for l in counts.layers.values() if l.has_synapses]
    return {
        "ActivationSparsity": (outputs - fired) / outputs if outputs else 0.0,
        "SynapticOperations": {
            "Effective_MACs": sum(int(l.macs.sum()) for l in syn) / N,
            "Effective_ACs": sum(int(l.acs.sum()) for l in syn) / N,
            "Dense": sum(int(l.dense_ops.sum()) for l in syn) / N,
        },
        "MembraneUpdates": sum(l.nb_membrane_updates for l in counts.layers.values()
                               if l.has_neurons) / N,
    }


def metrics(static: dict[str, Any], counts: RunCounts) -> dict[str, Any]:
    """All six keys, in NeuroBench's order."""
    both = {**static, **workload(counts)}
    return {k: both[k] for k in KEYS}
