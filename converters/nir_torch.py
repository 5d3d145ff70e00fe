"""Simulate a :class:`converters.nir_graph.Graph` step by step in torch (the ``torch`` backend of
``stft-neuro run-nir``).

Semantics: ``converters.nir_graph`` (execution order, recurrent edges carry the previous step,
summation order) and ``converters.conventions`` (per-step constants). Per neuron and step::

    LIF      v = decay*v ; v += gain*x_k for each incoming x_k ; v += leak ; z = v > thr ; v[z] = v_reset
    CubaLIF  I = a_syn*I ; I += g_syn*x_k ... ; v = decay*v + gain*I + leak ; spike/reset as LIF
    IF       v += r*x_k ... ; spike/reset ;    I: v += r*x_k (output v) (r: conventions.if_gain)
    LI       as LIF without spikes (output v) ; CubaLI as CubaLIF without spikes
    Threshold z = x > thr ; Delay y[t] = x[t - k] (k = delay/dt steps, zeros before)

This reproduces snnTorch 1.0's ``Leaky``, ``Synaptic`` and ``RLeaky`` (``reset_mechanism="zero"``,
``reset_delay=False``: the form whose membrane is zeroed in the step that spikes, which is what the
exported graph describes) operation for operation in float32. With snnTorch's default
``reset_delay=True``, ``Synaptic``/``RLeaky`` zero the membrane one step later and drop that step's
input, a refractory step NIR cannot express.

Shapes: inputs ``(B, T, *in_shape)``, outputs ``(B, T, *out_shape)`` per Output node.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from stft_neuro.converters import conventions
from stft_neuro.converters.nir_graph import Graph, Node


@dataclass
class _Op:
    node: Node
    c: dict[str, Tensor]  # per-step constants in the simulation dtype
    delay: int = 0


class TorchSimulator:
    """The step contract over a NIR graph.

    Args:
        graph: a validated graph (``converters.nir_in``).
        dt: seconds per step (``converters.conventions.resolve_dt``).
        dtype: float32 (snnTorch's arithmetic) or float64.
    """

    def __init__(self, graph: Graph, dt: float, dtype: torch.dtype = torch.float32) -> None:
        self.graph, self.dt, self.dtype = graph, float(dt), dtype
        self.ops = {name: self._prepare(graph.nodes[name]) for name in graph.order}
        self._needs_prev = {s for s, _ in graph.recurrent}

    def _t(self, a: Any) -> Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float64)).to(self.dtype)

    def _prepare(self, node: Node) -> _Op:
        p, dt, k = node.params, self.dt, node.kind
        c: dict[str, Tensor] = {}
        if k in ("LIF", "LI"):
            c.update(decay=self._t(conventions.decay(dt, p["tau"])),
                     gain=self._t(conventions.membrane_gain(dt, p["tau"], p["r"])),
                     leak=self._t(conventions.leak_drive(dt, p["tau"], p["v_leak"])))
        elif k in ("CubaLIF", "CubaLI"):
            c.update(a_syn=self._t(conventions.decay(dt, p["tau_syn"])),
                     g_syn=self._t(conventions.synapse_gain(dt, p["tau_syn"], p["w_in"])),
                     decay=self._t(conventions.decay(dt, p["tau_mem"])),
                     gain=self._t(conventions.membrane_gain(dt, p["tau_mem"], p["r"])),
                     leak=self._t(conventions.leak_drive(dt, p["tau_mem"], p["v_leak"])))
        elif k in ("IF", "I"):
            c.update(gain=self._t(conventions.if_gain(dt, p["r"])[0]))
        if k in ("LIF", "CubaLIF", "IF"):
            c.update(thr=self._t(p["v_threshold"]), reset=self._t(p["v_reset"]))
        if k == "Threshold":
            c.update(thr=self._t(p["threshold"]))
        if k in ("Affine", "Linear", "Conv1d", "Conv2d"):
            c["weight"] = self._t(p["weight"])
            c["bias"] = self._t(p["bias"]) if "bias" in p else None
        if k == "Scale":
            c["scale"] = self._t(p["scale"])
        delay = 0
        if k == "Delay":
            steps = conventions.delay_steps(p["delay"], self.dt)
            delay = int(steps.max()) if steps.size else 0
            c["steps"] = torch.as_tensor(steps.reshape(-1))
        if "leak" in c and not bool(torch.any(c["leak"] != 0)):
            c["leak"] = None  # adding 0.0 is exact, but skipping it is faster
        return _Op(node, c, delay)

    # -- step contract -------------------------------------------------------------------------

    def reset(self, batch: int) -> dict[str, Any]:
        """Zero state for ``batch`` samples: membranes, synaptic currents, delay lines, and the
        previous outputs that recurrent edges read."""
        st: dict[str, Any] = {}
        for name, op in self.ops.items():
            n = op.node
            z = torch.zeros((batch,) + n.in_shape, dtype=self.dtype)
            if n.kind in ("LIF", "LI", "IF", "I"):
                st[name] = {"v": z}
            elif n.kind in ("CubaLIF", "CubaLI"):
                st[name] = {"v": z, "i": z.clone()}
            elif n.kind == "Delay":
                st[name] = {"buf": torch.zeros((op.delay + 1, batch) + n.in_shape, dtype=self.dtype),
                            "t": 0}
        st["__prev__"] = {s: torch.zeros((batch,) + self.graph.nodes[s].out_shape, dtype=self.dtype)
                          for s in self._needs_prev}
        return st

    def step(self, x_t: Tensor, state: dict[str, Any], record: bool = False
             ) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """One step: ``x_t`` ``(B, *in_shape)`` -> ``({output or node name: (B, *shape)}, state)``.

        Returns the Output nodes' values, or every node's with ``record``. ``state`` is updated in
        place and returned."""
        out: dict[str, Tensor] = {}
        prev = state["__prev__"]
        for name in self.graph.order:
            op = self.ops[name]
            if op.node.kind == "Input":
                out[name] = x_t.to(self.dtype)
                continue
            xs = [prev[s] if rec else out[s] for s, rec in self.graph.incoming[name]]
            out[name] = self._apply(op, xs, state.get(name))
        for s in self._needs_prev:
            prev[s] = out[s]
        if record:
            return out, state
        return {o: out[o] for o in self.graph.outputs}, state

    def run(self, x: Tensor, record: bool = False) -> dict[str, Tensor]:
        """``x`` ``(B, T, *in_shape)`` -> ``{name: (B, T, *shape)}`` for the Output nodes (every node
        with ``record``)."""
        B, T = int(x.shape[0]), int(x.shape[1])
        state = self.reset(B)
        steps: list[dict[str, Tensor]] = []
        with torch.no_grad():
            for t in range(T):
                o, state = self.step(x[:, t], state, record)
                steps.append(o)
        names = steps[0].keys() if steps else (self.graph.outputs if not record else self.graph.order)
        if not steps:
            return {n: torch.zeros((B, 0) + self.graph.nodes[n].out_shape, dtype=self.dtype)
                    for n in names}
        return {n: torch.stack([s[n] for s in steps], dim=1) for n in names}

    # -- node updates --------------------------------------------------------------------------

    def _apply(self, op: _Op, xs: list[Tensor], st: dict[str, Any] | None) -> Tensor:
        n, c, k = op.node, op.c, op.node.kind
        if k in ("LIF", "LI"):
            v = c["decay"] * st["v"]
            for x in xs:
                v = v + c["gain"] * x
            if c["leak"] is not None:
                v = v + c["leak"]
            return self._fire(k, v, c, st)
        if k in ("CubaLIF", "CubaLI"):
            i = c["a_syn"] * st["i"]
            for x in xs:
                i = i + c["g_syn"] * x
            st["i"] = i
            v = c["decay"] * st["v"] + c["gain"] * i
            if c["leak"] is not None:
                v = v + c["leak"]
            return self._fire(k, v, c, st)
        if k in ("IF", "I"):
            v = st["v"]
            for x in xs:
                v = v + c["gain"] * x
            return self._fire(k, v, c, st)
        x = xs[0]
        for other in xs[1:]:
            x = x + other
        B = x.shape[0]
        if k in ("Output", "Identity"):
            return x
        if k == "Affine" or k == "Linear":
            return F.linear(x, c["weight"], c["bias"])
        if k == "Scale":
            return x * c["scale"]
        if k == "Threshold":
            return (x > c["thr"]).to(self.dtype)
        if k == "Flatten":
            return x.reshape((B,) + n.out_shape)
        p = n.params
        if k == "Conv1d":
            return F.conv1d(x, c["weight"], c["bias"], p["stride"], p["padding"], p["dilation"],
                            p["groups"])
        if k == "Conv2d":
            return F.conv2d(x, c["weight"], c["bias"], p["stride"], p["padding"], p["dilation"],
                            p["groups"])
        if k in ("SumPool2d", "AvgPool2d"):
            kh, kw = p["kernel_size"]
            y = F.avg_pool2d(x, p["kernel_size"], p["stride"], p["padding"],
                             count_include_pad=True, divisor_override=1)
            return y if k == "SumPool2d" else y / (kh * kw)
        if k == "Delay":
            buf, t = st["buf"], st["t"]
            L = buf.shape[0]
            buf[t % L] = x
            idx = (t - c["steps"]) % L  # per element: the slot written `steps` ago
            flat = buf.reshape(L, B, -1)
            cols = torch.arange(flat.shape[2])
            y = flat[idx, :, cols].T.reshape((B,) + n.out_shape)
            valid = (t - c["steps"] >= 0).to(self.dtype).reshape(n.out_shape)
            st["t"] = t + 1
            return y * valid
        raise AssertionError(f"unhandled node kind {k}")  # build_graph admits no other kind

    def _fire(self, k: str, v: Tensor, c: dict[str, Tensor], st: dict[str, Any]) -> Tensor:
        if k in ("LI", "CubaLI", "I"):
            st["v"] = v
            return v
        z = v > c["thr"]
        st["v"] = torch.where(z, c["reset"], v)
        return z.to(self.dtype)
