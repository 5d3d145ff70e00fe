"""Exact integer Dense accumulation kernels (``inp @ W.T``), chosen per layer shape by measurement.

The reference simulator computes Lava's Dense accumulation ``W @ s`` for all ``T*B`` rows of a
layer at once: an ``(N, n_in) @ (n_in, n_out)`` product of integers. Several torch kernels give the
integer result bit for bit, each under a precondition; which one is fastest depends on the CPU
(the x86 machines here differ: some have AVX512-VNNI, some only AVX2): ``torch._int_mm`` is ~3x
a float32 matmul on an AVX512-VNNI CPU and ~30x *slower* on an AVX2-only one. So nothing is
guessed: every kernel whose precondition holds is offered (:func:`exact_kernels`), and
:func:`choose_kernel` times them on random inputs of the layer's shape and keeps the fastest
(cached per process).

Kernels (``KERNEL_NAMES``); each returns ``inp @ W.T`` exactly, as float64:

- ``float32``: float32 matmul. Exact when every partial sum is an integer of magnitude
  ``<= 2**24`` (the float32 significand, IEEE 754 binary32), whatever the summation order, blocking
  or FMA use of the BLAS: guaranteed by ``payload_abs_max * max_j sum_k |W_jk| <= 2**24`` (no
  ``n_in`` factor: it bounds every subset sum). Also requires IEEE float32 matmuls (no TF32 on
  CUDA, no bf16 "fp32 precision" on CPU); checked when made and on every call.
- ``float64``: float64 matmul, exact below ``2**53`` (IEEE 754 binary64). The fallback.
- ``int8``: ``torch._int_mm`` (int8 x int8 -> int32). Weights are divided by 2 when all are even
  (Lava keeps only even mixed-sign weights, ``C.WEIGHT_MIXED_STEP``), and must then fit int8, as
  must the payloads; the accumulation bound must fit int32 (``C.ACCUM_BITS``). **And the backend
  must pass a self-test** (:func:`int_mm_is_exact`): torch's CPU ``_int_mm`` calls oneDNN only on
  AVX512-VNNI CPUs (``aten/src/ATen/native/LinearAlgebra.cpp``, ``_int_mm_out_cpu``: oneDNN if
  ``userEnabledMkldnn() && is_avx512_vnni_supported()``, else a naive exact loop); oneDNN's
  pre-VNNI int8 GEMM *saturates* (measured here with ``ONEDNN_MAX_CPU_ISA=AVX2`` or
  ``AVX512_CORE`` on a VNNI CPU: 64x512 of 127 times 512x64 of -128 came out wrong by 8,323,072).
  A shape the backend refuses (CUDA: ``m > 16``, ``k``, ``n`` multiples of 8) raises RuntimeError:
  at construction the kernel is then not offered; at call time (fewer rows) it falls back to the
  layer's exact float kernel.

Rejected (measured, see ``bench/bench_kernels.py`` and its results): for binary spikes at ~13 %
firing, summing the rows of ``W.T`` of the active inputs (``nonzero`` + ``index_select`` +
``index_add_``) and ``torch.sparse.mm`` on a CSR/COO input were slower than the float32 matmul at
``T*B = 2560`` on this AMD EPYC (AVX512-VNNI) both natively and under the AVX2 emulation, and never
faster by more than noise at 10 rows; they are not offered.

Calibration (:func:`choose_kernel`) costs about ``CALIBRATION_BUDGET_S`` per distinct
``(shape, payload range, exact set, device, threads, rows bucket)`` and process; see its docstring.
``STFT_NEURO_DENSE_KERNEL=float32|float64|int8`` (or ``force=``) skips it.
"""
from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from stft_neuro.hw_targets.loihi2 import constants as C
from stft_neuro.hw_targets.loihi2.arithmetic import FLOAT32_EXACT_MAX
from stft_neuro.hw_targets.loihi2.network import PayloadRange

