"""sim/dense_kernels.py: every offered kernel is bit-exact (real sizes, worst cases, random
shapes); preconditions reject what is not exact, and the rejection is not vacuous; the chooser
returns an exact kernel, caches it and honours force / the environment variable."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stft_neuro import machine
from stft_neuro.hw_targets.loihi2 import arithmetic as A
from stft_neuro.hw_targets.loihi2 import constants as C
from stft_neuro.sim import dense_kernels as D

SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
GRADED8 = D.PayloadRange.for_message_bits(8)      # [-128, 127]
BINARY = D.PayloadRange.for_message_bits(0)       # [0, 1]


def mixed_weights(rng: np.random.Generator, n_out: int, n_in: int) -> np.ndarray:
    """Lava-effective mixed-sign weights: even values in [-256, 254]."""
    return rng.integers(C.WEIGHT_MANT_MIN, C.WEIGHT_MANT_MAX + 1, (n_out, n_in)) * 2


def reference(x: torch.Tensor, w: np.ndarray) -> np.ndarray:
    """The exact product in int64 numpy."""
    return x.to(torch.int64).numpy() @ w.T.astype(np.int64)


def assert_all_exact(w: np.ndarray, payload: D.PayloadRange, x: torch.Tensor,
                     expect: set[str] | None = None) -> None:
    ks = D.exact_kernels(w, payload)
    if expect is not None:
        assert {k.name for k in ks} == expect
    ref = reference(x, w)
    for k in ks:
        out = k.accumulate(x)
        assert out.dtype == torch.float64 and out.shape == (x.shape[0], w.shape[0])
        assert np.array_equal(out.numpy(), ref.astype(np.float64)), k.name
        assert np.array_equal(out.numpy().astype(np.int64), ref), k.name
        assert np.array_equal(k.raw(x).to(torch.float64).numpy() * k.step, ref), k.name


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    D.clear_cache()
    yield
    D.clear_cache()


# ----------------------------------------------------------------------------------------- sizes

@pytest.mark.parametrize("n_in,n_out,payload", [(512, 256, GRADED8), (256, 256, BINARY),
                                                (256, 128, BINARY)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64])
def test_real_sizes_random(n_in, n_out, payload, dtype):
    rng = np.random.default_rng(n_in + n_out)
    w = mixed_weights(rng, n_out, n_in)
    x = D.calibration_input(n_in, payload, 300, torch.device("cpu"), dtype=dtype, seed=3)[:128]
    assert_all_exact(w, payload, x, expect={"float32", "float64"} | (
        {"int8"} if D.int_mm_is_exact(n_in, n_out) else set()))


@pytest.mark.parametrize("wval,xval", [(-256, -128), (-256, 127), (254, -128), (254, 127)])
def test_worst_case_512_graded_reaches_float32_bound(wval, xval):
    """All payloads at an extreme, all weights at an extreme: |sum| = 512 * 256 * 128 = 2**24 for
    (-256, -128), exactly the float32 bound, which is therefore still offered."""
    w = np.full((256, 512), wval, dtype=np.int64)
    w[1::2] = -256 if wval == 254 else 254           # some rows of the other sign
    x = torch.full((64, 512), float(xval))
    x[1::3] = -128.0 if xval == 127 else 127.0
    assert GRADED8.abs_max * D.max_row_abs_sum(w) <= D.FLOAT32_EXACT_MAX
    assert_all_exact(w, GRADED8, x)
    assert "float32" in {k.name for k in D.exact_kernels(w, GRADED8)}
    if wval == -256 and xval == -128:
        assert reference(x[:1], w[:1])[0, 0] == 2 ** 24


def test_worst_case_binary_alternating_extremes():
    rng = np.random.default_rng(7)
    w = np.where(rng.random((128, 256)) < 0.5, -256, 254)
    x = torch.ones(40, 256)
    x[::2, ::2] = 0.0
    assert_all_exact(w, BINARY, x)


# --------------------------------------------------------------------------------- preconditions

def test_float32_not_offered_where_it_rounds():
    """n_in = 1041 weights of 254 and payloads of 127: the exact sum 1041 * 254 * 127 = 33,580,578
    lies above 2**25 and is 2 mod 4, so it is not a float32 at all: float32 must round there."""
    n_in = 1041
    w = np.full((8, n_in), 254, dtype=np.int64)
    x = torch.full((4, n_in), 127.0)
    exact = int(reference(x[:1], w[:1])[0, 0])
    assert exact == 33_580_578 and exact > 2 ** 25 and exact % 4 == 2
    f32 = (x.to(torch.float32) @ torch.as_tensor(w.T, dtype=torch.float32)).to(torch.float64)
    assert not torch.equal(f32, torch.full_like(f32, float(exact)))       # float32 does round
    kernels, rejected = D.kernel_report(w, GRADED8)
    assert "float32" not in {k.name for k in kernels} and "2**24" in rejected["float32"]
    assert_all_exact(w, GRADED8, x)                                      # the others are exact
    with pytest.raises(ValueError, match="float32.*not exact"):
        D.choose_kernel(w, GRADED8, 4, force="float32")


def test_payload_128_times_abs_sum_over_bound():
    """The brief's example: payload 128 * sum|w| > 2**24 (n_in = 513 at -256) rejects float32."""
    w = np.full((4, 513), -256, dtype=np.int64)
    assert 128 * D.max_row_abs_sum(w) > 2 ** 24
    assert "float32" in D.kernel_report(w, GRADED8)[1]


