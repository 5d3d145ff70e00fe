"""Deployment plan -> lava-dl netx HDF5 (lava-dl 0.6.0), and a runner that loads it with netx itself.

:func:`write_netx` writes a :class:`~stft_neuro.hw_targets.loihi2.plan.DeploymentPlan`'s
``Dense -> LIF`` stack as the file ``lava.lib.dl.netx.hdf5.Network`` loads; :func:`run_netx` loads it
with that class and runs it in Lava's ``fixed_pt`` CPU simulation. The file's network computes exactly
what the plan computes (static thresholds; the threshold-modulation port has no netx form), spike
for spike (``tests/test_netx_export.py`` runs it against ``sim.reference.ReferenceSimulator``).

The format, as netx reads it (paths below relative to ``site-packages/lava``; ``H`` =
``lib/dl/netx/hdf5.py``, ``U`` = ``lib/dl/netx/utils.py``, ``B`` = ``lib/dl/netx/blocks/process.py``,
``D`` = ``proc/dense/models.py``, ``WU`` = ``utils/weightutils.py``)::

    /layer/<i>           i = "0".."n-1", read in order (H l.570-581; U ``NetDict`` l.71-72)
        type             b"dense", fixed-length bytes, decoded as ASCII (U l.60-66)
        shape            (n_out,); netx reverses shapes (H l.272, l.597) and takes the product for a
                         dense layer (H l.346), so a 1-D shape is stored as is
        weight           (n_out, n_in) integers, read with ``astype(int)`` (U l.50, l.67-68)
        bias             (n_out,) integers -> the LIF's ``bias_mant`` (H l.153, l.451-452; B l.53-72)
        neuron/type      b"CUBA" -> Lava ``LIF`` (H l.144-150)
        neuron/iDecay    du + 1   (H l.156: ``du = iDecay - 1``; the fixed-point LIF adds 1 back)
        neuron/vDecay    dv       (H l.157)
        neuron/vThMant   vth      (H l.155)

- ``bias_exp`` is fixed to 6 (H l.158), so the file can only carry biases ``bias_mant << bias_exp``
  that are multiples of 64 with ``(bias_mant << bias_exp) >> 6`` in 13 bits.
- The weight exponent is not read from the file (``wgtExp``, ``refDelay``, ``gradedSpike`` are never
  read: H l.144-163, l.393-421). netx re-derives it with ``optimize_weight_bits`` (U l.80-158) from
  the integer weights: it shifts them left by ``scale_bits = floor(log2(scale)) + is_signed`` and
  sets ``weight_exp = -scale_bits``, so the Dense output is exactly ``W_file @ s`` whenever nothing is
  clipped; and ``Dense`` is built without ``sign_mode`` (B l.157-162), so Lava's own
  ``determine_sign_mode``, ``clip_weights`` and ``truncate_weights`` run on the shifted weights
  (D l.83-90). Hence a plan layer ``floor((W @ s) * 2**weight_exp)`` is written as
  ``W_file = W * 2**weight_exp``, which must be integer (``weight_exp < 0``: ``W`` a multiple of
  ``2**-weight_exp``), and netx must keep ``W_file`` exactly. It does not for (verified here by
  :func:`netx_synapse`, a transcription of those lines, and by the tests against netx itself):
  all-positive weights above 255 (``scale_bits < 0``: ``np.left_shift`` by a negative count gives 0,
  U l.131-151), mixed-sign weights outside ``[-256, 254]`` (clipped, U l.103-112), non-positive weights
  whose largest magnitude is a power of two (shifted to -256, which Lava's inhibitory clip makes
  -255, WU l.283-284), and an all-zero matrix (``255 / 0``: ``int(inf)`` raises, U l.131-133).
- There is no ``input`` layer: netx does not need one. An ``input`` group with a ``neuron`` would
  add a neuron population (and a step of delay) in front (H l.582-595); without one it only records
  a shape (H l.596-597). ``Network.inp`` is the first Dense block's synapse input (H l.92-98, B
  l.191-193) and ``Network(..., input_message_bits=k)`` makes that synapse take ``k``-bit graded
  payloads (H l.567, l.643-647; B l.43, l.161). The file records ``k`` (= ``plan.input_bits``) as
  the root attribute ``stft_neuro.input_message_bits``; netx reads only ``/layer`` (H l.570).

Timing: the netx network is exactly the chain ``Dense_0 -> LIF_0 -> ... -> LIF_{L-1}`` of
``sim/lava_session.py``: no extra process or delay (the block processes are sub-process models that
Lava flattens, ``blocks/models.py``). Each Dense delivers one step late (D l.93-96), so the payload
sent at step ``t`` reaches LIF_l's ``u`` at step ``t + l + 1``, exactly as in the plan and the
reference simulator: :func:`run_netx`'s output step ``t`` is the reference's last-layer step ``t``.

Errors: a plan layer the file cannot carry raises :class:`NetxUnrepresentableError` (a
``TargetError``) naming the layer, the parameter, the value and why, before any file is opened;
``plan_from_float(..., netx_compatible=True)`` (``hw_targets/loihi2/quantize.py``) makes plans that
the file can carry. The file is written to a temporary sibling and renamed into place
(``os.replace``): never a partial file.

Lava is imported only inside :func:`run_netx`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stft_neuro.hw_targets.errors import ChipInputError, TargetError
from stft_neuro.hw_targets.loihi2 import constants as C
from stft_neuro.hw_targets.loihi2.network import PayloadRange
from stft_neuro.hw_targets.loihi2.plan import DeploymentPlan
from stft_neuro.hw_targets.loihi2.quantize import NETX_BIAS_EXP
from stft_neuro.hw_targets.loihi2.weights import effective_bias, lava_effective_weights

FORMAT = "stft-neuro/netx"
#: Root attribute holding the first synapse's payload bits (netx reads only ``/layer``).
ATTR_INPUT_BITS = "stft_neuro.input_message_bits"
ATTR_PLAN = "stft_neuro.plan"


class NetxUnrepresentableError(TargetError):
    """A plan layer that lava-dl's netx HDF5 cannot carry exactly (one-line message: layer,
    parameter, value, why)."""


# ----------------------------------------------------------------------------------------------
# What netx + Lava do to the integer weights of a file
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NetxSynapse:
    """The Dense netx builds from a file's weights and what Lava's fixed_pt model then uses.

    ``weights``: ``(n_out, n_in)`` int64, the weights Lava's Dense multiplies (after netx's shift and
    Lava's clip/truncate); ``weight_exp``, ``num_weight_bits``: what netx passes to the Dense;
    ``netx_sign_mode`` / ``lava_sign_mode``: "mixed", "excitatory" or "inhibitory" as netx
    (U l.114-122) and Lava (WU l.21-43, on the shifted weights) decide them.
    """

    weights: np.ndarray
    weight_exp: int
    num_weight_bits: int
    netx_sign_mode: str
    lava_sign_mode: str

    def computes(self, file_weight: np.ndarray) -> bool:
        """True iff this Dense outputs exactly ``file_weight @ s`` for every input ``s``:
        ``weights == file_weight << -weight_exp`` with ``weight_exp <= 0`` (the right shift by
        ``-weight_exp``, D l.103-107, is then exact)."""
        sb = -self.weight_exp
        return sb >= 0 and np.array_equal(self.weights, np.asarray(file_weight, np.int64) << sb)


def netx_synapse(file_weight: np.ndarray) -> NetxSynapse:
    """Transcription of netx's ``optimize_weight_bits`` (U l.80-158, same numpy expressions, minus
    its prints) followed by Lava's fixed_pt Dense weight handling (D l.83-90: ``determine_sign_mode``
    on the shifted weights, ``clip_weights(num_bits=8)``, ``truncate_weights(num_weight_bits)``).

    ``file_weight``: ``(n_out, n_in)`` integers as stored. Raises :class:`ValueError` for an all-zero
    matrix, where netx itself fails (``int(inf)``, U l.131-151).
    """
    weight = np.asarray(file_weight).astype(int)
    max_weight, min_weight = np.max(weight), np.min(weight)
    if max_weight > 254 and min_weight < 0:                    # U l.103-107
        weight = np.clip(weight, -256, 254)
        max_weight = np.max(weight)
    if min_weight < -256 and max_weight > 0:                   # U l.108-112
        weight = np.clip(weight, -256, 254)
        min_weight = np.min(weight)
    if max_weight < 0:                                         # U l.114-122
        mode, is_signed = "inhibitory", 0
    elif min_weight >= 0:
        mode, is_signed = "excitatory", 0
    else:
        mode, is_signed = "mixed", 1
    if max_weight == 0 and min_weight == 0:
        raise ValueError("netx cannot optimize an all-zero weight matrix (255 / 0 -> int(inf))")
    with np.errstate(divide="ignore"):                         # U l.124-131 (127 / 0 = inf)
        if mode == "mixed":
            scale = np.min([127 / max_weight, -128 / min_weight])
        elif mode == "inhibitory":
            scale = -256 / min_weight
        else:
            scale = 255 / max_weight
    scale_bits = np.floor(np.log2(scale)) + is_signed          # U l.133
    n = 8                                                      # U l.135-146
    while n > 0 and np.sum(np.abs(weight / (2 ** n) - np.round(weight / (2 ** n)))) != 0:
        n -= 1
    n -= is_signed
    num_weight_bits = int(8 - scale_bits - n)                  # U l.148-149
    weight_exp = int(-scale_bits)
    w = np.left_shift(weight.astype(np.int32), int(scale_bits)).astype(np.int64)  # U l.151
    # Lava Dense (D l.83-90, WU l.21-43, l.204-295); netx passes no sign_mode (B l.157-162).
    lava_mode = "excitatory" if w.min() >= 0 else "inhibitory" if w.max() <= 0 else "mixed"
    mixed, inhib = int(lava_mode == "mixed"), int(lava_mode == "inhibitory")
    w = -w if inhib else w
    w = np.clip(w, (-2 ** 8) * mixed, 2 ** 8 - 1)
    drop = 8 - num_weight_bits + mixed
    w = (w >> drop) << drop
    w = -w if inhib else w
    return NetxSynapse(weights=w, weight_exp=weight_exp, num_weight_bits=num_weight_bits,
                       netx_sign_mode=mode, lava_sign_mode=lava_mode)


# ----------------------------------------------------------------------------------------------
# Plan -> file
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Encoded:
    weight: np.ndarray      # (n_out, n_in) int64, as stored
    bias: np.ndarray        # (n_out,) int64, as stored (the LIF's bias_mant at bias_exp 6)
    report: dict[str, Any]


def _unrepresentable(l: int, name: str, what: str) -> NetxUnrepresentableError:
    return NetxUnrepresentableError(
        f"netx cannot carry layer {l} ({name}): {what}; quantize with "
        f"plan_from_float(..., netx_compatible=True)")


def _first(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _encode_layer(l: int, layer: Any) -> _Encoded:
    """One plan layer -> the arrays netx reads, or :class:`NetxUnrepresentableError`."""
    name = layer.name
    w_eff = lava_effective_weights(layer.weight)     # what the plan's Lava Dense multiplies
    e = int(layer.weight_exp)
    if not w_eff.any():
        raise _unrepresentable(l, name, "weight: every Lava-effective weight is 0, and netx fails on "
                                        "an all-zero matrix (255 / 0 -> int(inf), netx utils.py l.131-151)")
    if e >= 0:
        w_file = w_eff << e
    else:
        off = (w_eff % (1 << -e)) != 0
        if off.any():
            j = _first(off)
            raise _unrepresentable(
                l, name, f"weight_exp = {e}: weight {int(w_eff[j])} at {j} is not a multiple of "
                         f"2**{-e}, and netx re-derives the exponent from integer weights "
                         f"(Dense output = W_file @ s, netx utils.py l.133-151), so floor(W @ s * 2**{e}) "
                         f"has no file form")
        w_file = w_eff >> -e
    try:
        syn = netx_synapse(w_file)
    except ValueError as exc:  # all-zero after the exponent cannot happen (w_eff nonzero); keep honest
        raise _unrepresentable(l, name, f"weight: {exc}") from None
    if not syn.computes(w_file):
        bad = syn.weights != (w_file << max(-syn.weight_exp, 0))
        j = _first(bad) if bad.any() else (0, 0)
        wmax, wmin = int(w_file.max()), int(w_file.min())
        if syn.netx_sign_mode == "excitatory" and wmax > 255:
            why = (f"all-positive weights above 255 become 0 in netx (max {wmax} = {int(w_eff.max())}"
                   f" << weight_exp {e}; netx utils.py l.131-151 shifts by a negative count)")
        elif syn.netx_sign_mode == "mixed" and (wmax > 254 or wmin < -256):
            why = (f"mixed-sign weights outside [-256, 254] are clipped by netx (range [{wmin}, {wmax}]"
                   f" = Lava-effective weights << weight_exp {e}; netx utils.py l.103-112)")
        else:
            why = (f"netx + Lava turn file weight {int(w_file[j])} at {j} into "
                   f"{int(syn.weights[j])} * 2**{syn.weight_exp} ({syn.netx_sign_mode} in netx, "
                   f"{syn.lava_sign_mode} in Lava; Lava clips inhibitory weights to -255, "
                   f"lava/utils/weightutils.py l.283-284)")
        raise _unrepresentable(l, name, f"weight: {why}")
    b_eff = effective_bias(layer.bias_mant, layer.bias_exp)
    step = 1 << NETX_BIAS_EXP
    off = (b_eff % step) != 0
    if off.any():
        j = _first(off)
        raise _unrepresentable(
            l, name, f"bias: bias_mant << bias_exp = {int(b_eff[j])} at neuron {j[0]} (bias_mant "
                     f"{int(np.asarray(layer.bias_mant)[j])}, bias_exp {int(layer.bias_exp)}) is not a "
                     f"multiple of 2**{NETX_BIAS_EXP} = {step}: netx fixes bias_exp = {NETX_BIAS_EXP} "
                     f"(netx hdf5.py l.158)")
    b_file = b_eff >> NETX_BIAS_EXP
    out = (b_file < C.BIAS_MANT_MIN) | (b_file > C.BIAS_MANT_MAX)
    if out.any():
        j = _first(out)
        raise _unrepresentable(
            l, name, f"bias: bias_mant << bias_exp = {int(b_eff[j])} at neuron {j[0]} needs mantissa "
                     f"{int(b_file[j])} at netx's fixed bias_exp {NETX_BIAS_EXP}, outside the 13-bit "
                     f"[{C.BIAS_MANT_MIN}, {C.BIAS_MANT_MAX}]")
    report = {
        "group": str(l), "name": name, "type": "dense", "n_in": layer.n_in, "n_out": layer.n_out,
        "input_message_bits": int(layer.num_message_bits),
        "neuron": {"type": "CUBA", "iDecay": int(layer.du) + 1, "vDecay": int(layer.dv),
                   "vThMant": int(layer.vth)},
        "weight": f"W_file = W_lava * 2**({e}) (plan weight_exp {e} folded in); netx re-derives "
                  f"weight_exp {syn.weight_exp}, num_weight_bits {syn.num_weight_bits}, "
                  f"{syn.netx_sign_mode} sign mode",
        "weight_range": [int(w_file.min()), int(w_file.max())],
        "netx_weight_exp": syn.weight_exp, "netx_num_weight_bits": syn.num_weight_bits,
        "sign_mode": syn.netx_sign_mode,
        "bias": f"bias_file = (bias_mant << {int(layer.bias_exp)}) >> {NETX_BIAS_EXP} "
                f"(netx bias_exp {NETX_BIAS_EXP})",
        "bias_range": [int(b_file.min(initial=0)), int(b_file.max(initial=0))],
    }
    return _Encoded(weight=w_file, bias=b_file, report=report)


def write_netx(plan: DeploymentPlan, path: str | Path) -> dict[str, Any]:
    """Write ``plan``'s network as a netx HDF5 file at ``path``, atomically; return a report.

    Every layer is encoded (and checked) before the file is opened: an unrepresentable layer
    raises :class:`NetxUnrepresentableError` and leaves nothing at ``path`` (an existing file there
    is kept). The report (JSON-ready) records, per layer, how weights, bias and neuron were encoded,
    plus the input payload bits and the delay: the last layer's response to the payload of step
    ``t`` starts at step ``t + L`` (one step per Dense).
    """
    import h5py

    if not isinstance(plan, DeploymentPlan):
        raise TypeError(f"write_netx takes a DeploymentPlan, got {type(plan).__name__}")
    path = Path(path)
    encoded = [_encode_layer(l, layer) for l, layer in enumerate(plan.network.layers)]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs[ATTR_INPUT_BITS] = int(plan.input_bits)
            f.attrs[ATTR_PLAN] = json.dumps(plan.to_dict())
            top = f.create_group("layer")
            for l, enc in enumerate(encoded):
                g = top.create_group(str(l))
                g.create_dataset("type", (1,), "S10", [b"dense"])
                g.create_dataset("shape", data=np.array([enc.weight.shape[0]], dtype=np.int64))
                g.create_dataset("weight", data=enc.weight.astype(np.int32))
                g.create_dataset("bias", data=enc.bias.astype(np.int32))
                n = g.create_group("neuron")
                n.create_dataset("type", (1,), "S10", [b"CUBA"])
                for key in ("iDecay", "vDecay", "vThMant"):
                    n.create_dataset(key, data=np.int64(enc.report["neuron"][key]))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"format": "lava-dl 0.6.0 netx HDF5 (lava.lib.dl.netx.hdf5.Network)", "file": path.name,
            "input_message_bits": int(plan.input_bits), "num_layers": len(encoded),
            "delay_steps": len(encoded), "thresholds": "static (no threshold-modulation port)",
            "layers": [enc.report for enc in encoded]}


def read_netx(path: str | Path) -> dict[str, Any]:
    """The arrays and attributes of a netx file as netx reads them (``NetDict``: ``astype(int)`` for
    weight and bias), as ``{"input_message_bits": k | None, "layers": [{type, shape, weight, bias,
    du, dv, vth}]}`` with ``du = iDecay - 1`` (H l.156). No Lava needed."""
    import h5py

    with h5py.File(path, "r") as f:
        bits = f.attrs.get(ATTR_INPUT_BITS)
        layers = []
        top = f["layer"]
        for l in range(len(top)):
            g = top[str(l)]
            n = g["neuron"]
            layers.append({
                "type": g["type"][0].decode("ascii"), "shape": tuple(int(s) for s in g["shape"][()]),
                "weight": g["weight"][()].astype(int), "bias": g["bias"][()].astype(int),
                "neuron": n["type"][0].decode("ascii"), "du": int(n["iDecay"][()]) - 1,
                "dv": int(n["vDecay"][()]), "vth": int(n["vThMant"][()])})
    return {"input_message_bits": None if bits is None else int(bits), "layers": layers}


def netx_file_difference(path: str | Path, plan: DeploymentPlan) -> str | None:
    """The first field in which the netx file at ``path`` differs from what :func:`write_netx`
    writes for ``plan``, in one line (``/layer/<i>/<dataset>`` path, file value vs plan value);
    None if the file carries exactly ``plan``. Raises :class:`NetxUnrepresentableError` if netx
    cannot carry ``plan`` at all."""
    import h5py

    want = [_encode_layer(l, layer) for l, layer in enumerate(plan.network.layers)]
    try:
        got = read_netx(path)
        with h5py.File(path, "r") as f:
            header = f.attrs.get(ATTR_PLAN)
    except (OSError, KeyError, ValueError, IndexError) as exc:
        return f"not a readable netx file ({type(exc).__name__}: {exc})"
    if got["input_message_bits"] != plan.input_bits:
        return (f"attribute {ATTR_INPUT_BITS}: {got['input_message_bits']} vs the plan's input bits "
                f"{plan.input_bits}")
    if len(got["layers"]) != len(want):
        return f"/layer: {len(got['layers'])} layers vs the plan's {len(want)}"
    for l, (g, w) in enumerate(zip(got["layers"], want)):
        n = w.report["neuron"]
        scalars = {"type": (g["type"], "dense"), "neuron/type": (g["neuron"], "CUBA"),
                   "shape": (tuple(g["shape"]), (int(w.weight.shape[0]),)),
                   "neuron/iDecay": (g["du"] + 1, n["iDecay"]), "neuron/vDecay": (g["dv"], n["vDecay"]),
                   "neuron/vThMant": (g["vth"], n["vThMant"])}
        for key, (a, b) in scalars.items():
            if a != b:
                return f"/layer/{l}/{key}: {a!r} vs the plan's {b!r}"
        for key, b in (("weight", w.weight), ("bias", w.bias)):
            a = np.asarray(g[key])
            if a.shape != b.shape:
                return f"/layer/{l}/{key} shape: {a.shape} vs the plan's {b.shape}"
            bad = a != b
            if bad.any():
                j = _first(bad)
                return f"/layer/{l}/{key} at {j}: {int(a[j])} vs the plan's {int(b[j])}"
    if header is not None:
        h = json.loads(header.decode() if isinstance(header, bytes) else str(header))
        for key, val in plan.to_dict().items():
            if h.get(key) != val:
                return f"attribute {ATTR_PLAN} {key}: {h.get(key)!r} vs the plan's {val!r}"
    return None


# ----------------------------------------------------------------------------------------------
# Run a file with netx itself
# ----------------------------------------------------------------------------------------------

def run_netx(path: str | Path, x: Any, num_steps: int | None = None, *,
             input_message_bits: int | None = None) -> np.ndarray:
    """Load ``path`` with ``lava.lib.dl.netx.hdf5.Network`` and run it in Lava ``fixed_pt``.

    Args:
        path: a netx HDF5 file (from :func:`write_netx`, or any netx file of Dense layers).
        x: integer payloads ``(T, n_in)`` or ``(T, B, n_in)`` (numpy or torch), sent one step at a
            time through an ``Injector`` into the first synapse.
        num_steps: Lava steps to run (default ``T``); steps past ``T`` get zero payloads, so a
            caller can see the response to the last inputs (it lags them by one step per layer).
        input_message_bits: payload bits of the first synapse; default: the file's
            ``stft_neuro.input_message_bits`` attribute (required if the file has none).

    Returns the last layer's spikes, float32 0/1 of shape ``(num_steps, B, n_out)`` (``B = 1`` for a
    2-D ``x``), aligned exactly as the reference simulator's last layer: step ``t`` here is its step
    ``t`` (netx adds no delay beyond the one step per Dense; see the module docstring).

    The batch runs one sample at a time: each sample is one netx ``Network`` and one Lava runtime
    (a few seconds of start-up at the STFT size). The runtime is stopped in ``finally``, also on an
    exception or KeyboardInterrupt, after feeding the steps still owed so no process is left blocked.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"run_netx: {path} does not exist")
    if input_message_bits is None:
        input_message_bits = read_netx(path)["input_message_bits"]
        if input_message_bits is None:
            raise ValueError(f"run_netx: {path} records no input_message_bits; pass it")
    bits = int(input_message_bits)
    a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if a.ndim == 2:
        a = a[:, None, :]
    if a.ndim != 3:
        raise ChipInputError(f"payload: run_netx takes (T, n_in) or (T, B, n_in), got {a.shape}")
    if a.size and (not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a))):
        raise ChipInputError("payload: values must be finite integers (Loihi units)")
    lo, hi = PayloadRange.for_message_bits(bits)
    if a.size and (a.min() < lo or a.max() > hi):
        raise ChipInputError(f"payload: values outside the {bits}-bit payload range [{lo}, {hi}] "
                             f"(min {a.min()}, max {a.max()})")
    T, B = a.shape[0], a.shape[1]
    steps = T if num_steps is None else int(num_steps)
    if steps < 1:
        raise ValueError(f"run_netx: num_steps must be >= 1, got {steps}")
    xs = np.zeros((steps, B, a.shape[2]), dtype=np.int64)
    n = min(T, steps)
    xs[:n] = np.rint(a[:n]).astype(np.int64)
    outs = [_run_netx_sample(path, xs[:, b], bits) for b in range(B)]
    return np.stack(outs, axis=1)


