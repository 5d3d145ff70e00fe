"""The deployment plan: host -> chip conversions, checks, and saving without pickle."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stft_neuro.hw_targets.errors import ChipInputError, PlanFormatError
from stft_neuro.hw_targets.loihi2 import constants as C
from stft_neuro.hw_targets.loihi2 import quantize as Q
from stft_neuro.hw_targets.loihi2.plan import PLAN_VERSION, DeploymentPlan

from test_reference_sim import random_network


def small_plan(seed: int = 0, bits: int = 8) -> DeploymentPlan:
    rng = np.random.default_rng(seed)
    floats = [Q.FloatLayer(name=f"lif{l + 1}", weight=rng.normal(0, 0.4, (n_out, n_in)),
                           bias=rng.normal(0, 0.05, n_out), du=0.25, dv=0.1, threshold=1.0)
              for l, (n_in, n_out) in enumerate(zip((12, 10, 8), (10, 8, 6)))]
    plan, _ = Q.plan_from_float(floats, input_scale=0.03, input_bits=bits, num_steps=7)
    return plan


@settings(max_examples=50, deadline=None, derandomize=True)
@given(bits=st.integers(2, 8), scale=st.floats(1e-4, 10.0),
       values=st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=1, max_size=40))
def test_encode_input_is_rounding_with_saturation(bits, scale, values):
    plan = DeploymentPlan.of_network(random_network(1, 1, input_bits=bits), input_scale=scale)
    x = torch.tensor(values, dtype=torch.float32)
    p = plan.encode_input(x)
    lo, hi = plan.payload_range
    expected = np.clip(np.round(np.asarray(values, dtype=np.float32).astype(np.float64) / scale), lo, hi)
    assert np.array_equal(p.numpy().astype(np.float64), expected)
    assert p.dtype == x.dtype


@settings(max_examples=50, deadline=None, derandomize=True)
@given(seed=st.integers(0, 1000), theta=st.floats(-1e6, 1e6, allow_nan=False))
def test_theta_to_chip_stays_within_the_17_bit_threshold(seed, theta):
    plan = small_plan(seed)
    t = plan.theta_to_chip(torch.full((3, plan.num_layers), theta))
    plan.check_theta(t)  # legal by construction
    vth = torch.tensor(plan.vth, dtype=t.dtype)
    assert bool(((t + vth) >= 0).all() and ((t + vth) <= C.VTH_MAX).all())
    assert torch.equal(t, t.round())


def test_conversions_have_straight_through_gradients():
    plan = small_plan()
    x = torch.randn(4, 12, requires_grad=True)
    plan.encode_input(x).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 1 / plan.input_scale))
    th = torch.zeros(2, 3, requires_grad=True)
    plan.theta_to_chip(th).sum().backward()
    assert torch.allclose(th.grad[0], torch.tensor(plan.threshold_scales, dtype=th.dtype))


def test_save_and_load_round_trip_exactly(tmp_path):
    plan = small_plan(3, bits=6)
    back = DeploymentPlan.load(plan.save(tmp_path / "p.safetensors"))
    assert back.to_dict() == plan.to_dict()
    assert back.input_scale == plan.input_scale and back.threshold_scales == plan.threshold_scales
    for a, b in zip(plan.network.layers, back.network.layers):
        assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias_mant, b.bias_mant)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def _rewrite_header(path, edit):
    """Rewrite the JSON header of a safetensors file (format: u64 length, JSON, data)."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    head = json.loads(raw[8:8 + n])
    edit(head)
    new = json.dumps(head).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


@pytest.mark.parametrize("damage, fragment", [
    ("missing", "does not exist"),
    ("empty", "not a deployment plan"),
    ("truncated", "not a deployment plan"),
    ("text", "not a deployment plan"),
    ("no_metadata", "not a deployment plan"),
    ("version", f"this stft-neuro reads version {PLAN_VERSION}"),
    ("weight_range", "weight must be integers"),
    ("vth", "vth = 999999"),
])
def test_damaged_plans_are_one_clear_error(tmp_path, damage, fragment):
    path = small_plan().save(tmp_path / "p.safetensors")
    raw = path.read_bytes()
    if damage == "missing":
        path.unlink()
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "text":
        path.write_text("hello")
    elif damage == "no_metadata":
        _rewrite_header(path, lambda h: h.pop("__metadata__"))
    elif damage == "version":
        def bump(h):
            meta = json.loads(h["__metadata__"]["stft_neuro.plan"])
            meta["version"] = PLAN_VERSION + 1
            h["__metadata__"]["stft_neuro.plan"] = json.dumps(meta)
        _rewrite_header(path, bump)
    elif damage == "vth":
        def bad_vth(h):
            meta = json.loads(h["__metadata__"]["stft_neuro.plan"])
            meta["layers"][1]["vth"] = 999999
            h["__metadata__"]["stft_neuro.plan"] = json.dumps(meta)
        _rewrite_header(path, bad_vth)
    elif damage == "weight_range":
        from safetensors.numpy import load_file, save_file
        from safetensors import safe_open
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata()
        arrays = load_file(str(path))
        arrays["layers.0.weight"] = arrays["layers.0.weight"] * 0 + 4000
        save_file(arrays, str(path), metadata=meta)
    with pytest.raises(PlanFormatError) as info:
        DeploymentPlan.load(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_checks_accept_every_legal_value_and_name_the_first_bad_one():
    plan = small_plan(bits=4)
    lo, hi = plan.payload_range
    plan.check_payload(torch.tensor([[lo] * 6 + [hi] * 6], dtype=torch.float32))
    plan.check_payload(np.full((2, 3, 12), hi, dtype=np.int16))
    with pytest.raises(ChipInputError, match=r"first: 8 at index \(0, 2\)"):
        plan.check_payload(torch.tensor([[0, 0, hi + 1] + [0] * 9], dtype=torch.float32))
    with pytest.raises(ChipInputError, match="shape"):
        plan.check_payload(torch.zeros(12))
