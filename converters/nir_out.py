"""The spiking branch as a NIR graph, and back: float layers or a deployment plan <-> ``nir.NIRGraph``.

Lava's LIF is current-based, so every layer is written as ``Affine -> Delay -> CubaLIF``::

    input -> affine_1 -> delay_1 -> lif_1 -> affine_2 -> delay_2 -> lif_2 -> ... -> lif_L
                                      |                                 |             |
                                  spikes_1                          spikes_2  ...  spikes_L   (outputs)

- **Equations.** With the project's one discretisation rule (``converters/conventions.py``: forward
  Euler, synaptic current first, ``dt`` from the graph's metadata) the nodes compute Lava's
  ``floating_pt`` Dense + LIF exactly: ``CubaLIF`` with ``tau_syn = dt/du``, ``w_in = 1/du``,
  ``tau_mem = dt/dv``, ``r = 1/dv``, ``v_leak = b/dv``, ``v_reset = 0`` gives
  ``u[t] = (1-du) u[t-1] + a[t]`` and ``v[t] = (1-dv) v[t-1] + u[t] + b``.
- **Delay.** Lava's Dense delivers its output one step late; the ``Delay`` node (one ``dt``) says so
  in NIR's own terms, so a NIR simulator that honours ``Delay`` reproduces Lava's timing: layer
  ``l`` answers the input of step ``t`` from step ``t + l`` on (1-based ``l``).
- **Every layer is an output** (``spikes_1`` .. ``spikes_L``): the host reads all of them (the
  threshold cue uses each layer's own firing; TSF reads the last).
- **Units of a plan's graph.** Integers written as floats in Lava's fixed-point units: v and u in
  LSBs, the Affine weight ``W << (weight_exp + 6)`` (what ``a << 6`` adds to u per input unit, the
  input being the graded payload for layer 1 and a 0/1 spike after it), ``v_threshold = vth << 6``.
  A float NIR simulator of this graph is Lava ``floating_pt`` of the same numbers: it differs from
  ``fixed_pt`` only by the truncations of the decays.
- **What NIR cannot express** goes into metadata. The graph's ``metadata`` holds ``dt`` (seconds),
  the format name and version, the plan (:meth:`DeploymentPlan.to_dict`, JSON: input bits and scale,
  threshold scales and limits, T, delays) and the **threshold-modulation input**: an integer offset
  per sample, layer and step, added to ``vth`` (``v > (vth + theta) << 6``), range per layer
  ``[-vth, 2**17 - 1 - vth]``, sent by the host every step. Each ``lif_l`` node's metadata holds
  its integer parameters (``du``, ``dv``, ``vth``, ``weight_exp``, ``bias_exp``, ``bias_mant``), so
  :func:`plan_from_nir` rebuilds exactly the same fixed-point network.

Float graphs of the float model (:func:`float_layers_to_nir`) use the same structure in float
units and carry no fixed-point metadata.

This is the ``"exact"`` profile. ``plan_to_nir(plan, profile="snntorch")`` writes the graph that
snnTorch's ``import_from_nir`` and nirtorch's ``nir_to_torch`` load (no Delay nodes, one Output,
snnTorch's CubaLIF conventions; ``converters/nir_profiles.py``); :func:`plan_from_nir` reloads the
exact plan from either.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from stft_neuro.hw_targets.errors import TargetError
from stft_neuro.hw_targets.loihi2 import constants as C
from stft_neuro.hw_targets.loihi2.network import FixedPointLayer, FixedPointNetwork
from stft_neuro.hw_targets.loihi2.plan import DEFAULT_DT_S, DeploymentPlan
from stft_neuro.hw_targets.loihi2.quantize import FloatLayer, decay_to_float
from stft_neuro.hw_targets.loihi2.weights import effective_bias, lava_effective_weights

if TYPE_CHECKING:  # nir is imported where it is used (it pulls in h5py)
    import nir

NIR_FORMAT = "stft-neuro/spiking-branch"
NIR_VERSION = 1
THETA_DOC = ("threshold modulation: one integer per sample, layer and step, sent by the host; "
             "layer l spikes where v > (vth_l + theta_l) << 6; legal range per layer "
             "[-vth_l, 2**17 - 1 - vth_l] (plan.theta_range)")


class NIRExportError(TargetError):
    """A network NIR cannot express faithfully, or a NIR file that is not an stft-neuro plan."""


def _layer_nodes(l: int, weight: np.ndarray, bias: np.ndarray, du: float, dv: float,
                 threshold: np.ndarray | float, dt: float, metadata: dict | None = None) -> dict:
    import nir

    n_out = weight.shape[0]
    name = f"lif_{l}"
    if not 0 < du <= 1:
        raise NIRExportError(f"layer {l}: current decay du = {du} outside (0, 1]: NIR's CubaLIF "
                             "needs a finite tau_syn = dt/du")
    if not 0 < dv <= 1:
        raise NIRExportError(f"layer {l}: voltage decay dv = {dv} outside (0, 1]: NIR's CubaLIF "
                             "needs a finite tau_mem = dt/dv (a non-leaky membrane has no NIR "
                             "current-based node)")
    ones = np.ones(n_out)
    return {
        f"affine_{l}": nir.Affine(weight=np.asarray(weight, np.float64), bias=np.zeros(n_out)),
        f"delay_{l}": nir.Delay(delay=np.full(n_out, dt)),
        name: nir.CubaLIF(tau_syn=ones * dt / du, tau_mem=ones * dt / dv, r=ones / dv,
                          v_leak=np.asarray(bias, np.float64) / dv,
                          v_threshold=ones * np.asarray(threshold, np.float64),
                          v_reset=np.zeros(n_out), w_in=ones / du, metadata=metadata or {}),
        f"spikes_{l}": nir.Output(output_type=np.array([n_out])),
    }


def _graph(n_in: int, layers: list[dict], metadata: dict) -> "nir.NIRGraph":
    import nir

    nodes = {"input": nir.Input(input_type=np.array([n_in]))}
    edges = []
    src = "input"
    for l, layer_nodes in enumerate(layers, start=1):
        nodes.update(layer_nodes)
        edges += [(src, f"affine_{l}"), (f"affine_{l}", f"delay_{l}"), (f"delay_{l}", f"lif_{l}"),
                  (f"lif_{l}", f"spikes_{l}")]
        src = f"lif_{l}"
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata, type_check=True)


def _lif_metadata(layer: FixedPointLayer) -> dict:
    """A layer's exact integer parameters, stored on its ``lif_l`` node (read by :func:`plan_from_nir`)."""
    return {"stft_neuro.du": int(layer.du), "stft_neuro.dv": int(layer.dv),
            "stft_neuro.vth": int(layer.vth), "stft_neuro.weight_exp": int(layer.weight_exp),
            "stft_neuro.bias_exp": int(layer.bias_exp),
            "stft_neuro.bias_mant": np.asarray(layer.bias_mant, dtype=np.int64),
            "stft_neuro.num_message_bits": int(layer.num_message_bits),
            "stft_neuro.name": layer.name}