def _run_netx_sample(path: Path, x: np.ndarray, bits: int) -> np.ndarray:
    """One sample: ``x`` ``(steps, n_in)`` int64 -> last-layer spikes ``(steps, n_out)`` float32."""
    return _run_netx_sample_layers(path, x, bits)[-1]


def _run_netx_sample_layers(path: Path, x: np.ndarray, bits: int) -> list[np.ndarray]:
    """One sample through netx's ``Network`` in Lava fixed_pt: ``x`` ``(steps, n_in)`` int64 -> every
    layer's spikes, ``[(steps, n_l)]`` float32. Each block's ``out`` port (the LIF's ``s_out``, netx
    ``blocks/process.py`` l.192-195) also feeds an ``Extractor``; an OutPort fans out to every port
    it is connected to, so the network itself is unchanged."""
    from lava.lib.dl.netx import hdf5

    from stft_neuro.sim.lava_runtime import LavaRuntime, load

    lv = vars(load())  # Injector with an int32 model (fixed_pt Dense needs integer payloads), Extractor
    steps = x.shape[0]
    net = hdf5.Network(net_config=str(path), input_message_bits=bits)
    try:
        if tuple(net.inp.shape) != (x.shape[1],):
            raise ChipInputError(f"payload: {path.name} takes {net.inp.shape[0]} inputs, got {x.shape[1]}")
        injector = lv["Injector"](shape=net.inp.shape)
        extractors = [lv["Extractor"](shape=layer.out.shape) for layer in net.layers]
        injector.out_port.connect(net.inp)
        for layer, ext in zip(net.layers, extractors):
            layer.out.connect(ext.in_port)
        cfg = lv["Loihi2SimCfg"](select_tag="fixed_pt", exception_proc_model_map={
            lv["Injector"]: lv["IntInjectorModel"], lv["Extractor"]: lv["PyLoihiExtractorModel"]})
        outs = [np.zeros((steps, int(np.prod(layer.out.shape))), dtype=np.float32) for layer in net.layers]
        # the one Lava life cycle (sim/lava_runtime.py): drained and stopped on every path
        with LavaRuntime(net, cfg, [injector], extractors) as runtime:
            runtime.run_steps(steps)
            for t in range(steps):
                for out, got in zip(outs, runtime.step([x[t].astype(np.float64)])):
                    out[t] = got
    finally:
        net.net_config.f.close()  # netx keeps the HDF5 file open (H l.78, U l.43)
    return outs


