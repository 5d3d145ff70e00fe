"""NIR neurons that reset to ``v_reset != 0`` (per neuron), on Lava float and in fixed point.

Lava's LIF resets to 0; the project's ``VecLIF`` (float) and ``ResetLIF`` (fixed point, Lava's
``PyLifModelBitAcc`` with ``reset_voltage`` replaced) reset to ``v_reset``. Float: Lava == the
torch definition, every spike. Fixed point: reference == step-by-step definition == Lava fixed_pt,
every spike, and close to the float run. The graph: Input 16 -> Affine -> LIF 24 (per-neuron
v_reset in [-0.4, 0.6]) -> Affine -> IF 8 (v_reset 0.3) -> Output. Each test checks that the
reset values matter (the run differs from the same graph resetting to 0).
"""
from __future__ import annotations

import multiprocessing
from dataclasses import replace

import nir
import numpy as np
import pytest
import torch

from stft_neuro.converters import nir_fixed as F
from stft_neuro.converters.nir_in import from_nir
from stft_neuro.converters.nir_lava import LavaFloatRunner, lower
from stft_neuro.converters.nir_torch import TorchSimulator
from stft_neuro.hw_targets.loihi2.graph_file import load_graph, save_graph

from test_nir_fixed_graphs import assert_same, fixed_case


def reset_net(seed: int = 0, zero_reset: bool = False) -> nir.NIRGraph:
    rng = np.random.default_rng(seed)
    reset1 = np.zeros(24) if zero_reset else rng.uniform(-0.4, 0.6, 24)
    reset2 = np.zeros(8) if zero_reset else np.full(8, 0.3)
    return nir.NIRGraph(
        nodes={"input": nir.Input(input_type=np.array([16])),
               "fc1": nir.Affine(weight=rng.normal(size=(24, 16)) * 0.5, bias=np.zeros(24)),
               "lif": nir.LIF(tau=np.full(24, 5e-4), r=np.ones(24), v_leak=np.zeros(24),
                              v_threshold=np.ones(24), v_reset=reset1),
               "fc2": nir.Affine(weight=rng.normal(size=(8, 24)) * 0.6, bias=np.zeros(8)),
               "if": nir.IF(r=np.ones(8), v_threshold=np.ones(8), v_reset=reset2),
               "output": nir.Output(output_type=np.array([8]))},
        edges=[("input", "fc1"), ("fc1", "lif"), ("lif", "fc2"), ("fc2", "if"), ("if", "output")])


def _input(seed: int = 0) -> np.ndarray:
    return np.abs(np.random.default_rng(seed + 7).normal(size=(3, 30, 16)))


def _float_run(seed: int, zero_reset: bool = False) -> dict:
    graph, dt, _ = from_nir(reset_net(seed, zero_reset))
    return TorchSimulator(graph, dt, torch.float64).run(torch.from_numpy(_input(seed)), record=True)


def test_the_reset_values_matter():
    """The regime: neurons spike more than once, and resetting to v_reset changes the spikes."""
    got, zero = _float_run(0), _float_run(0, zero_reset=True)
    for layer in ("lif", "if"):
        assert (got[layer].sum(1) >= 2).any(), f"{layer}: a neuron must spike twice"
        assert not torch.equal(got[layer], zero[layer]), f"{layer}: v_reset changed nothing"


@pytest.mark.lava
def test_v_reset_on_lava_floating_pt_equals_torch():
    graph, dt, _ = from_nir(reset_net(0))
    want = _float_run(0)
    got = LavaFloatRunner(lower(graph, dt)).run(_input(0), record=True)
    for layer in ("lif", "if"):
        w = want[layer].numpy()
        assert np.array_equal(got[layer], w), f"{layer}: {int((got[layer] != w).sum())} spikes differ"
    assert multiprocessing.active_children() == []


@pytest.mark.lava
def test_v_reset_fixed_point_reference_definition_and_lava_agree(tmp_path):
    fg, rep, pay, _ = fixed_case(tmp_path, reset_net(1), _input(1))
    assert all(p.v_reset is not None and np.any(p.v_reset != 0) for p in fg.populations)
    assert sum(q.v_reset_clipped for q in rep) == 0
    ref = F.run_reference(fg, pay)
    assert_same(ref, F.run_definition(fg, pay), "definition")
    assert_same(ref, F.LavaFixedRunner(fg).run(pay), "lava fixed_pt")
    assert multiprocessing.active_children() == []
    # the file keeps the reset values; zeroing them changes the fixed-point spikes too
    g2, _ = load_graph(save_graph(fg, tmp_path / "g.safetensors", 1.0, 1e-4))
    for a, b in zip(fg.populations, g2.populations):
        assert np.array_equal(a.v_reset, b.v_reset)
    zeroed = replace(fg, populations=tuple(replace(p, v_reset=None) for p in fg.populations))
    assert any(not torch.equal(ref[k], v) for k, v in F.run_reference(zeroed, pay).items())
    # close to the float run
    fl, T = _float_run(1), _input(1).shape[1]
    for layer, d in dict(fg.depth).items():
        fixed = ref[layer][d:d + T].transpose(0, 1).numpy()
        assert 0 < fixed.mean() < 1
        assert np.mean(fixed == fl[layer].numpy()) > 0.9, layer
