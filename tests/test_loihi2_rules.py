"""Design rules for Loihi 2 (hw_targets/loihi2/rules.py): every violation, named, at once."""
from __future__ import annotations

import numpy as np
import pytest

from stft_neuro.hw_targets.errors import DesignRuleError
from stft_neuro.hw_targets.loihi2 import constants as C
from stft_neuro.hw_targets.loihi2 import rules as R
from stft_neuro.hw_targets.loihi2.network import FixedPointLayer, FixedPointNetwork


def make_layer(name, n_in, n_out, *, seed=0, weight=None, weight_exp=0, du=2047, dv=1024,
               vth=1000, bias_mant=None, bias_exp=0, num_message_bits=0):
    rng = np.random.default_rng(seed)
    if weight is None:
        weight = 2 * rng.integers(-10, 11, size=(n_out, n_in))  # even, mixed sign
    if bias_mant is None:
        bias_mant = rng.integers(-100, 101, size=n_out)
    return FixedPointLayer(name=name, weight=weight, weight_exp=weight_exp, du=du, dv=dv,
                           vth=vth, bias_mant=bias_mant, bias_exp=bias_exp,
                           num_message_bits=num_message_bits)


def valid_network() -> FixedPointNetwork:
    """512-256-256-128: graded 8-bit host input, then binary spikes."""
    return FixedPointNetwork((
        make_layer("lif1", 512, 256, seed=1, weight_exp=-6, num_message_bits=8),
        make_layer("lif2", 256, 256, seed=2),
        make_layer("lif3", 256, 128, seed=3),
    ))


def by_rule(violations):
    return {(v.rule, v.layer): v for v in violations}


def test_valid_network_passes_every_rule():
    net = valid_network()
    assert R.check(net) == []
    assert R.ensure_deployable(net) == []


def test_rules_are_named_documented_functions():
    names = [rule.__name__ for rule in R.RULES]
    assert len(names) == len(set(names))
    assert all(rule.__doc__ for rule in R.RULES)


def broken_network() -> FixedPointNetwork:
    w1 = 2 * np.random.default_rng(0).integers(-5, 6, size=(256, 512))
    w1[3, 7] = 300
    # 10000 neurons with fan-in 2048: 2048 * 8 bits each, 64 per core -> 157 cores > 120.
    w3 = np.broadcast_to(np.int8(2), (10000, 2048))
    return FixedPointNetwork((
        make_layer("lif1", 512, 256, weight=w1, weight_exp=-6, num_message_bits=8),
        make_layer("lif2", 256, 256, vth=200_000),
        make_layer("lif3", 2048, 10000, weight=w3, bias_mant=np.zeros(10000, dtype=np.int64)),
    ))


def test_broken_network_reports_every_violation_with_layer_and_amount():
    found = by_rule(R.check(broken_network()))
    expected = {
        ("weight_mantissa_8bit", "lif1"): "layer lif1 has weight 300 > 254 (by 46)",
        ("vth_17bit", "lif2"): "layer lif2 has vth 200000 > 131071 (by 68929)",
        ("layer_shapes_chain", "lif3"): "layer lif3 has n_in 2048 != 256 (by 1792)",
        ("cores_per_chip", None): "the network has cores 159 > 120 (by 39)",
    }
    for key, text in expected.items():
        assert key in found, f"missing {key}"
        assert text in found[key].message, found[key].message
        assert found[key].message.startswith(f"Design rule {key[0]}: ")
    v = found[("weight_mantissa_8bit", "lif1")]
    assert (v.value, v.limit) == (300, 254)
    assert "first at [3, 7]" in v.message
    assert "lif3: 157" in found[("cores_per_chip", None)].message


def test_ensure_deployable_lists_all_violations_in_one_error():
    with pytest.raises(DesignRuleError) as info:
        R.ensure_deployable(broken_network())
    msg = str(info.value)
    for text in ("weight 300 > 254 (by 46)", "vth 200000 > 131071 (by 68929)",
                 "n_in 2048 != 256 (by 1792)", "cores 159 > 120 (by 39)"):
        assert text in msg