#: The same for float64 (53-bit significand, IEEE 754-2008 binary64).
FLOAT64_EXACT_MAX: int = 2 ** 53
#: int32 accumulation of ``torch._int_mm``: partial sums must stay below ``2**31``; the same
#: width as Lava's Dense accumulation (``C.ACCUM_BITS``).
INT32_MAX: int = 2 ** (C.ACCUM_BITS - 1) - 1
INT8_MIN, INT8_MAX = -(2 ** 7), 2 ** 7 - 1

#: Kernel names, in order of preference when timings tie (fallback last).
KERNEL_NAMES: tuple[str, ...] = ("int8", "float32", "float64")
#: Environment variable that forces a kernel for every layer (tests, benchmarks).
ENV_VAR = "STFT_NEURO_DENSE_KERNEL"

#: Binary-spike density of the random calibration inputs. The dense kernels' speed does not depend
#: on it; it is the firing rate issue #7 quotes for the 512-256-256-128 stack (~13 %).
CALIBRATION_SPIKE_RATE: float = 0.13
#: Target wall time of one calibration (seconds); the brief's limit is ~50 ms per layer shape.
CALIBRATION_BUDGET_S: float = 0.04
#: Rows of the first, cheap timing round that prunes hopeless kernels (a naive int8 loop at
#: ~1.5 GMAC/s would take ~220 ms on 2560 x 512 x 256; on 32 rows it takes ~3 ms).
PROBE_ROWS: int = 32
#: A kernel whose probe time is more than this multiple of the best is not timed further.
PRUNE_FACTOR: float = 3.0
#: Timed, interleaved repetitions per kernel per round (fastest taken); more if cheap.
TIMED_REPS: int = 3
MAX_REPS: int = 15


def _as_range(payload: PayloadRange | tuple[int, int]) -> PayloadRange:
    return payload if isinstance(payload, PayloadRange) else PayloadRange(*payload)


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DenseKernel:
    """One exact way to compute ``inp @ W.T`` for one weight matrix.

    ``accumulate(inp)``: ``inp`` is ``(N, n_in)``, a float or integer tensor of integer values in
    the payload range the kernel was made for (not checked: that is the caller's contract, as
    for Lava); returns ``(N, n_out)`` float64, equal to the integer product bit for bit.

    ``raw(inp)`` is the kernel's native result (float32, float64 or int32) of
    ``inp @ (W / step).T``, for callers that fold ``step`` into a later scale themselves (the
    simulator multiplies by ``2**weight_exp`` anyway): ``accumulate == raw.double() * step``.
    ``bound`` is the largest ``|partial sum|`` of ``raw`` the preconditions were checked with.
    """

    name: str
    n_in: int
    n_out: int
    step: int
    bound: int
    device: torch.device
    raw: Callable[[Tensor], Tensor] = field(repr=False, compare=False)

    def accumulate(self, inp: Tensor) -> Tensor:
        out = self.raw(inp)
        out = out.to(torch.float64)
        return out.mul_(float(self.step)) if self.step != 1 else out

    __call__ = accumulate


def float32_matmul_is_ieee(device: torch.device | str) -> bool:
    """Whether float32 matmuls on ``device`` are plain IEEE float32 (no TF32 / bf16 inside).

    CPU: ``torch.set_float32_matmul_precision("medium")`` lets oneDNN compute float32 matmuls in
    bf16 ("bf32"), and ``torch.backends.mkldnn.matmul.fp32_precision`` overrides it per backend.
    CUDA: ``allow_tf32`` and ``torch.backends.cuda.matmul.fp32_precision``. Anything but "highest"
    / "ieee" counts as not exact; so does a mix of the two APIs (torch then refuses to say).
    """
    return _ieee(torch.device(device).type)


def _ieee(dev_type: str) -> bool:
    if dev_type == "cuda":
        backend = getattr(torch.backends.cuda, "matmul", None)
    else:
        backend = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    prec = getattr(backend, "fp32_precision", "none")
    if prec == "ieee":
        return True
    if prec != "none":
        return False
    try:
        glob = torch.get_float32_matmul_precision()
    except RuntimeError:      # legacy and new precision APIs mixed: torch will not say
        return False
    if dev_type == "cuda":
        return glob == "highest" and not torch.backends.cuda.matmul.allow_tf32
    return glob == "highest"