def test_int8_preconditions():
    rng = np.random.default_rng(1)
    odd = rng.integers(-128, 128, (16, 32)) | 1              # odd: step 1, still fits int8
    if D.int_mm_is_exact(32, 16):
        assert "int8" in {k.name for k in D.exact_kernels(odd, BINARY)}
    exc = rng.integers(0, 256, (16, 32))                     # excitatory up to 255: not int8
    exc[0, 0] = 255
    assert "int8" in D.kernel_report(exc, BINARY)[1]
    w = mixed_weights(rng, 16, 32)
    assert "int8" in D.kernel_report(w, (0, 128))[1]         # payload 128 does not fit int8
    assert "int8" in D.kernel_report(w, D.PayloadRange.for_message_bits(9))[1]
    assert_all_exact(exc, BINARY, torch.ones(5, 32))


def test_int8_selftest_detects_a_saturating_gemm(monkeypatch):
    """A saturating int8 GEMM (int16 pair sums, as pre-VNNI ``vpmaddubsw``) fails the self-test."""
    def saturating(a, b):
        prod = a.to(torch.int32)[:, :, None] * b.to(torch.int32)[None, :, :]    # (m, k, n)
        k = prod.shape[1] - prod.shape[1] % 2
        pairs = (prod[:, 0:k:2] + prod[:, 1:k:2]).clamp(-(2 ** 15), 2 ** 15 - 1)
        return pairs.sum(1, dtype=torch.int32) + prod[:, k:].sum(1, dtype=torch.int32)

    monkeypatch.setattr(torch, "_int_mm", saturating)
    D.clear_cache()
    assert not D.int_mm_is_exact(64, 16)
    w = mixed_weights(np.random.default_rng(2), 16, 64)
    assert "self-test" in D.kernel_report(w, GRADED8)[1]["int8"]


def test_int8_refused_shape_falls_back(monkeypatch):
    """A row count the backend refuses (RuntimeError) falls back to the exact float kernel."""
    w = mixed_weights(np.random.default_rng(4), 8, 16)
    ks = {k.name: k for k in D.exact_kernels(w, GRADED8)}
    if "int8" not in ks:
        pytest.skip("int8 not offered on this backend")
    real = torch._int_mm

    def picky(a, b):
        if a.shape[0] <= 16:
            raise RuntimeError("m must be > 16")
        return real(a, b)

    monkeypatch.setattr(torch, "_int_mm", picky)
    x = torch.randint(-128, 128, (5, 16)).float()
    assert np.array_equal(ks["int8"].accumulate(x).numpy(), reference(x, w))


def test_float32_rejected_when_matmul_precision_lowered():
    w = mixed_weights(np.random.default_rng(5), 4, 8)
    k32 = {k.name: k for k in D.exact_kernels(w, BINARY)}["float32"]
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert "float32" in D.kernel_report(w, BINARY)[1]
        with pytest.raises(RuntimeError, match="no longer IEEE"):
            k32.accumulate(torch.ones(2, 8))
    finally:
        torch.set_float32_matmul_precision(old)


def test_bad_input_shape_and_weights():
    w = mixed_weights(np.random.default_rng(6), 4, 8)
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        D.exact_kernels(w, BINARY)[0].accumulate(torch.ones(2, 9))
    with pytest.raises(ValueError, match="integers"):
        D.exact_kernels(w + 0.5, BINARY)
    with pytest.raises(ValueError):
        D.PayloadRange(2, 1)


# ---------------------------------------------------------------------------------------- chooser

def test_chooser_picks_an_exact_kernel_and_caches(monkeypatch):
    w = mixed_weights(np.random.default_rng(8), 128, 256)
    k = D.choose_kernel(w, BINARY, 256)
    assert k.name in {x.name for x in D.exact_kernels(w, BINARY)}
    cal = list(D.calibrations().values())
    assert len(cal) == 1 and cal[0].chosen == k.name
    monkeypatch.setattr(D, "measure", lambda *a, **kw: pytest.fail("not cached"))
    assert D.choose_kernel(w, BINARY, 300).name == k.name                  # same rows bucket
    x = D.calibration_input(256, BINARY, 50, torch.device("cpu"))
    assert np.array_equal(k.accumulate(x).numpy(), reference(x, w))