@pytest.mark.parametrize("weight, ok", [
    (np.array([[255, 0]]), True),        # excitatory: [0, 255]
    (np.array([[256, 0]]), False),
    (np.array([[-255, 0]]), True),       # inhibitory: [-255, 0]
    (np.array([[-256, 0]]), False),
    (np.array([[-256, 254]]), True),     # mixed: [-256, 254], even
    (np.array([[-258, 254]]), False),
])
def test_weight_range_follows_lava_sign_modes(weight, ok):
    net = FixedPointNetwork((make_layer("l", 2, 1, weight=weight),))
    assert (R.weight_mantissa_8bit(net) == []) == ok


def test_odd_mixed_sign_weights_are_reported():
    net = FixedPointNetwork((make_layer("l", 3, 1, weight=np.array([[-4, 3, 5]])),))
    (v,) = R.weight_mixed_sign_even(net)
    assert "2 odd mixed-sign weights (first 3 at [0, 1])" in v.message
    one_signed = FixedPointNetwork((make_layer("l", 3, 1, weight=np.array([[1, 3, 5]])),))
    assert R.weight_mixed_sign_even(one_signed) == []


def test_scalar_and_bias_ranges():
    net = FixedPointNetwork((make_layer(
        "l", 4, 2, du=4096, dv=-1, bias_mant=np.array([4095, -4097]), bias_exp=8,
        weight_exp=9, num_message_bits=9),))
    found = R.check(net)
    msgs = "\n".join(v.message for v in found)
    assert "layer l has du 4096 > 4095 (by 1)" in msgs
    assert "layer l has dv -1 < 0 (by 1)" in msgs
    assert "layer l has bias_mant -4097 < -4096 (by 1)" in msgs
    assert "layer l has bias_exp 8 > 7 (by 1)" in msgs
    assert f"layer l has weight_exp 9 > {C.WEIGHT_EXP_MAX} (by 2)" in msgs
    assert f"layer l has num_message_bits 9 > {C.INPUT_BITS_MAX} (by 1)" in msgs


def test_float_parameters_and_bad_shapes_are_reported():
    bad = FixedPointNetwork((
        make_layer("a", 4, 3, weight=np.zeros((3, 4)), bias_mant=np.zeros(2, dtype=int)),
        make_layer("a", 3, 2),
    ))
    found = by_rule(R.check(bad))
    assert "weight of dtype float64" in found[("integer_parameters", "a")].message
    assert "bias_mant of shape (2,) != (3,)" in found[("layer_shapes_chain", "a")].message
    assert ("layer_names_unique", "a") in found
    assert R.layer_shapes_chain(FixedPointNetwork(()))[0].message.endswith("has no layers")


def test_accumulation_bounds_are_the_layers_with_lavas_weights():
    """The rules read the layer's bounds (pinned by brute force in test_loihi2_bounds.py), which
    use the weights Lava keeps: an odd mixed-sign -3 acts as -4 (truncated to even, floor)."""
    net = FixedPointNetwork((make_layer("x", 2, 1, weight=np.array([[-3, 4]])),))
    assert R.accumulation_bounds(net, 0) == net.layers[0].accumulation_range == (-4, 4)


def test_dense_output_applies_weight_exp_like_lava():
    w = np.array([[-255, 0], [0, 0]])  # inhibitory
    net = FixedPointNetwork((make_layer("x", 2, 2, weight=w, weight_exp=-3),))
    assert R.dense_output_bounds(net, 0) == (-255 >> 3, 0)  # floor, as np.right_shift


def test_overflowing_arithmetic_is_an_error_and_sustained_u_a_warning():
    w = np.full((2, 512), 254)
    loud = FixedPointNetwork((make_layer("x", 512, 2, weight=w, weight_exp=7),))
    found = by_rule(R.check(loud))
    assert "worst-case Dense output 16646144 > 32767" in found[("dense_output_16bit", "x")].message
    assert ("u_input_no_wrap", "x") in found

    # a_out = 512 * 2 = 1024 fits; 1024 << 6 = 65536 per step; du = 0 -> bound 65536 * 4096.
    quiet = FixedPointNetwork((make_layer("x", 512, 2, weight=np.full((2, 512), 2), du=0),))
    (warn,) = R.check(quiet)
    assert warn.rule == "u_worst_case_no_wrap" and warn.severity == R.WARNING
    assert warn.value == 65536 * 4096
    assert R.ensure_deployable(quiet) == [warn]  # warnings do not raise