# ----------------------------------------------------------------------------------------------
# The netx file as a step-contract backend of the hybrid run (static thresholds)
# ----------------------------------------------------------------------------------------------

class NetxBackend:
    """A bundle's netx file, run by lava-dl's own ``lava.lib.dl.netx.hdf5.Network`` in Lava
    ``fixed_pt``, behind the step contract's ``reset``/``run`` (``stft-neuro simulate --chip-from
    netx --backend lava``).

    ``plan``: the plan the file carries (``export/bundle.py`` verifies file and plan agree); the
    host converts its currents with it. netx has no threshold-modulation port, so only static
    thresholds run: ``run(x, None)`` with the whole sequence (what the host does without dynamic
    thresholds); ``step`` and a ``theta`` are refused (:class:`ChipInputError`). Each sample is its
    own ``Network`` and Lava runtime (netx builds one network of one sample; a few seconds of
    start-up each at the STFT size), stopped on every path; every layer's spikes come back
    aligned as the reference simulator's (step ``t`` here is its step ``t``)."""

    def __init__(self, path: str | Path, plan: DeploymentPlan) -> None:
        self.path = Path(path)
        self._plan = plan
        info = read_netx(self.path)
        self.bits = info["input_message_bits"] if info["input_message_bits"] is not None else plan.input_bits
        self.samples = 0

    @property
    def plan(self) -> DeploymentPlan:
        return self._plan

    @property
    def sizes(self) -> tuple[int, ...]:
        return self._plan.sizes

    def reset(self, batch: int) -> dict:
        return {"batch": int(batch)}

    def step(self, x_t, theta_t, state):
        raise ChipInputError("netx runs whole sequences with static thresholds (no threshold-modulation "
                             "port): the host must call run(x, None)")

    def run(self, x, theta=None, state=None):
        import torch

        if theta is not None:
            raise ChipInputError("theta: a netx file has static thresholds (no threshold-modulation port)")
        self._plan.check_payload(x)
        a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        xs = np.rint(a).astype(np.int64)                                  # (T, B, n_in)
        per_sample = [_run_netx_sample_layers(self.path, xs[:, b], int(self.bits)) for b in range(xs.shape[1])]
        self.samples += xs.shape[1]
        dtype = x.dtype if isinstance(x, torch.Tensor) else torch.float32
        spikes = tuple(torch.as_tensor(np.stack([s[l] for s in per_sample], axis=1)).to(dtype)
                       for l in range(len(per_sample[0])))
        return spikes, state if state is not None else self.reset(xs.shape[1])
