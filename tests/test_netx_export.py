"""The netx HDF5 export (``converters/netx_out.py``) and the quantizer's ``netx_compatible`` option.

The file must be what lava-dl's own ``lava.lib.dl.netx.hdf5.Network`` loads and runs, spike for spike
the deployment plan (``sim.reference.ReferenceSimulator``, bit-exact with Lava ``fixed_pt``), at the
STFT's real size (512 -> 256 -> 256 -> 128, 8-bit graded input). Plans the file cannot carry must
be refused before anything is written. Tests that need Lava carry ``@pytest.mark.lava``.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from stft_neuro.converters import netx_out as NX
from stft_neuro.hw_targets.errors import TargetError
from stft_neuro.hw_targets.loihi2 import quantize as Q
from stft_neuro.hw_targets.loihi2 import rules
from stft_neuro.hw_targets.loihi2.network import FixedPointLayer, FixedPointNetwork
from stft_neuro.hw_targets.loihi2.plan import DeploymentPlan
from stft_neuro.hw_targets.loihi2.weights import effective_bias, lava_effective_weights
from stft_neuro.sim.reference import ReferenceSimulator

SIZES = (512, 256, 256, 128)  # the STFT spiking branch's default size
T = 10


def trained_like(seed: int) -> list[Q.FloatLayer]:
    """Float layers with trained-like (Student t) weights, as ``test_lava_equivalence.quantized_plan``."""
    rng = np.random.default_rng(seed)
    return [Q.FloatLayer(name=f"lif{l + 1}",
                         weight=rng.standard_t(3, (SIZES[l + 1], SIZES[l])) * 2.5 / SIZES[l] ** 0.5,
                         bias=rng.normal(0, 0.02, SIZES[l + 1]), du=0.25, dv=0.1, threshold=1.0)
            for l in range(len(SIZES) - 1)]


def make_plan(seed: int, netx: bool) -> DeploymentPlan:
    plan, _ = Q.plan_from_float(trained_like(seed), input_scale=1.0 / 60, input_bits=8, num_steps=T,
                                netx_compatible=netx)
    return plan


@pytest.fixture(scope="module")
def netx_plan() -> DeploymentPlan:
    return make_plan(0, netx=True)


def payloads(plan: DeploymentPlan, B: int, seed: int = 1) -> np.ndarray:
    """Random payloads, a third of them at each end of the 8-bit range."""
    rng = np.random.default_rng(seed)
    lo, hi = plan.payload_range
    x = rng.integers(lo, hi + 1, (T, B, plan.n_in))
    r = rng.random(x.shape)
    return np.where(r < 1 / 3, lo, np.where(r > 2 / 3, hi, x))


# ----------------------------------------------------------------------------------------------
# (1) lava-dl's netx Network == the reference simulator, at the real size
# ----------------------------------------------------------------------------------------------

@pytest.mark.lava
def test_netx_network_runs_the_plan_bit_exactly(netx_plan, tmp_path):
    plan = netx_plan
    path = tmp_path / "net.h5"
    report = NX.write_netx(plan, path)
    assert report["input_message_bits"] == plan.input_bits == 8
    x = payloads(plan, B=2)
    lo, hi = plan.payload_range
    assert (x == lo).any() and (x == hi).any()          # both ends of the payload range occur
    ref = ReferenceSimulator(plan).run(torch.tensor(x, dtype=torch.float64))[0]
    expected = ref[-1].numpy()
    assert all(float(s.sum()) > 0 for s in ref)          # every layer spikes, not zeros vs zeros
    got = NX.run_netx(path, x)
    assert got.shape == (T, 2, SIZES[-1])
    assert got.sum() > 0
    np.testing.assert_array_equal(got, expected)
    # The alignment is pinned: the same spikes one step earlier or later do not match.
    assert not np.array_equal(got[1:], expected[:-1]) and not np.array_equal(got[:-1], expected[1:])
    # A 2-D payload is one sample; extra steps get zero payloads (the response to the last inputs).
    longer = NX.run_netx(path, x[:, 1], num_steps=T + 3)
    ref_long = ReferenceSimulator(plan).run(torch.tensor(
        np.concatenate([x[:, 1:2], np.zeros((3, 1, plan.n_in))]), dtype=torch.float64))[0][-1]
    np.testing.assert_array_equal(longer, ref_long.numpy())


# ----------------------------------------------------------------------------------------------
# (2) the file holds the plan's parameters, as written and as netx builds them
# ----------------------------------------------------------------------------------------------

def test_file_reloads_with_the_plans_parameters(netx_plan, tmp_path):
    path = tmp_path / "net.h5"
    report = NX.write_netx(netx_plan, path)
    back = NX.read_netx(path)
    assert back["input_message_bits"] == netx_plan.input_bits
    assert len(back["layers"]) == netx_plan.num_layers == len(report["layers"])
    for layer, got in zip(netx_plan.network.layers, back["layers"]):
        e = layer.weight_exp
        assert got["type"] == "dense" and got["neuron"] == "CUBA" and got["shape"] == (layer.n_out,)
        assert (got["du"], got["dv"], got["vth"]) == (layer.du, layer.dv, layer.vth)
        w = lava_effective_weights(layer.weight)
        np.testing.assert_array_equal(got["weight"] * 2.0 ** -e if e < 0 else got["weight"] >> e, w)
        np.testing.assert_array_equal(got["bias"] << 6, effective_bias(layer.bias_mant, layer.bias_exp))
    assert any(np.any(g["bias"] != 0) for g in back["layers"])  # a bias is actually carried
    assert not list(tmp_path.glob(".*tmp*"))                     # no temporary left over


@pytest.mark.lava
def test_netx_builds_the_plans_processes(netx_plan, tmp_path):
    """What ``hdf5.Network`` makes of the file (no run): per layer a Dense whose weights and
    exponent compute ``W_lava * 2**weight_exp`` of the plan, and a LIF with the plan's du, dv, vth
    and ``bias_mant << 6`` = the plan's effective bias."""
    from lava.lib.dl.netx import hdf5

    path = tmp_path / "net.h5"
    NX.write_netx(netx_plan, path)
    net = hdf5.Network(net_config=str(path), input_message_bits=netx_plan.input_bits)
    try:
        assert len(net.layers) == netx_plan.num_layers
        for block, layer in zip(net.layers, netx_plan.network.layers):
            syn, lif = block.synapse, block.neuron
            w = np.asarray(syn.weights.init, dtype=np.int64)
            exp = int(syn.proc_params["weight_exp"])
            # Lava's Dense clips and truncates these on its first step (its own rules, transcribed in
            # NX.netx_synapse and checked against Lava in test_netx_synapse_is_netx_and_lava below).
            want = lava_effective_weights(layer.weight).astype(np.float64) * 2.0 ** layer.weight_exp
            np.testing.assert_array_equal(w * 2.0 ** exp, want)
            assert int(syn.proc_params["num_message_bits"]) == layer.num_message_bits
            assert (int(lif.du.init), int(lif.dv.init), int(lif.vth.init)) == (layer.du, layer.dv, layer.vth)
            np.testing.assert_array_equal(
                np.asarray(lif.bias_mant.init, np.int64) << int(lif.bias_exp.init),
                effective_bias(layer.bias_mant, layer.bias_exp))
    finally:
        net.net_config.f.close()


