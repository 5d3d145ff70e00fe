"""Any NIR graph that Lava can run, in Loihi 2 fixed point: per-neuron parameters, recurrence, biases.

The float lowering (``converters.nir_lava.lower``) gives neuron stages with per-neuron ``du``, ``dv``,
``vth`` and the connections between them (scaled float matrices; convolutions, pooling and Flatten
already composed into them). :func:`quantize_graph` turns that into a
:class:`~stft_neuro.hw_targets.loihi2.network.FixedPointGraph` with the project's one quantizer's
rules (``hw_targets/loihi2/quantize.py``: ``choose_layer_scales``, its weight rounding, bias and decay
conversions), per graph layer:

- one state scale ``S`` for everything that drives the layer (the host's payloads, the previous
  layers' spikes, its own spikes one step late, and its biases), chosen with the layer's largest
  ``weight_exp`` from the largest float contribution of one integer input unit and the layer's
  largest threshold; then each source's own ``weight_exp`` (Lava's is per Dense): the smallest
  that holds that source's largest weight, so that small weights beside large ones (8-bit payload
  units beside spikes or a bias) keep their mantissa bits (snnTorch ``Synaptic`` 32 -> 48 -> 10:
  411 of layer 1's 1,584 weights rounded to 0 under one exponent, 10 with one per source; the
  fixed-point run equals the float one on 99.9 % of neuron-steps instead of 94.0 %);
- per-neuron ``du = round(4096 du_f) - 1``, ``dv = round(4096 dv_f)``, ``vth = round(S vth_f / 64)``;
- **populations**: Lava's LIF holds one ``du``, ``dv``, ``vth`` per process, so the layer's neurons
  are grouped by their integer profile ``(du, dv, vth)``, one LIF process per profile, and every
  connection is split by rows (destination profile) and columns (source profile) into one Dense per
  pair; more than :data:`MAX_PROFILES_PER_LAYER` profiles in a layer is refused;
- **recurrence**: a connection from a layer to itself (snnTorch's ``RLeaky``) is a Dense from each of
  its populations to each, delivering the previous step's spikes: Lava's one-step Dense delay is
  exactly the recurrent edge's lag;
- **biases into the synaptic current** (a ``Linear`` bias before a ``CubaLIF``, or any bias behind a
  connection): a Dense from a constant source that the host switches on at the step the bias starts
  in the float graph, so the layer sees it from its reference step 0 exactly as the float run does.
  A leak ``v_leak`` is Lava's ``bias_mant`` and acts from Lava step 0 (snnTorch's graphs have none).

Three runs of the result, which must give the same spikes (tests/test_nir_fixed_graphs.py):

- :func:`run_reference`: layer by layer, every feed-forward Dense for all steps in one matmul, then
  the LIF (``arithmetic.lif_step``) and the layer's own recurrent Dense stepped over t;
- :func:`run_definition`: step by step over every population at once, in Lava's order
  (``arithmetic.lif_step`` then ``arithmetic.dense`` of every projection into next step's buffer);
- :class:`LavaFixedRunner`: Lava's ``LIF`` / ``Sparse`` bit-accurate models (``fixed_pt``), one
  network per batch (every connection block-diagonal over the batch), through ``sim/lava_runtime``.

Timing is the float runner's: the host sends payload ``t`` at Lava step ``t`` and zeros for
``max depth`` more steps; layer ``l`` at depth ``d`` computes reference step ``t`` at Lava step
``t + d``. Spikes are returned per layer ``(S, B, n_layer)``, S Lava steps, neurons in the layer's
own order.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from stft_neuro.converters.nir_lava import LavaMappingError, LavaPlan
from stft_neuro.hw_targets.loihi2 import arithmetic as A
from stft_neuro.hw_targets.loihi2 import constants as C
from stft_neuro.hw_targets.loihi2 import quantize as Q
from stft_neuro.hw_targets.loihi2.network import (GRAPH_INPUT, FixedPointGraph, PayloadRange,
                                                  Population, Projection)
from stft_neuro.hw_targets.loihi2.weights import (effective_bias, lava_effective_weights,
                                                  weight_sign_mode)

#: Most distinct ``(du, dv, vth)`` profiles one layer may need. Each profile is one Lava LIF
#: process, and every connection into or out of the layer becomes one Dense per pair of profiles:
#: a layer of P profiles after one of P' profiles costs P * P' Dense processes, each a forked OS
#: process in Lava's CPU simulator (and a separate synapse table on the chip). Measured here (2
#: cores): a 16 -> 12 -> 10 profile graph (snnTorch, random per-neuron betas) forked ~740
#: processes and had not finished building after 10 minutes; 8 x 8 profiles (~100 processes)
#: build and run in seconds. A network with per-neuron random time constants needs one profile
#: per neuron and is refused naming this limit.
MAX_PROFILES_PER_LAYER: int = 8


@dataclass(frozen=True)
class LayerQuant:
    """What quantizing one graph layer did (all counts over the layer's projections)."""

    name: str
    neurons: int
    profiles: int
    weight_exp: int
    weight_scale: float
    state_scale: float
    weights: int
    weights_saturated: int
    weights_zeroed: int
    weights_changed_by_sign_mode: int   # -256 in a one-signed Dense becomes -255 (Lava's rule)
    bias_saturated: int
    du_clipped: int                     # neurons whose 4096 du - 1 left [0, 4095] (clipped)
    dv_clipped: int
    vth_clipped: int                    # thresholds above VTH_MAX after scaling (clipped)
    vth_range: tuple[int, int]
    du_values: tuple[int, ...]
    dv_values: tuple[int, ...]
    #: the worst neuron's share of its drive (sum over its weights of |w| x the largest input the
    #: source sends) carried by nonzero float weights that rounded to 0: what the 8-bit mantissa
    #: under its source's exponent lost, for the neuron that lost most
    weights_zeroed_drive: float = 0.0
    #: signed mantissa bits that would keep every nonzero weight of the layer off 0, one exponent
    #: per source: the most over its sources of ceil(log2(max |w| / min nonzero |w|)) + 2 (0 without
    #: weights)
    weight_bits_needed: int = 0
    #: neurons whose ``v_reset`` (NIR ``v_reset != 0``) left v's 24-bit range (clipped); 0 without
    v_reset_clipped: int = 0
    #: inputs of the layer that are convolutions run on Lava's ``Conv`` process (a kernel, not an
    #: unrolled matrix): a NIR Conv2d straight from a source, both sides one population, whose
    #: weights need no negative exponent (Lava's Conv fixed-point model has none)
    lava_conv_inputs: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


# ------------------------------------------------------------------------------------------------
# quantization


def quantize_graph(lplan: LavaPlan, input_scale: float, input_bits: int,
                   threshold_headroom_bits: int = 2,
                   max_profiles: int | None = MAX_PROFILES_PER_LAYER
                   ) -> tuple[FixedPointGraph, list[LayerQuant]]:
    """``lplan`` (float, from ``nir_lava.lower``) -> the fixed-point graph and per-layer report.

    ``input_scale``: float value of one payload unit of the host input (``quantize.input_scale_for``);
    ``input_bits``: graded payload bits. Raises :class:`LavaMappingError` naming the node for what
    Lava's fixed-point processes cannot express, and for a layer of more than ``max_profiles``
    profiles (``None``: no limit here; ``stft-neuro deploy`` checks it with the other design rules
    and lists every violation at once)."""
    pmax_in = PayloadRange.for_message_bits(input_bits).abs_max
    by_dst: dict[str, list] = {}
    for c in lplan.connections:
        by_dst.setdefault(c.dst, []).append(c)
    pops_of: dict[str, list[Population]] = {}
    projections: list[Projection] = []
    bias_inputs: list[str] = []
    report: list[LayerQuant] = []
    for st in lplan.stages:
        # the layer's inputs as (source, float matrix per integer input unit, payload max)
        blocks = []
        convs: dict[str, dict] = {}  # source -> Connection.conv with its input scale ("scale")
        for c in by_dst.get(st.name, []):
            scale = input_scale if c.src == lplan.input else 1.0
            blocks.append((c.src, np.asarray(c.weight.toarray(), np.float64) * scale,
                           pmax_in if c.src == lplan.input else 1))
            if c.conv is not None:
                convs[c.src] = {**c.conv, "scale": scale}
        for start, v in sorted(st.drive.items()):
            if np.any(v != 0):
                if st.depth + start - 1 < 0:
                    raise LavaMappingError(f"node {st.name!r}: a bias into its synaptic current from "
                                           "its first step, behind a delay: Lava cannot start it "
                                           "in time")
                src = f"bias:{st.name}@{start}"
                bias_inputs.append(src)
                blocks.append((src, np.asarray(v, np.float64).reshape(-1, 1), 1))
        w_all = np.hstack([b for _, b, _ in blocks]) if blocks else np.zeros((st.n, 0))
        mode = weight_sign_mode(w_all) if w_all.size else "mixed"
        row = sum(np.abs(b).sum(axis=1) * p for _, b, p in blocks) if blocks else np.zeros(st.n)
        n_units = sum(b.shape[1] * p for _, b, p in blocks)
        v_bias = st.bias_mant if st.depth == 0 else st.leak
        headroom = threshold_headroom_bits
        if st.readout:
            # no threshold: the scale is set by the largest |v| any input can reach,
            # (max |a| + max |bias|) / (du dv) (u <= a / du, v <= (u + bias) / dv), at half range
            thr = ((float(np.max(row, initial=0.0)) + float(np.abs(v_bias).max(initial=0.0)))
                   / (float(np.min(st.du)) * float(np.min(st.dv))))
            thr, headroom = (thr if thr > 0 else 1.0), 1
        else:
            thr = float(np.max(st.vth)) if np.max(st.vth) > 0 else 1.0
        sc = Q.choose_layer_scales(float(np.abs(w_all).max(initial=0.0)), thr, 1.0, mode,
                                   headroom, float(np.max(row, initial=0.0)),
                                   int(n_units), 1)
        k, S, e = sc.weight_scale, sc.state_scale, sc.weight_exp
        lo, hi, _ = Q.weight_range(mode)
        du = np.array([Q.decay_to_int(float(a), 0.0)[0] for a in st.du], dtype=np.int64)
        dv = np.array([Q.decay_to_int(0.0, float(a))[1] for a in st.dv], dtype=np.int64)
        du_raw = np.round(np.asarray(st.du, np.float64) * C.DECAY_UNITY) - C.DS_OFFSET
        dv_raw = np.round(np.asarray(st.dv, np.float64) * C.DECAY_UNITY) - C.DM_OFFSET
        vth_raw = np.round(st.vth * S / 2 ** C.VTH_SHIFT)
        vth = np.clip(vth_raw, 0, C.VTH_MAX).astype(np.int64)
        bias_mant, bias_exp, bias_sat = Q._bias_to_int(np.asarray(v_bias, np.float64) * S)
        v_reset = v_reset_clipped = None
        if st.v_reset is not None:  # v's units: S LSBs per float unit (the threshold's are S / 64)
            raw = np.round(st.v_reset * S)
            v_reset = np.clip(raw, C.V_MIN, C.V_MAX).astype(np.int64)
            v_reset_clipped = int((raw != v_reset).sum())
        profiles, which = np.unique(np.stack([du, dv, vth], 1), axis=0, return_inverse=True)
        which = which.reshape(-1)
        if max_profiles is not None and len(profiles) > max_profiles:
            raise LavaMappingError(
                f"node {st.name!r}: its {st.n} neurons need {len(profiles)} distinct (du, dv, vth) "
                f"profiles after quantization; rule max_profiles_per_layer allows "
                f"{max_profiles} (one Lava LIF process per profile, one Dense per pair of "
                "profiles); give the layer fewer distinct time constants and thresholds")
        pops = []
        for j, (pdu, pdv, pvth) in enumerate(profiles):
            idx = np.flatnonzero(which == j)
            name = st.name if len(profiles) == 1 else f"{st.name}#{j}"
            pops.append(Population(name, st.name, idx, int(pdu), int(pdv), int(pvth),
                                   bias_mant[idx].copy(), int(bias_exp), bool(st.readout),
                                   float(S), None if v_reset is None else v_reset[idx].copy()))
        pops_of[st.name] = pops
        sat = zeroed = changed = nw = 0
        lost, drive = np.zeros(st.n), np.zeros(st.n)
        n_conv = 0
        w_cap = C.WEIGHT_MAX_MIXED if mode == "mixed" else max(abs(lo), abs(hi))
        for src, b, pmax in blocks:
            # this source's own exponent (Lava's weight_exp is per Dense): the smallest that still
            # holds its largest weight, so a source of small weights (payload units beside spikes
            # or a bias) keeps its mantissa bits; its drive stays b * S / 2^6 (k_b 2^e_b = k 2^e)
            e_b, big = e, float(np.abs(b).max(initial=0.0))
            while e_b > C.WEIGHT_EXP_MIN and big * S / 2.0 ** (C.ACT_SHIFT + e_b - 1) <= w_cap:
                e_b -= 1
            k_b = S / 2.0 ** (C.ACT_SHIFT + e_b)
            w_int = Q._round_weights(b, k_b, mode)
            # a convolution between single populations runs on Lava's Conv process, whose
            # fixed-point model has no weight_exp: the kernel carries 2^e_b, so only e_b >= 0 (a
            # negative exponent would cost the kernel bits: such a convolution stays a Sparse)
            conv = convs.get(src) if len(pops) == 1 and e_b >= 0 and (
                src == lplan.input or len(pops_of.get(src, ())) == 1) else None
            conv = _conv_projection(conv, k_b, mode, w_int) if conv is not None else None
            n_conv += conv is not None
            sat += int(((b * k_b < lo - 0.5) | (b * k_b > hi + 0.5)).sum())
            zeroed += int(((w_int == 0) & (b != 0)).sum())
            lost += np.where((w_int == 0) & (b != 0), np.abs(b), 0.0).sum(axis=1) * pmax
            drive += np.abs(b).sum(axis=1) * pmax
            nw += int(b.size)
            if src == lplan.input or src.startswith("bias:"):
                cols = [(src, np.arange(b.shape[1]))]
            else:
                cols = [(q.name, q.index) for q in pops_of[src]]
            for p in pops:
                for cname, cidx in cols:
                    blk = w_int[np.ix_(p.index, cidx)]
                    if not np.any(blk):
                        continue
                    eff = lava_effective_weights(blk)
                    changed += int(np.sum(eff != blk))
                    projections.append(Projection(
                        GRAPH_INPUT if cname == lplan.input else cname, p.name, eff, e_b,
                        input_bits if cname == lplan.input else 0, conv))
        report.append(LayerQuant(st.name, st.n, len(profiles), e, k, S, nw, sat, zeroed, changed,
                                 bias_sat, int(((du_raw < 0) | (du_raw > C.DECAY_MAX)).sum()),
                                 int(((dv_raw < 0) | (dv_raw > C.DECAY_MAX)).sum()),
                                 int((vth_raw > C.VTH_MAX).sum()), (int(vth.min()), int(vth.max())),
                                 tuple(int(a) for a in np.unique(du)),
                                 tuple(int(a) for a in np.unique(dv)),
                                 float(np.max(np.divide(lost, drive, out=np.zeros_like(lost),
                                                        where=drive > 0), initial=0.0)),
                                 max((_bits_needed(b) for _, b, _ in blocks), default=0),
                                 v_reset_clipped or 0, n_conv))
    graph = FixedPointGraph(
        n_in=int(np.prod(lplan.in_shape)), input_bits=int(input_bits),
        layers=tuple((st.name, st.n) for st in lplan.stages),
        depth=tuple((st.name, int(st.depth)) for st in lplan.stages),
        populations=tuple(p for st in lplan.stages for p in pops_of[st.name]),
        projections=tuple(projections), bias_inputs=tuple(bias_inputs))
    return graph, report


def _lava_conv(lv: Any, pr: Projection) -> Any:
    """Lava's ``Conv`` process for a convolution projection. Lava's conv (``lava/proc/conv/utils``)
    takes the image as (W, H, C) and the kernel as (C_out, W, H, C_in) and flips it (a true
    convolution, computed with torch's correlation on the flipped kernel), so NIR's
    (C_out, C_in, kh, kw) kernel is transposed and flipped here; its fixed-point model has no
    weight exponent, so the kernel carries ``2^weight_exp`` (``weight_exp >= 0`` for these)."""
    cv = pr.conv
    k = np.asarray(cv["kernel"], np.int64) * 2 ** int(pr.weight_exp)
    lava_kernel = np.ascontiguousarray(k.transpose(0, 3, 2, 1)[:, ::-1, ::-1]).astype(np.int32)
    c, h, w = cv["in_shape"]
    return lv.Conv(weight=lava_kernel, input_shape=(w, h, c), padding=tuple(cv["padding"][::-1]),
                   stride=tuple(cv["stride"][::-1]), dilation=tuple(cv["dilation"][::-1]),
                   groups=int(cv["groups"]), num_message_bits=int(pr.num_message_bits))


def unroll_conv(kernel: np.ndarray, conv: dict) -> np.ndarray:
    """The ``(n_out, n_in)`` matrix of a 2-D convolution (``Projection.conv`` geometry) with
    ``kernel`` ``(C_out, C_in/groups, kh, kw)``: torch's ``conv2d`` (cross-correlation, NIR's and
    torch's convention) applied to identity columns in float64, exact for integer kernels, 1024
    columns at a time (as ``nir_lava._linear_map``: no ``n_in x n_in`` identity in memory)."""
    n_in = int(np.prod(conv["in_shape"]))
    k = torch.from_numpy(np.asarray(kernel, np.float64))
    cols = []
    for start in range(0, n_in, 1024):
        stop = min(n_in, start + 1024)
        eye = torch.zeros((stop - start, n_in), dtype=torch.float64)
        eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        y = torch.nn.functional.conv2d(eye.reshape((stop - start,) + tuple(conv["in_shape"])), k, None,
                                       conv["stride"], conv["padding"], conv["dilation"], conv["groups"])
        cols.append(y.reshape(stop - start, -1).numpy())
    return np.concatenate(cols).T


def _conv_projection(conv: dict, k_b: float, mode: str, w_int: np.ndarray) -> dict | None:
    """``Projection.conv`` for a connection lowered from one ``Conv2d`` (``Connection.conv``),
    quantized at ``k_b``: the integer kernel (the same rounding as the unrolled ``w_int``) and the
    geometry; None when the kernel does not reproduce ``w_int`` exactly or Lava's Dense would
    change those weights (sign mode), so that both forms are the same integers. The unrolling
    repeats what the lowering computed: a deliberate check, once per deployment, that the Conv
    process and the reference run the same integers."""
    kernel = Q._round_weights(conv["weight"] * conv["channel_scale"][:, None, None, None] * conv["scale"],
                              k_b, mode)
    if not np.array_equal(unroll_conv(kernel, conv), w_int):
        return None
    if not np.array_equal(lava_effective_weights(w_int), w_int):
        return None
    return {"kernel": kernel, **{k: conv[k] for k in ("stride", "padding", "dilation", "groups",
                                                       "in_shape", "out_shape")}}


def _bits_needed(w: np.ndarray) -> int:
    """Signed mantissa bits that keep every nonzero weight of ``w`` off 0 under one exponent: the
    largest must fit ``2^(n-1) - 1`` while the smallest rounds to at least 1 (>= 0.5 before)."""
    nz = np.abs(w[w != 0])
    if nz.size == 0:
        return 0
    return int(np.ceil(np.log2(nz.max() / nz.min()))) + 2


# ------------------------------------------------------------------------------------------------
# the sources a projection reads


def bias_signal(g: FixedPointGraph, steps: int) -> np.ndarray:
    """``(steps, len(g.bias_inputs))`` 0/1: what the constant sources send at each Lava step."""
    out = np.zeros((steps, len(g.bias_inputs)))
    for j, src in enumerate(g.bias_inputs):
        out[max(0, g.bias_start(src)):, j] = 1.0
    return out


def _v_reset(p: Population) -> torch.Tensor | None:
    return None if p.v_reset is None else torch.from_numpy(np.asarray(p.v_reset, np.float64))


def _check_payloads(g: FixedPointGraph, x: torch.Tensor) -> torch.Tensor:
    """``x`` ``(S, B, n_in)`` integer payloads in the input range, as float64 (else ValueError)."""
    lo, hi = PayloadRange.for_message_bits(g.input_bits)
    x = torch.as_tensor(x).to(torch.float64)
    if x.ndim != 3 or x.shape[2] != g.n_in:
        raise ValueError(f"payloads must be (S, B, {g.n_in}), got {tuple(x.shape)}")
    if torch.any(x != torch.round(x)) or torch.any(x < lo) or torch.any(x > hi):
        raise ValueError(f"payloads must be integers in [{lo}, {hi}]")
    return x


def _assemble(g: FixedPointGraph, spikes: dict[str, torch.Tensor], S: int, B: int
              ) -> dict[str, torch.Tensor]:
    """Population spikes ``(S, B, n_p)`` -> layer spikes ``(S, B, n_layer)`` in the layer's order."""
    out = {}
    for layer, n in g.layers:
        y = torch.zeros(S, B, n, dtype=torch.float32)
        for p in g.of_layer(layer):
            y[:, :, torch.as_tensor(p.index)] = spikes[p.name].to(torch.float32)
        out[layer] = y
    return out


# ------------------------------------------------------------------------------------------------
# reference (layer by layer) and definition (step by step)


@torch.inference_mode()
def run_reference(g: FixedPointGraph, x: torch.Tensor, activity: dict | None = None
                  ) -> dict[str, torch.Tensor]:
    """Layer by layer: every Dense from an earlier layer (or the input or a constant source) for all
    S steps in one float64 matmul (exact: integers below 2**53), shifted one step; then the layer's
    populations stepped over t with ``arithmetic.lif_step``, adding the layer's own recurrent Dense
    of the previous step. ``x``: ``(S, B, n_in)`` payloads. Returns ``{layer: (S, B, n)}``.

    ``activity``, if given, receives per layer ``(S,)`` int64 counts (summed over the batch) of
    ``"active"`` updates (the step changed the neuron's ``u`` or ``v``, ``v`` after reset; the state
    before step 0 is zero) and ``"v_changed"`` (NeuroBench's membrane updates after step 0)."""
    x = _check_payloads(g, x)
    S, B = int(x.shape[0]), int(x.shape[1])
    src = {GRAPH_INPUT: x}
    for j, name in enumerate(g.bias_inputs):
        src[name] = torch.from_numpy(bias_signal(g, S)[:, None, j:j + 1]).expand(S, B, 1)
    for layer, _ in g.layers:
        pops = g.of_layer(layer)
        names = {p.name for p in pops}
        a_ff, rec = {}, {}
        for p in pops:
            a = torch.zeros(S, B, p.n, dtype=torch.float64)
            for pr in g.projections:
                if pr.dst != p.name:
                    continue
                w = torch.from_numpy(pr.weight.astype(np.float64))
                if pr.src in names:
                    rec.setdefault(p.name, []).append((pr.src, w, pr.weight_exp))
                    continue
                acc = A.shift_floor(src[pr.src] @ w.T, pr.weight_exp)      # (S, B, n) at t
                a[1:] += acc[:-1]                                          # delivered at t + 1
            a_ff[p.name] = a
        state = {p.name: (torch.zeros(B, p.n, dtype=torch.float64),) * 2 for p in pops}
        out = {p.name: torch.zeros(S, B, p.n, dtype=torch.float64) for p in pops}
        act = {k: np.zeros(S, np.int64) for k in ("active", "v_changed")}
        for t in range(S):
            for p in pops:
                a = a_ff[p.name][t].clone()
                for s_name, w, e in rec.get(p.name, []):
                    if t > 0:
                        a += A.shift_floor(out[s_name][t - 1] @ w.T, e)
                u0, v0 = state[p.name]
                b_eff = torch.from_numpy(effective_bias(p.bias_mant, p.bias_exp).astype(np.float64))
                if p.readout:  # no spikes: it sends v
                    u, v = A.li_step(a, u0, v0, du=p.du, dv=p.dv, bias=b_eff)
                    s = v
                else:
                    s, u, v = A.lif_step(a, u0, v0, du=p.du, dv=p.dv, vth=p.vth, bias=b_eff,
                                         v_reset=_v_reset(p))
                state[p.name] = (u, v)
                out[p.name][t] = s
                act["active"][t] += int(((u != u0) | (v != v0)).sum())
                act["v_changed"][t] += int((v != v0).sum())
        if activity is not None:
            activity[layer] = act
        src.update(out)
    return _assemble(g, {p.name: src[p.name] for p in g.populations}, S, B)


@torch.inference_mode()
def run_definition(g: FixedPointGraph, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Step by step, every population at once, in Lava's order: each LIF takes the buffer its
    Dense processes filled at the previous step (``arithmetic.lif_step``), then every Dense
    (``arithmetic.dense``) reads this step's spikes, payloads and constant sources into the next
    buffer. ``x``: ``(S, B, n_in)``. Returns ``{layer: (S, B, n)}``."""
    x = _check_payloads(g, x)
    S, B = int(x.shape[0]), int(x.shape[1])
    bias = torch.from_numpy(bias_signal(g, S))
    buf = {p.name: torch.zeros(B, p.n, dtype=torch.float64) for p in g.populations}
    u = dict(buf)
    v = dict(buf)
    spikes = {p.name: torch.zeros(S, B, p.n, dtype=torch.float64) for p in g.populations}
    weights = [(pr, torch.from_numpy(pr.weight.astype(np.float64))) for pr in g.projections]
    for t in range(S):
        now = {GRAPH_INPUT: x[t]}
        for j, name in enumerate(g.bias_inputs):
            now[name] = bias[t, j].expand(B, 1)
        for p in g.populations:
            b_eff = torch.from_numpy(effective_bias(p.bias_mant, p.bias_exp).astype(np.float64))
            if p.readout:  # no spikes: it sends v
                u[p.name], v[p.name] = A.li_step(buf[p.name], u[p.name], v[p.name], du=p.du,
                                                 dv=p.dv, bias=b_eff)
                s = v[p.name]
            else:
                s, u[p.name], v[p.name] = A.lif_step(buf[p.name], u[p.name], v[p.name], du=p.du,
                                                     dv=p.dv, vth=p.vth, bias=b_eff,
                                                     v_reset=_v_reset(p))
            spikes[p.name][t] = s
            now[p.name] = s
        buf = {p.name: torch.zeros(B, p.n, dtype=torch.float64) for p in g.populations}
        for pr, w in weights:
            pmax = PayloadRange.for_message_bits(pr.num_message_bits).abs_max
            buf[pr.dst] = buf[pr.dst] + A.dense(now[pr.src], w, pr.weight_exp, pmax)
    return _assemble(g, spikes, S, B)


# ------------------------------------------------------------------------------------------------
# Lava fixed_pt


@dataclass
class LavaFixedRunner:
    """Run a :class:`FixedPointGraph` on Lava's bit-accurate ``LIF`` and ``Sparse`` models.

    One network per batch: each population ``(B * n,)``, each projection ``block_diag`` over the
    batch (the constant sources shared by all samples). A graph with a convolution projection
    (``Projection.conv``) runs it on Lava's ``Conv`` process, which takes one image: one network
    per sample then (``conv_processes`` counts the Conv processes built). ``run(x)`` with ``x`` ``(S, B, n_in)``
    payloads returns ``{layer: (S, B, n)}`` for all S Lava steps. The runtime is started and stopped
    by :class:`~stft_neuro.sim.lava_runtime.LavaRuntime` (nothing left behind on any path)."""

    graph: FixedPointGraph
    timing: Any = None
    conv_processes: int = 0  # Lava Conv processes built by the last run (all samples)

    def run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        from stft_neuro.sim import lava_runtime

        g = self.graph
        x = _check_payloads(g, x)
        B = int(x.shape[1])
        self.timing, self.conv_processes = lava_runtime.LavaTiming(), 0
        if B == 1 or not any(pr.conv is not None for pr in g.projections):
            return self._run(x, self.timing)
        # Lava's Conv process takes one (W, H, C) image: one network per sample
        parts = [self._run(x[:, b:b + 1], self.timing) for b in range(B)]
        return {k: torch.cat([p[k] for p in parts], dim=1) for k in parts[0]}

    def _run(self, x: torch.Tensor, timing: Any) -> dict[str, torch.Tensor]:
        import scipy.sparse as sp

        from stft_neuro.sim import lava_runtime
        from stft_neuro.sim.lava_session import block_diagonal

        g = self.graph
        S, B = int(x.shape[0]), int(x.shape[1])
        lv = lava_runtime.load()
        t0 = time.perf_counter()
        inj = lv.Injector(shape=(B * g.n_in,))
        injectors = [inj]
        nb = len(g.bias_inputs)
        if nb:
            bias_inj = lv.Injector(shape=(nb,))
            injectors.append(bias_inj)
        def neurons(p: Population) -> Any:
            kind, extra = lv.LIF, {}
            if p.readout:
                kind = lv.LIReadout
            elif p.v_reset is not None:
                kind, extra = lv.ResetLIF, {"v_reset": np.tile(p.v_reset, B)}
            return kind(shape=(B * p.n,), du=p.du, dv=p.dv, vth=p.vth, bias_mant=np.tile(p.bias_mant, B),
                        bias_exp=p.bias_exp, name=p.name.replace("#", "_"), **extra)
        lifs = {p.name: neurons(p) for p in g.populations}
        for pr in g.projections:
            if pr.src.startswith("bias:"):
                j = g.bias_inputs.index(pr.src)
                col = np.tile(pr.weight[:, 0], B).astype(np.int32)
                w = sp.csr_matrix((col, (np.arange(col.size), np.full(col.size, j))),
                                  shape=(col.size, nb))
                port = bias_inj.out_port
            else:
                port = inj.out_port if pr.src == GRAPH_INPUT else lifs[pr.src].s_out
                if pr.conv is not None and B == 1:
                    conv = _lava_conv(lv, pr)
                    port.reshape(pr.conv["in_shape"]).transpose([2, 1, 0]).connect(conv.s_in)
                    conv.a_out.transpose([2, 1, 0]).reshape((g.population(pr.dst).n,)).connect(
                        lifs[pr.dst].a_in)
                    self.conv_processes += 1
                    continue
                w = block_diagonal(pr.weight, B)
            syn = lv.Sparse(weights=w, weight_exp=int(pr.weight_exp),
                            num_message_bits=int(pr.num_message_bits))
            port.connect(syn.s_in)
            syn.a_out.connect(lifs[pr.dst].a_in)
        exts = [lv.Extractor(shape=(B * p.n,)) for p in g.populations]
        for p, e in zip(g.populations, exts):
            lifs[p.name].s_out.connect(e.in_port)
        cfg = lv.Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map={
            lv.Injector: lv.IntInjectorModel, lv.Extractor: lv.PyLoihiExtractorModel,
            lv.LIF: lv.PyLifModelBitAcc, lv.Sparse: lv.PySparseModelBitAcc,
            lv.LIReadout: lv.PyLIReadoutModelBitAcc, lv.ResetLIF: lv.PyResetLifModelBitAcc,
            lv.Conv: lv.PyConvModelFixed})
        raw = {p.name: np.zeros((S, B * p.n), dtype=np.float32) for p in g.populations}
        xs = x.numpy().astype(np.int32)
        bias = bias_signal(g, S).astype(np.int32)
        anchor = lifs[g.populations[-1].name]
        with lava_runtime.LavaRuntime(anchor, cfg, injectors, exts, timing=timing) as rt:
            rt.run_steps(S)
            t1 = time.perf_counter()
            timing.build_s += t1 - t0
            for s in range(S):
                inputs = [xs[s].reshape(-1)] + ([bias[s]] if nb else [])
                for p, out in zip(g.populations, rt.step(inputs)):
                    raw[p.name][s] = out
            timing.steps_s += time.perf_counter() - t1
            timing.steps += S
        spikes = {n: torch.from_numpy(r.reshape(S, B, -1)) for n, r in raw.items()}
        return _assemble(g, spikes, S, B)