def max_row_abs_sum(weight: np.ndarray) -> int:
    """``max_j sum_k |W_jk|`` as a Python int (0 for an empty matrix), exact (int64 sums)."""
    w = np.asarray(weight)
    if w.size == 0:
        return 0
    return int(np.abs(w.astype(np.int64)).sum(axis=1).max())


def partial_sum_bound(weight: np.ndarray, payload: PayloadRange) -> int:
    """Largest ``|partial sum|`` of ``inp @ weight.T`` for inputs in ``payload``, in any summation
    order: ``payload.abs_max * max_row_abs_sum(weight)`` (it bounds every subset of a row's terms).

    Not the Dense worst case (``FixedPointLayer.accumulation_range``, the exact range of the *full*
    sum, which is what Lava's int32 accumulator must hold: int32 addition wraps modulo ``2**32``, so
    its partial sums cannot matter). A float or saturating int8 kernel rounds or clips *partial*
    sums, so its exactness needs this bound on all of them.
    """
    return _as_range(payload).abs_max * max_row_abs_sum(weight)


#: Output columns of the int8 self-test (a multiple of 8, as CUDA's ``_int_mm`` requires).
SELFTEST_COLS: int = 16
_SELFTEST_CACHE: dict[tuple, bool] = {}
_LOCK = threading.Lock()