def plan_to_nir(plan: DeploymentPlan, profile: str = "exact") -> "nir.NIRGraph":
    """The plan's spiking branch in Lava's fixed-point units, with exact integer metadata.

    ``profile="exact"`` (default): the faithful graph of this module's doc. ``"snntorch"``: the
    graph snnTorch's ``import_from_nir`` and nirtorch's ``nir_to_torch`` load, without Delay nodes
    (``converters/nir_profiles.py``; raises ``NIRProfileError`` for a plan it cannot represent)."""
    if profile != "exact":
        from stft_neuro.converters.nir_profiles import plan_to_consumer_nir
        return plan_to_consumer_nir(plan, profile)
    layers = []
    for l, layer in enumerate(plan.network.layers, start=1):
        du, dv = decay_to_float(layer.du, layer.dv)
        w = lava_effective_weights(layer.weight).astype(np.float64) * 2.0 ** (layer.weight_exp + C.ACT_SHIFT)
        b = effective_bias(layer.bias_mant, layer.bias_exp).astype(np.float64)
        layers.append(_layer_nodes(l, w, b, du, dv, float(layer.vth << C.VTH_SHIFT), plan.dt,
                                   _lif_metadata(layer)))
    metadata = {"dt": float(plan.dt), "stft_neuro.format": NIR_FORMAT,
                "stft_neuro.version": NIR_VERSION, "stft_neuro.profile": "exact",
                "stft_neuro.units": "Lava fixed_pt (LSBs)",
                "stft_neuro.plan": json.dumps(plan.to_dict()), "stft_neuro.theta_input": THETA_DOC}
    return _graph(plan.n_in, layers, metadata)


def float_layers_to_nir(layers: Sequence[FloatLayer], dt: float = DEFAULT_DT_S) -> "nir.NIRGraph":
    """Float ``Dense -> LIF`` layers (Lava ``floating_pt`` units, ``quantize.FloatLayer``) as NIR."""
    nodes = [_layer_nodes(l, np.asarray(f.weight, np.float64), np.asarray(f.bias, np.float64),
                          float(f.du), float(f.dv), float(f.threshold), dt)
             for l, f in enumerate(layers, start=1)]
    metadata = {"dt": float(dt), "stft_neuro.format": NIR_FORMAT, "stft_neuro.version": NIR_VERSION,
                "stft_neuro.units": "float (Lava floating_pt)", "stft_neuro.theta_input":
                "threshold modulation in threshold units, added to v_threshold each step"}
    return _graph(int(np.asarray(layers[0].weight).shape[1]), nodes, metadata)