@pytest.mark.lava
def test_netx_synapse_is_netx_and_lava():
    """``NX.netx_synapse`` (what the writer checks against) == netx's own ``optimize_weight_bits``
    followed by Lava's own weight clip/truncate, on plan weights and on the cases netx gets wrong."""
    from lava.lib.dl.netx.utils import optimize_weight_bits
    from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

    rng = np.random.default_rng(3)
    cases = {
        "plan layer 0": lava_effective_weights(make_plan(0, True).network.layers[0].weight) >> 1,
        "plan layer 1": lava_effective_weights(make_plan(0, True).network.layers[1].weight),
        "positive > 255": np.array([[300, 10], [4, 0]]),
        "mixed out of range": np.array([[400, -3], [-300, 8]]),
        "mixed odd small": rng.integers(-40, 41, (6, 5)),
        "inhibitory power of two": np.array([[-64, -3], [-1, -7]]),
        "non-positive with zeros": np.array([[-2, 0], [-1, 0]]),
        "excitatory": rng.integers(0, 256, (4, 7)),
    }
    for label, w in cases.items():
        mine = NX.netx_synapse(w)
        with np.errstate(divide="ignore"):  # netx divides by a zero max for non-positive weights
            ws, bits, exp, _ = optimize_weight_bits(np.asarray(w).astype(int).copy())
        mode = determine_sign_mode(ws)
        lava = truncate_weights(clip_weights(ws, mode, num_bits=8), mode, bits)
        assert (mine.num_weight_bits, mine.weight_exp) == (bits, exp), label
        np.testing.assert_array_equal(mine.weights, lava, err_msg=label)
        representable = label.startswith(("plan", "mixed odd", "excitatory"))
        assert mine.computes(w) == representable, label