def _selftest_patterns(n_in: int, n_out: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(A (32, n_in), B (n_in, n_out))`` int8 patterns that catch a saturating int8 GEMM:
    rows/columns of all 127, all -128, alternating 127/-128 and random values (products of the
    extremes pair up to 2 * 127 * 128 > 2**15, where a ``vpmaddubsw`` int16 pair sum saturates)."""
    g = torch.Generator().manual_seed(0)
    alt = torch.tensor([INT8_MAX, INT8_MIN], dtype=torch.int8).repeat((n_in + 1) // 2)[:n_in]
    rows = [torch.full((n_in,), INT8_MAX, dtype=torch.int8),
            torch.full((n_in,), INT8_MIN, dtype=torch.int8), alt, -alt.clamp(min=-INT8_MAX)]
    a = torch.randint(INT8_MIN, INT8_MAX + 1, (32, n_in), generator=g, dtype=torch.int8)
    for i, r in enumerate(rows):
        a[i] = r
    b = torch.randint(INT8_MIN, INT8_MAX + 1, (n_in, n_out), generator=g, dtype=torch.int8)
    for j, r in enumerate(rows[:n_out]):
        b[:, j] = r
    return a.to(device), b.to(device)


def int_mm_is_exact(n_in: int, n_out: int, device: torch.device | str = "cpu") -> bool:
    """Whether ``torch._int_mm`` on ``device`` gives exact int32 results for an ``n_in -> n_out``
    product (a self-test on extreme and random int8 patterns against a float64 matmul; False if
    ``_int_mm`` is missing or refuses the shape). Cached per process and backend setting."""
    dev = torch.device(device)
    mkldnn = bool(getattr(torch.backends, "mkldnn", None) and torch.backends.mkldnn.is_available()
                  and torch.backends.mkldnn.enabled)
    key = (str(dev), n_in, n_out, mkldnn)
    with _LOCK:
        if key in _SELFTEST_CACHE:
            return _SELFTEST_CACHE[key]
    ok = False
    if hasattr(torch, "_int_mm") and n_in > 0 and n_out > 0:
        # At most SELFTEST_COLS output columns (cost: 32 x n_in x 16 MACs, ~0.3 ms on a naive
        # loop); a backend that refuses n_out itself is caught when the kernel is called.
        a, b = _selftest_patterns(n_in, min(n_out, SELFTEST_COLS), dev)
        try:
            got = torch._int_mm(a, b).to(torch.float64)
            ok = bool(torch.equal(got, a.to(torch.float64) @ b.to(torch.float64)))
        except RuntimeError:
            ok = False
    with _LOCK:
        _SELFTEST_CACHE[key] = ok
    return ok


def _check_rows(inp: Tensor, n_in: int, name: str) -> None:
    if inp.dim() != 2 or int(inp.shape[1]) != n_in:
        raise ValueError(f"DenseKernel {name}: expected (N, {n_in}) input, got {tuple(inp.shape)}")


def _float_kernel(name: str, w: np.ndarray, bound: int, device: torch.device) -> DenseKernel:
    dtype = torch.float32 if name == "float32" else torch.float64
    w_t = torch.as_tensor(w.T.copy(order="C"), device=device).to(dtype)  # canonical strides, as int8
    n_out, n_in = w.shape

    if dtype == torch.float32:
        dev_type = device.type

        def raw(inp: Tensor) -> Tensor:
            _check_rows(inp, n_in, name)
            if not _ieee(dev_type):            # ~2 us: nobody enabled TF32/bf16 since
                raise RuntimeError("DenseKernel float32: float32 matmuls are no longer IEEE "
                                   "(TF32/bf16 enabled since the kernel was chosen): not exact")
            return inp.to(dtype) @ w_t
    else:
        def raw(inp: Tensor) -> Tensor:
            _check_rows(inp, n_in, name)
            return inp.to(dtype) @ w_t

    return DenseKernel(name=name, n_in=n_in, n_out=n_out, step=1, bound=bound, device=device,
                       raw=raw)


def _int8_kernel(wq: np.ndarray, step: int, bound: int, device: torch.device,
                 fallback: DenseKernel) -> DenseKernel:
    # A fresh C-order copy: numpy keeps any stride on a length-1 axis (wq.T of a one-input layer is
    # (1, n_out) with strides (8, 8)), torch then sees stride (1, 1) as contiguous, and oneDNN's
    # _int_mm reads that operand with a leading dimension of 1: garbage (found by the property test).
    w_t = torch.as_tensor(wq.T.copy(order="C"), device=device).to(torch.int8)
    n_out, n_in = wq.shape
    fb_raw, fb_step = fallback.raw, fallback.step

    def raw(inp: Tensor) -> Tensor:
        _check_rows(inp, n_in, "int8")
        try:
            return torch._int_mm(inp.to(torch.int8), w_t)
        except RuntimeError:
            # A row count the backend refuses (CUDA: m <= 16): the exact float kernel, rescaled
            # to this kernel's units (exact: the float result is a multiple of step).
            out = fb_raw(inp).to(torch.float64)
            return out.div_(float(step) / fb_step) if step != fb_step else out

    return DenseKernel(name="int8", n_in=n_in, n_out=n_out, step=step, bound=bound, device=device,
                       raw=raw)


def kernel_report(weight: np.ndarray, payload: PayloadRange | tuple[int, int],
                  device: torch.device | str = "cpu"
                  ) -> tuple[list[DenseKernel], dict[str, str]]:
    """``(exact, rejected)``: the exact kernels for ``weight`` (fastest-first preference order of
    ``KERNEL_NAMES``) and, for every other kernel name, why it is not exact here.

    Args:
        weight: ``(n_out, n_in)`` integer Lava-effective weights.
        payload: the inclusive range of the input values (:class:`PayloadRange`).
        device: torch device of the inputs and the computation.
    """
    dev = torch.device(device)
    p = _as_range(payload)
    w = np.asarray(weight)
    if w.ndim != 2:
        raise ValueError(f"exact_kernels: weight must be (n_out, n_in), got shape {w.shape}")
    if w.size and not np.array_equal(w, np.round(w)):
        raise ValueError("exact_kernels: weights must be integers")
    w = w.astype(np.int64)
    n_out, n_in = w.shape
    bound = partial_sum_bound(w, p)
    kernels: dict[str, DenseKernel] = {}
    rejected: dict[str, str] = {}

    if bound <= FLOAT64_EXACT_MAX:
        kernels["float64"] = _float_kernel("float64", w, bound, dev)
    else:
        rejected["float64"] = f"bound {bound} > 2**53"
    if bound > FLOAT32_EXACT_MAX:
        rejected["float32"] = (f"partial-sum bound payload_abs_max * max_row_abs_sum = {p.abs_max} * "
                               f"{max_row_abs_sum(w)} = {bound} > 2**24")
    elif not float32_matmul_is_ieee(dev):
        rejected["float32"] = "float32 matmuls are not IEEE here (TF32 or bf16 enabled)"
    else:
        kernels["float32"] = _float_kernel("float32", w, bound, dev)

    step = C.WEIGHT_MIXED_STEP if (w.size and not (w % C.WEIGHT_MIXED_STEP).any()) else 1
    wq = w // step
    qbound = partial_sum_bound(wq, p)
    fallback = kernels.get("float32") or kernels.get("float64")
    if not hasattr(torch, "_int_mm"):
        rejected["int8"] = "torch._int_mm is missing"
    elif w.size == 0:
        rejected["int8"] = "empty weight matrix"
    elif wq.min() < INT8_MIN or wq.max() > INT8_MAX:
        rejected["int8"] = (f"weights / {step} span [{wq.min()}, {wq.max()}], "
                            f"not within int8 [{INT8_MIN}, {INT8_MAX}]")
    elif p.lo < INT8_MIN or p.hi > INT8_MAX:
        rejected["int8"] = f"payloads [{p.lo}, {p.hi}] not within int8 [{INT8_MIN}, {INT8_MAX}]"
    elif qbound > INT32_MAX:
        rejected["int8"] = f"accumulation bound {qbound} > 2**31 - 1"
    elif fallback is None:
        rejected["int8"] = "no exact float kernel to fall back on for refused row counts"
    elif not int_mm_is_exact(n_in, n_out, dev):
        rejected["int8"] = ("torch._int_mm failed its exactness self-test on this backend "
                            "(a saturating pre-VNNI int8 GEMM, or the shape is refused)")
    else:
        kernels["int8"] = _int8_kernel(wq, step, qbound, dev, fallback)
    return [kernels[n] for n in KERNEL_NAMES if n in kernels], rejected


def exact_kernels(weight: np.ndarray, payload: PayloadRange | tuple[int, int],
                  device: torch.device | str = "cpu") -> list[DenseKernel]:
    """Every kernel that computes ``inp @ weight.T`` exactly for inputs in ``payload``
    (see :func:`kernel_report` for the arguments and for why the others are not offered)."""
    return kernel_report(weight, payload, device)[0]


# ----------------------------------------------------------------------------------------------
# Choosing by measurement
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Calibration:
    """What :func:`choose_kernel` decided for one cache key, and why.

    ``seconds``: fastest seconds per call of each kernel timed in the final round, at
    ``rows_timed`` rows; ``probe_seconds``: the same for the pruning round at ``probe_rows``;
    ``source``: ``"measured"``, ``"forced"`` (``force=``), ``"env"`` (``ENV_VAR``) or ``"only"``
    (a single exact kernel); ``elapsed_s``: wall time the calibration took.
    """

    key: tuple
    chosen: str
    source: str
    seconds: dict[str, float] = field(default_factory=dict)
    probe_seconds: dict[str, float] = field(default_factory=dict)
    rows_timed: int = 0
    probe_rows: int = 0
    elapsed_s: float = 0.0


_CHOICES: dict[tuple, Calibration] = {}


def calibrations() -> dict[tuple, Calibration]:
    """A copy of this process's measured choices (key -> :class:`Calibration`)."""
    with _LOCK:
        return dict(_CHOICES)


def clear_cache() -> None:
    """Forget every measured choice and self-test (tests; after changing backend settings)."""
    with _LOCK:
        _CHOICES.clear()
        _SELFTEST_CACHE.clear()


def _rows_bucket(rows: int) -> int:
    """Power-of-two bucket of the row count (``rows.bit_length()``): 2048..4095 share one."""
    return max(1, int(rows)).bit_length()


def cache_key(kernels: list[DenseKernel], payload: PayloadRange, rows: int,
              input_dtype: torch.dtype) -> tuple:
    k = kernels[0]
    return (k.n_in, k.n_out, (payload.lo, payload.hi), tuple(x.name for x in kernels),
            str(k.device), torch.get_num_threads(), _rows_bucket(rows), str(input_dtype),
            _ieee(k.device.type))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def calibration_input(n_in: int, payload: PayloadRange, rows: int, device: torch.device,
                      dtype: torch.dtype = torch.float32, seed: int = 0) -> Tensor:
    """Random ``(rows, n_in)`` inputs in ``payload``: Bernoulli(``CALIBRATION_SPIKE_RATE``) spikes
    when binary, else uniform integers in ``[lo, hi]``; in ``dtype`` (the simulator's float32)."""
    g = torch.Generator().manual_seed(seed)
    if payload.binary:
        x = (torch.rand(rows, n_in, generator=g) < CALIBRATION_SPIKE_RATE).to(dtype)
    else:
        x = torch.randint(payload.lo, payload.hi + 1, (rows, n_in), generator=g).to(dtype)
    return x.to(device)


def _time_round(kernels: list[DenseKernel], x: Tensor, reps: int) -> dict[str, float]:
    """Fastest seconds per call of each kernel on ``x`` over ``reps`` interleaved rounds.

    The minimum, not the median: other processes only ever add time (on the shared 2-core
    machine here a 2-thread call stalls 8-24 ms whenever a neighbour holds a core, and a median
    of 3 then compared one stalled float32 probe with an unstalled naive int8 one and picked int8,
    8x slower), so the fastest repetition is the best estimate of the kernel's own cost."""
    ts: dict[str, list[float]] = {k.name: [] for k in kernels}
    for _ in range(reps):
        for k in kernels:
            _sync(x.device)
            t0 = time.perf_counter()
            k.accumulate(x)
            _sync(x.device)
            ts[k.name].append(time.perf_counter() - t0)
    return {n: min(v) for n, v in ts.items()}


def measure(kernels: list[DenseKernel], payload: PayloadRange, rows: int, *,
            input_dtype: torch.dtype = torch.float32, budget_s: float = CALIBRATION_BUDGET_S
            ) -> Calibration:
    """Time ``kernels`` on random inputs of ``rows`` rows and return the fastest (uncached).

    Two rounds, each interleaved (kernel A, B, C, A, B, C, ...) so that load from other processes
    hits all alike, the fastest repetition of each kernel taken (see :func:`_time_round`):

    1. probe: ``min(rows, PROBE_ROWS)`` rows, one warm-up call (lazy initialisation; a kernel that
       raises RuntimeError here is dropped) then ``TIMED_REPS`` timed calls; kernels slower than
       ``PRUNE_FACTOR`` x the fastest are dropped (a naive int8 loop on an AVX2-only CPU is never
       run on the full shape).
    2. final: the survivors on ``rows`` rows, or fewer if the estimated cost (probe time per row x
       rows x (reps + 1)) would exceed ``budget_s``; one warm-up call each, then ``TIMED_REPS``
       (up to ``MAX_REPS`` when cheap) timed calls. Ties keep ``KERNEL_NAMES`` order. Skipped
       when the probe already used the budget (a loaded machine): the probe times decide.
       When ``rows <= PROBE_ROWS`` the final round repeats the probe's shape with more reps.
    """
    t_start = time.perf_counter()
    if not kernels:
        raise ValueError("measure: no kernels")
    dev = kernels[0].device
    n_in = kernels[0].n_in
    x = calibration_input(n_in, payload, rows, dev, input_dtype)
    probe_rows = min(int(rows), PROBE_ROWS)
    xp = x[:probe_rows]
    alive = []
    for k in kernels:                      # warm-up (and shape check)
        try:
            k.accumulate(xp)
            alive.append(k)
        except RuntimeError:
            pass
    if not alive:
        raise RuntimeError("measure: every kernel raised on the calibration input")
    probe = _time_round(alive, xp, TIMED_REPS)
    best = min(probe.values())
    survivors = [k for k in alive if probe[k.name] <= PRUNE_FACTOR * best]
    final, rows_timed = probe, probe_rows
    left = budget_s - (time.perf_counter() - t_start)
    per_row = sum(probe[k.name] for k in survivors) / probe_rows
    if rows > probe_rows:
        # As many rows as the budget allows for a warm-up and TIMED_REPS rounds, up to ``rows``.
        fit = int(left / max(per_row * (TIMED_REPS + 1), 1e-12))
        rows_timed = min(int(rows), fit)
    # A final round only if it can do better than the probe within the budget (on a loaded
    # machine the probe alone may exhaust it: the probe times then decide).
    if len(survivors) > 1 and rows_timed >= probe_rows and left > 0:
        xf = x[:rows_timed]
        if rows_timed > probe_rows:
            _time_round(survivors, xf, 1)  # warm-up at this shape (oneDNN makes a primitive)
        per_round = per_row * rows_timed
        reps = int(min(MAX_REPS, max(TIMED_REPS, left / max(per_round, 1e-9) - 1)))
        final = _time_round(survivors, xf, reps)
    else:
        rows_timed = probe_rows
    order = {n: i for i, n in enumerate(KERNEL_NAMES)}
    chosen = min(survivors, key=lambda k: (final.get(k.name, math.inf), order[k.name])).name
    return Calibration(key=(), chosen=chosen, source="measured",
                       seconds={k.name: final[k.name] for k in survivors if k.name in final},
                       probe_seconds=probe, rows_timed=rows_timed, probe_rows=probe_rows,
                       elapsed_s=time.perf_counter() - t_start)


def choose_kernel(weight: np.ndarray, payload: PayloadRange | tuple[int, int], rows: int,
                  device: torch.device | str = "cpu", *, force: str | None = None,
                  input_dtype: torch.dtype = torch.float32) -> DenseKernel:
    """The fastest exact kernel for ``inp (rows, n_in) @ weight.T`` on this machine.

    Args:
        weight: ``(n_out, n_in)`` integer Lava-effective weights.
        payload: inclusive range of the input values (``PayloadRange.for_message_bits(b)``).
        rows: typical row count per call (``T * B`` for the simulator's whole-run matmul).
        device: torch device.
        force: a name in ``KERNEL_NAMES``; else ``os.environ[ENV_VAR]`` if set; else measured.
        input_dtype: dtype of the inputs the caller passes (conversion is part of the cost).

    Raises ValueError for an unknown forced name, or a forced kernel that is not exact here (the
    message says why). The measured choice is cached per process under :func:`cache_key`
    (shape, payload range, the set of exact kernels, device, ``torch.get_num_threads()``,
    power-of-two rows bucket, input dtype, whether float32 matmuls are IEEE); see :func:`measure` for the
    method and cost.
    """
    p = _as_range(payload)
    kernels, rejected = kernel_report(weight, p, device)
    if not kernels:
        raise ValueError(f"choose_kernel: no exact kernel: {rejected}")
    by_name = {k.name: k for k in kernels}
    source = "forced" if force is not None else "env"
    name = force if force is not None else (os.environ.get(ENV_VAR) or None)
    if name is not None:
        name = name.strip().lower()
        if name not in KERNEL_NAMES:
            raise ValueError(f"choose_kernel: unknown kernel {name!r} ({source}); "
                             f"expected one of {KERNEL_NAMES}")
        if name not in by_name:
            raise ValueError(f"choose_kernel: kernel {name!r} ({source}) is not exact for this "
                             f"layer: {rejected.get(name, 'not offered')}")
        return by_name[name]
    if len(kernels) == 1:
        return kernels[0]
    key = cache_key(kernels, p, rows, input_dtype)
    with _LOCK:
        cal = _CHOICES.get(key)
    if cal is None:
        cal = measure(kernels, p, rows, input_dtype=input_dtype)
        cal = Calibration(key=key, chosen=cal.chosen, source=cal.source, seconds=cal.seconds,
                          probe_seconds=cal.probe_seconds, rows_timed=cal.rows_timed,
                          probe_rows=cal.probe_rows, elapsed_s=cal.elapsed_s)
        with _LOCK:
            cal = _CHOICES.setdefault(key, cal)
    return by_name[cal.chosen]
