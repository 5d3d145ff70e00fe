"""Loihi 2 core mapping and resource report (hw_targets/loihi2/mapping.py, resources.py, report.py)."""
from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stft_neuro.hw_targets.loihi2.mapping import map_layer, map_network
from stft_neuro.hw_targets.loihi2.network import FixedPointLayer, FixedPointNetwork
from stft_neuro.hw_targets.loihi2.report import format_resource_report, resource_report
from stft_neuro.hw_targets.loihi2.resources import (
    LOIHI2, NENGO_LOIHI1_DENSE, PLAIN_DENSE, CoreConstraints, Loihi2Target, SynapseFormat,
)


def shaped_layer(name: str, n_in: int, n_out: int) -> FixedPointLayer:
    """A layer of the given shape whose weights take no memory (a broadcast view of zeros)."""
    return FixedPointLayer(name=name, weight=np.broadcast_to(np.int8(0), (n_out, n_in)),
                           weight_exp=0, du=2047, dv=1024, vth=1000,
                           bias_mant=np.zeros(n_out, dtype=np.int16), bias_exp=0)


def net_512_256_256_128() -> FixedPointNetwork:
    rng = np.random.default_rng(0)
    layers = []
    for i, (n_in, n_out) in enumerate([(512, 256), (256, 256), (256, 128)]):
        layers.append(FixedPointLayer(
            name=f"lif{i + 1}", weight=2 * rng.integers(-10, 11, size=(n_out, n_in)),
            weight_exp=-6 if i == 0 else 0, du=2047, dv=1024, vth=1000,
            bias_mant=rng.integers(-100, 101, size=n_out), bias_exp=0,
            num_message_bits=8 if i == 0 else 0))
    return FixedPointNetwork(tuple(layers))


def test_512_256_256_128_maps_to_three_cores():
    # By hand: one core holds 1,048,576 bits of 8-bit weights.
    # lif1: 512 inputs * 8 bits = 4096 bits/neuron -> 256 neurons/core -> 1 core, 100 % memory.
    # lif2: 256 * 8 = 2048 bits/neuron -> 512/core -> 1 core (256 neurons, 50 %).
    # lif3: 2048 bits/neuron -> 1 core (128 neurons, 25 %). Total 3 cores, 1 chip.
    m = map_network(net_512_256_256_128())
    assert [(a.layer, a.neuron_range, a.synapses, a.synaptic_memory_bits) for a in m.allocations] == [
        ("lif1", (0, 256), 131072, 1048576),
        ("lif2", (0, 256), 65536, 524288),
        ("lif3", (0, 128), 32768, 262144),
    ]
    assert (m.cores_used, m.chips_needed) == (3, 1)
    assert m.utilisation() == ((256 / 8192, 1.0), (256 / 8192, 0.5), (128 / 8192, 0.25))


def test_512_256_256_128_with_the_loihi1_synapse_encoding():
    # Per input axon, k neurons take ceil(k/64) blocks of (n*8 + 10) bits rounded up to 64:
    # k=256: 4 * 576 = 2304 bits; * 512 axons = 1,179,648 > 1,048,576 -> lif1 needs 2 cores
    # (128 each: 2 * 576 * 512 = 589,824). lif2: 2304 * 256 = 589,824 -> 1 core. lif3: 1 core.
    target = Loihi2Target(core=CoreConstraints(synapse_format=NENGO_LOIHI1_DENSE))
    m = map_network(net_512_256_256_128(), target)
    assert [(a.layer, a.neurons, a.synaptic_memory_bits) for a in m.allocations] == [
        ("lif1", 128, 589824), ("lif1", 128, 589824), ("lif2", 256, 589824),
        ("lif3", 128, 294912),
    ]


def test_large_layer_is_split_evenly():
    # fan-in 256 -> 2048 bits/neuron -> 512 neurons/core -> ceil(10000/512) = 20 cores of 500.
    allocs = map_layer(shaped_layer("big", 256, 10000), 0, LOIHI2.core)
    assert len(allocs) == 20 and {a.neurons for a in allocs} == {500}
    assert allocs[-1].neuron_range == (9500, 10000)


def test_neuron_limit_binds_for_small_fan_in():
    allocs = map_layer(shaped_layer("wide", 1, 20000), 0, LOIHI2.core)
    assert len(allocs) == 3 and max(a.neurons for a in allocs) <= 8192


def test_mapping_does_not_change_the_network():
    net = net_512_256_256_128()
    before = [layer.weight.copy() for layer in net.layers]
    map_network(net)
    resource_report(net)
    assert all(np.array_equal(b, layer.weight) for b, layer in zip(before, net.layers))


formats = st.sampled_from([PLAIN_DENSE, NENGO_LOIHI1_DENSE,
                           SynapseFormat("odd", weight_bits=5, header_bits=3,
                                         synapses_per_block=7, word_bits=16)])


@settings(max_examples=150, deadline=None)
@given(n_in=st.integers(1, 40000), n_out=st.integers(1, 40000),
       max_neurons=st.integers(1, 9000), memory_bits=st.integers(1, 2_000_000), fmt=formats)
def test_mapping_conserves_neurons_and_synapses_and_every_core_fits(
        n_in, n_out, max_neurons, memory_bits, fmt):
    core = CoreConstraints(max_neurons=max_neurons, synaptic_memory_bits=memory_bits,
                           synapse_format=fmt)
    allocs = map_layer(shaped_layer("l", n_in, n_out), 7, core)
    assert sum(a.neurons for a in allocs) == n_out
    assert sum(a.synapses for a in allocs) == n_out * n_in
    assert [a.core_index for a in allocs] == list(range(7, 7 + len(allocs)))
    # contiguous ranges covering range(n_out)
    assert allocs[0].neuron_range[0] == 0 and allocs[-1].neuron_range[1] == n_out
    assert all(a.neuron_range[1] == b.neuron_range[0] for a, b in zip(allocs, allocs[1:]))
    assert all(a.synaptic_memory_bits == core.memory_bits(n_in, a.neurons) for a in allocs)
    if core.fits(n_in, 1):
        assert all(a.fits(core) for a in allocs)
        # minimal: one core fewer could not hold the layer
        per_core = core.max_neurons_for(n_in)
        assert -(-n_out // per_core) == len(allocs)
    else:
        assert not any(a.fits(core) for a in allocs)


def test_report_is_json_and_round_trips():
    report = resource_report(net_512_256_256_128())
    assert json.loads(json.dumps(report)) == report
    assert report["totals"]["cores_used"] == 3 and report["design_rules"]["passed"]
    assert {l["kind"] for l in report["target"]["limits"]} == {"published", "toolchain",
                                                              "assumption"}
    text = format_resource_report(report)
    assert "assumption" in text and "published" in text and "PASS" in text


def test_report_of_a_broken_network_lists_its_violations():
    good = net_512_256_256_128()
    w = good.layers[1].weight.copy()
    w[0, 0] = 300
    bad = FixedPointNetwork((good.layers[0],
                             FixedPointLayer(**{**good.layers[1].__dict__, "weight": w}),
                             good.layers[2]))
    report = resource_report(bad)
    assert json.loads(json.dumps(report)) == report
    assert not report["design_rules"]["passed"]
    assert any("weight 300 > 254 (by 46)" in v["message"]
               for v in report["design_rules"]["violations"])
    assert "FAIL" in format_resource_report(report)
    malformed = resource_report(FixedPointNetwork(()))
    assert malformed["layers"] == [] and malformed["totals"] is None
    assert "none placed" in format_resource_report(malformed)