# ----------------------------------------------------------------------------------------------
# (3) unrepresentable plans: one-line error naming layer and parameter, and no file
# ----------------------------------------------------------------------------------------------

def one_layer_plan(weight, weight_exp=0, bias_mant=None, bias_exp=0) -> DeploymentPlan:
    weight = np.asarray(weight, dtype=np.int64)
    bias = np.zeros(weight.shape[0], np.int64) if bias_mant is None else np.asarray(bias_mant, np.int64)
    layer = FixedPointLayer(name="lif1", weight=weight, weight_exp=weight_exp, du=100, dv=200, vth=50,
                            bias_mant=bias, bias_exp=bias_exp, num_message_bits=8)
    return DeploymentPlan.of_network(FixedPointNetwork((layer,)), num_steps=4)


@pytest.mark.parametrize("plan_fn, parameter, words", [
    (lambda: make_plan(0, netx=False), "weight_exp = -4", ["not a multiple of 2**4"]),
    (lambda: one_layer_plan([[10, 20], [30, 40]], bias_mant=[64, 5]), "bias", ["5", "multiple of 2**6"]),
    (lambda: one_layer_plan([[200, 20], [30, 40]], weight_exp=1), "weight", ["above 255", "400"]),
    (lambda: one_layer_plan([[200, -20], [30, 40]], weight_exp=1), "weight", ["clipped", "400"]),
    (lambda: one_layer_plan([[-64, -2], [-6, -4]]), "weight", ["-255"]),
    (lambda: one_layer_plan([[0, 0], [0, 0]]), "weight", ["all-zero"]),
    (lambda: one_layer_plan([[2, 4], [6, 8]], bias_mant=[4095, 0], bias_exp=7), "bias", ["8190", "13-bit"]),
])
def test_unrepresentable_plans_raise_and_write_nothing(plan_fn, parameter, words, tmp_path):
    plan = plan_fn()
    path = tmp_path / "net.h5"
    with pytest.raises(NX.NetxUnrepresentableError) as info:
        NX.write_netx(plan, path)
    msg = str(info.value)
    assert isinstance(info.value, TargetError)
    assert "\n" not in msg and "layer 0 (lif1)" in msg and f"{parameter}" in msg, msg
    for word in words:
        assert word in msg, msg
    assert list(tmp_path.iterdir()) == []
    # An existing file is left as it was.
    path.write_bytes(b"previous export")
    with pytest.raises(NX.NetxUnrepresentableError):
        NX.write_netx(plan, path)
    assert path.read_bytes() == b"previous export" and list(tmp_path.iterdir()) == [path]


