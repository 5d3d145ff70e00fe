"""Convolutions in fixed point on Lava's own ``Conv`` process: every spike equals the reference.

A NIR ``Conv2d`` between a source (the host input or a spiking layer) and a spiking layer is kept
as a kernel (``Projection.conv``) and run on Lava's ``Conv`` with its fixed-point model
(``PyConvModelFixed``), whose image and kernel layouts (W, H, C), (C_out, W, H, C_in) and kernel
flip differ from NIR's, so every geometry knob is exercised: non-square images and kernels,
stride, padding, dilation and groups, one axis at a time different. The reference and the
step-by-step definition run the same integers unrolled (``Projection.weight``).
"""
from __future__ import annotations

import multiprocessing

import nir
import numpy as np
import pytest
import torch

from stft_neuro.converters import nir_fixed as F
from stft_neuro.hw_targets.loihi2.graph_file import load_graph, save_graph
from stft_neuro.hw_targets.loihi2.network import GRAPH_INPUT

from test_nir_fixed_graphs import assert_same, fixed_case

GEOMETRIES = {
    # (in C, H, W), conv1 (C_out, kh, kw, stride, padding, dilation, groups), conv2 likewise
    "square": ((2, 8, 8), (4, 3, 3, (1, 1), (1, 1), (1, 1), 1), (4, 3, 3, (1, 1), (0, 0), (1, 1), 1)),
    "skewed": ((2, 6, 9), (4, 3, 2, (2, 1), (1, 0), (1, 2), 2), (6, 2, 3, (1, 2), (0, 1), (2, 1), 2)),
}


def conv_net(geometry: str, seed: int = 0) -> tuple[nir.NIRGraph, tuple[int, ...]]:
    (c, h, w), g1, g2 = GEOMETRIES[geometry]
    rng = np.random.default_rng(seed)
    nodes = {"input": nir.Input(input_type=np.array([c, h, w]))}
    edges, prev, shape = [], "input", (c, h, w)
    for i, (co, kh, kw, stride, pad, dil, groups) in enumerate((g1, g2), 1):
        weight = rng.normal(0, 0.8, (co, shape[0] // groups, kh, kw))
        x = torch.zeros((1,) + shape)
        out = tuple(torch.nn.functional.conv2d(x, torch.from_numpy(weight).float(), None, stride, pad,
                                               dil, groups).shape[1:])
        nodes[f"conv{i}"] = nir.Conv2d(input_shape=shape[1:], weight=weight, stride=stride,
                                       padding=pad, dilation=dil, groups=groups,
                                       bias=rng.normal(0, 0.1, co))
        nodes[f"if{i}"] = nir.IF(r=np.ones(out), v_threshold=np.ones(out), v_reset=np.zeros(out))
        edges += [(prev, f"conv{i}"), (f"conv{i}", f"if{i}")]
        prev, shape = f"if{i}", out
    nodes["output"] = nir.Output(output_type=np.array(shape))
    edges.append((prev, "output"))
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False), (c, h, w)


@pytest.mark.lava
@pytest.mark.parametrize("geometry, input_bits, kernels", [
    ("square", 4, 2), ("skewed", 4, 2),
    # 8-bit payload units make the input convolution's weights small: they need a negative
    # exponent, which Lava's Conv model lacks, so that one runs as a Sparse matrix
    ("skewed", 8, 1)])
def test_lava_conv_process_equals_reference(tmp_path, geometry, input_bits, kernels):
    graph, in_shape = conv_net(geometry)
    x = np.random.default_rng(1).random((2, 12) + in_shape) * 2
    fg, rep, pay, _ = fixed_case(tmp_path, graph, x, input_bits)
    convs = [pr for pr in fg.projections if pr.conv is not None]
    assert len(convs) == kernels == sum(q.lava_conv_inputs for q in rep)
    assert all(pr.weight_exp >= 0 for pr in convs)
    assert (kernels == 2) == any(pr.conv is not None for pr in fg.projections if pr.src == GRAPH_INPUT)
    ref = F.run_reference(fg, pay)
    assert_same(ref, F.run_definition(fg, pay), "definition")
    for layer, s in ref.items():  # the regime: both layers spike, neither saturates
        assert 0 < float(s.mean()) < 0.9, (layer, float(s.mean()))
    runner = F.LavaFixedRunner(fg)
    assert_same(ref, runner.run(pay), f"lava Conv ({geometry})")
    assert runner.conv_processes == kernels * x.shape[0]  # one network per sample
    assert multiprocessing.active_children() == []
    # the bundle's file keeps the kernels and their geometry
    g2, _ = load_graph(save_graph(fg, tmp_path / "g.safetensors", 1.0, 1e-4))
    for a, b in zip(convs, [pr for pr in g2.projections if pr.conv is not None]):
        assert np.array_equal(a.conv["kernel"], b.conv["kernel"])
        assert {k: v for k, v in a.conv.items() if k != "kernel"} == \
            {k: v for k, v in b.conv.items() if k != "kernel"}
        assert np.array_equal(F.unroll_conv(b.conv["kernel"], b.conv), b.weight)
