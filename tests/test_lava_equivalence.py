"""ReferenceSimulator == Lava fixed_pt, spike for spike and state for state (the equivalence ladder).

Every Lava run costs ~0.5 s of start-up per sample, so these tests are few and small.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stft_neuro.hw_targets.loihi2 import constants as C
from stft_neuro.hw_targets.loihi2 import weights as W
from stft_neuro.sim import lava_runner
from stft_neuro.sim.reference import ReferenceSimulator

from test_reference_sim import (assert_spikes_equal, assert_state_equal, random_inputs,
                                random_network)

pytestmark = [pytest.mark.lava,
              pytest.mark.skipif(not lava_runner.lava_available(), reason="Lava not importable")]


def _compare(net, x, th, state=None):
    ref = ReferenceSimulator(net)
    s_ref, st_ref = ref.run(x, th, state)
    s_lava, st_lava = lava_runner.LavaRunner(net).run(x, th, state)
    assert_spikes_equal(s_ref, s_lava)
    assert_state_equal(st_ref, st_lava)
    return s_ref, st_ref


@pytest.mark.parametrize("seed,n_layers,extreme", [(11, 1, False), (12, 2, False), (13, 3, False),
                                                   (14, 3, True), (15, 2, True)])
def test_lava_fixed_pt_equals_reference(seed, n_layers, extreme):
    net = random_network(seed, n_layers, extreme=extreme)
    x, _ = random_inputs(net, seed, T=12, B=2, theta=False)
    spikes, state = _compare(net, x, None)
    if extreme:  # the case is meant to reach the 24-bit limits
        hit = any(float(v.abs().max()) >= C.V_MAX for v in state.v) or \
            any(float(s.sum()) > 0 for s in spikes)
        assert hit


def test_lava_theta_lif_equals_reference_with_threshold_modulation():
    net = random_network(21, 2)
    x, th = random_inputs(net, 21, T=10, B=2, theta=True)
    _compare(net, x, th)


def test_lava_state_handover():
    net = random_network(31, 2)
    x, th = random_inputs(net, 31, T=10, B=1, theta=False)
    _, st1 = ReferenceSimulator(net).run(x[:4])
    _compare(net, x[4:], None, st1)


def test_lava_rejects_non_integer_payloads():
    net = random_network(41, 1)
    with pytest.raises(ValueError, match="integers"):
        lava_runner.LavaRunner(net).run(torch.full((2, 1, net.n_in), 0.5))


@pytest.mark.parametrize("seed", range(20))
def test_effective_weights_match_lava_weightutils(seed):
    from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights
    rng = np.random.default_rng(seed)
    lo, hi = [(-300, 300), (0, 300), (-300, 0), (-3, 3)][seed % 4]
    w = rng.integers(lo, hi + 1, (5, 7))
    mode = determine_sign_mode(w)
    expected = truncate_weights(clip_weights(w, mode, num_bits=8), mode, 8)
    np.testing.assert_array_equal(W.lava_effective_weights(w), expected)