def test_chooser_force_and_env(monkeypatch):
    w = mixed_weights(np.random.default_rng(9), 16, 32)
    monkeypatch.setattr(D, "measure", lambda *a, **kw: pytest.fail("forced: no timing"))
    assert D.choose_kernel(w, BINARY, 64, force="float64").name == "float64"
    monkeypatch.setenv(D.ENV_VAR, "float32")
    assert D.choose_kernel(w, BINARY, 64).name == "float32"
    assert D.choose_kernel(w, BINARY, 64, force="float64").name == "float64"   # force wins
    monkeypatch.setenv(D.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="unknown kernel 'bogus'"):
        D.choose_kernel(w, BINARY, 64)
    monkeypatch.setenv(D.ENV_VAR, "int8")
    with pytest.raises(ValueError, match="int8.*not exact"):
        D.choose_kernel(w, (0, 200), 64)                                   # payload > int8


def test_measure_prefers_the_faster_kernel():
    """With one kernel made artificially slow, the measurement picks the other."""
    import time as _t
    w = mixed_weights(np.random.default_rng(10), 32, 64)
    ks = {k.name: k for k in D.exact_kernels(w, BINARY)}
    f32 = ks["float32"]

    def slow(inp):
        _t.sleep(0.025)        # far above the scheduler stalls of a loaded shared machine
        return ks["float64"].raw(inp)

    slow64 = D.DenseKernel("float64", 64, 32, 1, ks["float64"].bound, f32.device, slow)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)   # a busy neighbour core stalls multi-threaded calls
        cal = D.measure([slow64, f32], BINARY, 2560)
    finally:
        torch.set_num_threads(threads)
    assert cal.chosen == "float32"
    assert "float64" not in cal.seconds                                    # pruned by the probe


def test_cpu_description():
    """The one machine description every benchmark uses (stft_neuro/machine.py)."""
    d = machine.cpu_description()
    assert d["model"] and d["torch_threads"] == torch.get_num_threads()
    assert set(d["flags"]) <= set(machine.RELEVANT_FLAGS)
    assert d["int_mm_path"] in ("oneDNN", "naive loop")
    assert machine.cpu_name().startswith(f"{d['model']}, {d['logical_cpus']} CPUs, flags: ")


# ------------------------------------------------------------------------------------- property

@SETTINGS
@given(n_in=st.integers(1, 96), n_out=st.integers(1, 40), rows=st.integers(1, 48),
       bits=st.sampled_from([0, 2, 4, 8, 9, 16]), mode=st.sampled_from(["mixed", "exc", "inh"]),
       extreme=st.booleans(), seed=st.integers(0, 2 ** 16),
       weight_exp=st.integers(C.WEIGHT_EXP_MIN, C.WEIGHT_EXP_MAX))
def test_property_every_offered_kernel_is_exact(n_in, n_out, rows, bits, mode, extreme, seed, weight_exp):
    """Every offered kernel gives the exact product, and with the weight exponent applied
    (``arithmetic.shift_floor``, as the reference simulator does) the one Dense definition,
    ``arithmetic.dense``."""
    rng = np.random.default_rng(seed)
    p = D.PayloadRange.for_message_bits(bits)
    if mode == "mixed":
        w = mixed_weights(rng, n_out, n_in)
        if extreme:
            w = np.where(w < 0, C.WEIGHT_MIN_MIXED, C.WEIGHT_MAX_MIXED)
    else:
        w = rng.integers(0, C.WEIGHT_MAX_UNSIGNED + 1, (n_out, n_in))
        if extreme:
            w[:] = C.WEIGHT_MAX_UNSIGNED
        w = w if mode == "exc" else -w
    if extreme:
        x = torch.tensor(rng.choice([p.lo, p.hi], (rows, n_in)), dtype=torch.float32)
    else:
        x = torch.tensor(rng.integers(p.lo, p.hi + 1, (rows, n_in)), dtype=torch.float32)
    kernels, rejected = D.kernel_report(w, p)
    assert "float64" in {k.name for k in kernels}
    assert set(rejected) | {k.name for k in kernels} == set(D.KERNEL_NAMES)
    bound = D.partial_sum_bound(w, p)
    assert ("float32" in {k.name for k in kernels}) == (bound <= D.FLOAT32_EXACT_MAX)
    assert_all_exact(w, p, x)
    want = A.dense(x.double(), torch.tensor(w, dtype=torch.float64), weight_exp)
    for k in kernels:
        assert torch.equal(A.shift_floor(k.accumulate(x), weight_exp), want), k.name



def test_one_input_layer_is_exact_on_every_kernel():
    """A one-input layer: ``W.T`` is ``(1, n_out)``, whose numpy strides on the length-1 axis are
    arbitrary; every kernel (int8 ``_int_mm`` in particular, which read such an operand with a
    leading dimension of 1 and returned garbage) must still give the exact product."""
    w = np.array([[2], [-4], [6], [-128]])
    x = torch.tensor([[1.0], [0.0], [1.0]])
    kernels = D.exact_kernels(w, BINARY)
    assert {k.name for k in kernels} >= {"float32", "float64"}
    for k in kernels:
        assert torch.equal(k.accumulate(x), torch.tensor(reference(x, w), dtype=torch.float64)), k.name
