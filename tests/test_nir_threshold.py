"""NIR ``Threshold`` nodes (``z = x > threshold``, no state) on Lava: a LIF with ``du = dv = 1``.

Float: Lava floating_pt == the torch definition, every spike. Fixed point: reference == step-by-step
definition == Lava fixed_pt, every spike; there ``dv`` tops out at 4095, so v keeps 1/4096 of
itself, which the quantization record reports as clipped decays, and the run stays close to the
float one. A binary network: Input 24 -> Affine -> Threshold 40 -> Affine -> Threshold 12 -> Output,
with per-neuron thresholds (a few profiles) and biases.
"""
from __future__ import annotations

import multiprocessing

import nir
import numpy as np
import pytest
import torch

from stft_neuro.converters import nir_fixed as F
from stft_neuro.converters.nir_in import from_nir
from stft_neuro.converters.nir_lava import LavaFloatRunner, lower
from stft_neuro.converters.nir_torch import TorchSimulator

from test_nir_fixed_graphs import assert_same, fixed_case


def binary_net(seed: int = 0, n_in: int = 24, hidden: int = 40, n_out: int = 12) -> nir.NIRGraph:
    rng = np.random.default_rng(seed)
    return nir.NIRGraph(
        nodes={"input": nir.Input(input_type=np.array([n_in])),
               "fc1": nir.Affine(weight=rng.normal(size=(hidden, n_in)) / np.sqrt(n_in),
                                 bias=rng.normal(size=hidden) * 0.1),
               "thr1": nir.Threshold(threshold=rng.choice([0.2, 0.5], size=hidden)),
               "fc2": nir.Affine(weight=rng.normal(size=(n_out, hidden)) / np.sqrt(hidden),
                                 bias=np.zeros(n_out)),
               "thr2": nir.Threshold(threshold=np.full(n_out, 0.3)),
               "output": nir.Output(output_type=np.array([n_out]))},
        edges=[("input", "fc1"), ("fc1", "thr1"), ("thr1", "fc2"), ("fc2", "thr2"),
               ("thr2", "output")])


def _input(seed: int = 0, B: int = 3, T: int = 20, n_in: int = 24) -> np.ndarray:
    return np.random.default_rng(seed + 1).normal(size=(B, T, n_in))


def test_threshold_lowers_to_a_memoryless_lif():
    graph, dt, _ = from_nir(binary_net())
    plan = lower(graph, dt)
    kinds = {st.name: st for st in plan.stages}
    assert set(kinds) == {"thr1", "thr2"}
    for st in plan.stages:
        assert st.kind == "Threshold" and np.all(st.du == 1) and np.all(st.dv == 1)
    assert sorted(np.unique(kinds["thr1"].vth)) == [0.2, 0.5]


@pytest.mark.lava
def test_threshold_graph_on_lava_floating_pt_equals_torch():
    graph, dt, _ = from_nir(binary_net())
    x = _input()
    want = TorchSimulator(graph, dt, torch.float64).run(torch.from_numpy(x), record=True)
    got = LavaFloatRunner(lower(graph, dt)).run(x, record=True)
    for layer in ("thr1", "thr2"):
        w = want[layer].numpy()
        assert 0 < w.mean() < 1, f"{layer}: spikes and silences both"
        assert np.array_equal(got[layer], w), f"{layer}: {int((got[layer] != w).sum())} spikes differ"
    assert multiprocessing.active_children() == []


@pytest.mark.lava
def test_threshold_graph_fixed_point_reference_definition_and_lava_agree(tmp_path):
    x = _input(seed=3)
    fg, rep, pay, lp = fixed_case(tmp_path, binary_net(seed=3), x)
    ref = F.run_reference(fg, pay)
    assert_same(ref, F.run_definition(fg, pay), "definition")
    assert_same(ref, F.LavaFixedRunner(fg).run(pay), "lava fixed_pt")
    assert multiprocessing.active_children() == []
    by = {q.name: q for q in rep}
    assert by["thr1"].profiles == 2 and by["thr1"].dv_clipped == 40 and by["thr2"].dv_clipped == 12
    # close to the float run (measured: 95 % and 91 % of neuron-steps equal; the second layer also
    # inherits the first's differences): 8-bit input and weights, and v keeps 1/4096 of itself
    graph, dt, _ = from_nir(binary_net(seed=3))
    fl = TorchSimulator(graph, dt, torch.float64).run(torch.from_numpy(x), record=True)
    T = x.shape[1]
    for layer, d in dict(fg.depth).items():
        fixed = ref[layer][d:d + T].transpose(0, 1).numpy()  # (B, T, n) at reference steps
        assert 0 < fixed.mean() < 1
        assert np.mean(fixed == fl[layer].numpy()) > 0.9, layer