def write_nir(graph: "nir.NIRGraph", path: str | Path) -> Path:
    """``nir.write`` to a temporary name in the same folder, then rename: never a partial file."""
    import nir

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        nir.write(str(tmp), graph)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _text(v) -> str:
    v = v[()] if hasattr(v, "shape") and getattr(v, "shape", None) == () and not isinstance(v, (str, bytes)) else v
    return v.decode() if isinstance(v, bytes) else str(v)


def plan_from_nir(graph: "nir.NIRGraph", where: str = "NIR graph") -> DeploymentPlan:
    """Rebuild the exact :class:`DeploymentPlan` from a graph written by :func:`plan_to_nir`
    (either profile: the integer metadata and the plan are the same in both).

    Raises :class:`NIRExportError` (one line) for a graph without stft-neuro fixed-point metadata,
    of another format version, or whose float parameters disagree with its integer metadata."""
    meta = dict(graph.metadata or {})
    fmt = _text(meta.get("stft_neuro.format", ""))
    if fmt != NIR_FORMAT or "stft_neuro.plan" not in meta:
        raise NIRExportError(f"{where} has no stft-neuro fixed-point metadata (not written by "
                             "stft-neuro export): quantize it with --fixed-point instead")
    version = int(np.asarray(meta.get("stft_neuro.version", -1)))
    if version != NIR_VERSION:
        raise NIRExportError(f"{where}: stft-neuro NIR version {version}; this stft-neuro reads "
                             f"version {NIR_VERSION}")
    profile = _text(meta.get("stft_neuro.profile", "exact"))
    if profile not in ("exact", "snntorch"):
        raise NIRExportError(f"{where}: unknown stft-neuro NIR profile {profile!r}")
    head = json.loads(_text(meta["stft_neuro.plan"]))
    # The time constants are in the graph's dt: the plan's (exact) or snnTorch's 1e-4 s (snntorch).
    dt = float(np.asarray(meta.get("dt", head["dt"])))
    synapse = "affine" if profile == "exact" else "linear"
    layers = []
    for l, spec in enumerate(head["layers"], start=1):
        try:
            affine, lif = graph.nodes[f"{synapse}_{l}"], graph.nodes[f"lif_{l}"]
        except KeyError as exc:
            raise NIRExportError(f"{where}: node {exc.args[0]!r} is missing") from None
        m = dict(lif.metadata or {})
        try:
            exp = int(np.asarray(m["stft_neuro.weight_exp"]))
            bias_mant = np.asarray(m["stft_neuro.bias_mant"]).astype(np.int64)
            du, dv, vth = (int(np.asarray(m[f"stft_neuro.{k}"])) for k in ("du", "dv", "vth"))
            bias_exp = int(np.asarray(m["stft_neuro.bias_exp"]))
        except KeyError as exc:
            raise NIRExportError(f"{where}: node lif_{l} lacks metadata {exc.args[0]!r}") from None
        w = np.asarray(affine.weight, dtype=np.float64) / 2.0 ** (exp + C.ACT_SHIFT)
        if not np.array_equal(w, np.round(w)):
            raise NIRExportError(f"{where}: {synapse}_{l} weights are not integers << (weight_exp + 6): "
                                 "the file's float parameters disagree with its fixed-point metadata")
        f_du, f_dv = decay_to_float(du, dv)
        b_eff = effective_bias(bias_mant, bias_exp).astype(np.float64)
        checks = {"v_threshold": (lif.v_threshold, float(vth << C.VTH_SHIFT)),
                  "tau_syn": (lif.tau_syn, dt / f_du),
                  "tau_mem": (lif.tau_mem, dt / f_dv),
                  "v_leak": (lif.v_leak, b_eff / f_dv if profile == "exact" else np.zeros_like(b_eff))}
        if profile == "snntorch":  # the bias rides on the synaptic current (nir_profiles: "Biases")
            got_bias = getattr(affine, "bias", None)
            checks[f"{synapse}_{l}.bias"] = (np.zeros_like(b_eff) if got_bias is None else got_bias, b_eff * f_du)
        for name, (got, want) in checks.items():
            if not np.allclose(np.asarray(got, np.float64), want, rtol=1e-9, atol=0):
                field = name if "." in name else f"lif_{l}.{name}"
                raise NIRExportError(f"{where}: {field} disagrees with its fixed-point "
                                     "metadata (was the file edited?)")
        layers.append(FixedPointLayer(
            name=str(spec["name"]), weight=np.round(w).astype(np.int64), weight_exp=exp, du=du, dv=dv,
            vth=vth, bias_mant=bias_mant, bias_exp=bias_exp,
            num_message_bits=int(spec["num_message_bits"])))
    try:
        return DeploymentPlan(network=FixedPointNetwork(tuple(layers)),
                              input_scale=float(head["input_scale"]),
                              threshold_scales=tuple(head["threshold_scales"]),
                              num_steps=int(head["num_steps"]), dt=float(head["dt"]),
                              payload_dead_zone=int(head.get("payload_dead_zone", 0)))
    except TargetError as exc:
        raise NIRExportError(f"{where}: {exc}") from None