def test_a_representable_hand_built_plan_with_exponents_is_written(tmp_path):
    """Exponents are not refused as such: weight_exp 1 with weights that fit 8 bits after the shift,
    weight_exp -2 on multiples of 4 and bias_exp 7 all have an exact file form."""
    plan = one_layer_plan([[100, -20], [30, 40]], weight_exp=1, bias_mant=[1, -3], bias_exp=7)
    NX.write_netx(plan, tmp_path / "a.h5")
    got = NX.read_netx(tmp_path / "a.h5")["layers"][0]
    np.testing.assert_array_equal(got["weight"], [[200, -40], [60, 80]])
    np.testing.assert_array_equal(got["bias"], [2, -6])
    plan = one_layer_plan([[100, -20], [32, 40]], weight_exp=-2)
    NX.write_netx(plan, tmp_path / "b.h5")
    np.testing.assert_array_equal(NX.read_netx(tmp_path / "b.h5")["layers"][0]["weight"],
                                  [[25, -5], [8, 10]])


# ----------------------------------------------------------------------------------------------
# (4) the quantizer option
# ----------------------------------------------------------------------------------------------

def plan_digest(plan: DeploymentPlan) -> str:
    h = hashlib.sha256()
    for layer in plan.network.layers:
        h.update(np.ascontiguousarray(layer.weight, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(layer.bias_mant, dtype=np.int64).tobytes())
        h.update(repr((layer.name, layer.weight_exp, layer.bias_exp, layer.du, layer.dv, layer.vth,
                       layer.num_message_bits)).encode())
    h.update(repr((plan.input_scale, plan.threshold_scales, plan.num_steps, plan.dt)).encode())
    return h.hexdigest()


#: Digests of the default plans made by the quantizer as it was before ``netx_compatible`` existed
#: (``git show``: hw_targets/loihi2/quantize.py at the commit before the option; same floats).
DEFAULT_DIGESTS = {0: "ab1705b1cc371b03567759cec7eb2be90939cac1f4fde20edf244b08c9c41d81",
                   7: "83ef72ee69ab483828fb6cc8053ed00e7f75ce7613887c7658fee78eccd8f062"}


@pytest.mark.parametrize("seed", sorted(DEFAULT_DIGESTS))
def test_default_plans_are_unchanged_and_the_option_changes_them(seed):
    default = make_plan(seed, netx=False)
    assert plan_digest(default) == DEFAULT_DIGESTS[seed]
    plan, _ = Q.plan_from_float(trained_like(seed), input_scale=1.0 / 60, input_bits=8, num_steps=T)
    assert plan_digest(plan) == DEFAULT_DIGESTS[seed]            # the option off == its default
    assert plan_digest(make_plan(seed, netx=True)) != DEFAULT_DIGESTS[seed]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_netx_compatible_plans_are_valid_deployable_and_writable(seed, tmp_path):
    plan, report = Q.plan_from_float(trained_like(seed), input_scale=1.0 / 60, input_bits=8,
                                     num_steps=T, netx_compatible=True)
    for layer, info in zip(plan.network.layers, report.layers):
        assert layer.bias_exp == Q.NETX_BIAS_EXP
        assert layer.weight_exp in (0, -1)
        assert info.a_out_fits and info.bias_saturated == 0
    # DeploymentPlan validation (the constructor), a save/load round trip, and the design rules.
    again = DeploymentPlan(network=plan.network, input_scale=plan.input_scale,
                           threshold_scales=plan.threshold_scales, num_steps=plan.num_steps, dt=plan.dt)
    plan.save(tmp_path / "p.safetensors")
    assert plan_digest(DeploymentPlan.load(tmp_path / "p.safetensors")) == plan_digest(again)
    assert rules.errors(rules.check(plan.network)) == []
    report = NX.write_netx(plan, tmp_path / "net.h5")
    assert [r["name"] for r in report["layers"]] == ["lif1", "lif2", "lif3"]
    # The default plan of the same floats is refused (its exponents have no file form).
    with pytest.raises(NX.NetxUnrepresentableError):
        NX.write_netx(make_plan(seed, netx=False), tmp_path / "default.h5")
