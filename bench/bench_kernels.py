"""Exact Dense accumulation kernels (``sim/dense_kernels.py``): GMAC/s per kernel, and the chooser's pick.

Usage::

    .venv/bin/python bench/bench_kernels.py [--reps 15] [--threads N] [--emulate-avx2] [--no-write]

For the three layer shapes of the 512-256-256-128 stack (layer 0: 8-bit graded payloads, mixed-sign
even weights in [-256, 254]; layers 1, 2: binary spikes at 13 %) and ``rows = T*B`` = 2560
(T=10, B=256) and 10 (T=10, B=1), times every exact kernel of ``exact_kernels`` plus, for
reference, the bare float32 matmul on pre-converted tensors (the float32 limit) and the two
rejected binary-spike formulations (CSR ``torch.sparse.mm``; ``nonzero`` + ``index_select`` +
``index_add_`` of the active inputs' weight rows). All candidates of one shape and row count are
timed interleaved (A, B, C, A, B, C, ...), ``--reps`` rounds, medians; every result is checked
against an int64 numpy product. Then a fresh ``choose_kernel`` is run and its pick and calibration
time are recorded.

``--emulate-avx2`` also re-executes this script in a subprocess that emulates the AVX2-only AMD
EPYC measured here (``torch._int_mm`` int8 at 1.5 GMAC/s against 45 GMAC/s for a float32
matmul of the same shape) on this CPU: ``ATEN_CPU_CAPABILITY=avx2`` (ATen's kernels),
``ONEDNN_MAX_CPU_ISA=AVX2``, ``MKL_ENABLE_INSTRUCTIONS=AVX2`` (set before torch is imported) and
``torch.backends.mkldnn.enabled = False``. The last is what makes ``torch._int_mm`` slow: torch's
CPU ``_int_mm`` calls oneDNN only when the CPU has AVX512-VNNI (``_int_mm_out_cpu`` in
``aten/src/ATen/native/LinearAlgebra.cpp``) and otherwise runs a naive loop; the env vars do not
change torch's cpuinfo check, so without it oneDNN would still be called, capped to its AVX2 int8
GEMM, which saturates (the child records that self-test with mkldnn still on).

Prints a markdown table and writes ``bench/results/kernels.json`` (runs keyed by mode and threads,
merged with the file's other runs). The machine is shared: figures are noisy; ratios within one
interleaved group are what to compare.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from stft_neuro.machine import cpu_description
from stft_neuro.sim import dense_kernels as D

SHAPES = (("lif0", 512, 256, 8), ("lif1", 256, 256, 0), ("lif2", 256, 128, 0))
ROWS = (2560, 10)
RESULTS = Path(__file__).resolve().parent / "results" / "kernels.json"
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def bench_weight(n_in: int, n_out: int, seed: int) -> np.ndarray:
    """Mixed-sign even weights in [-256, 254] (Lava-effective), as ``bench_reference.py``."""
    return np.random.default_rng(seed).integers(-128, 128, (n_out, n_in)) * 2


def candidates(weight: np.ndarray, payload: D.PayloadRange, x: torch.Tensor) -> dict:
    """name -> (callable, in_module). Module kernels, the float32 limit, rejected formulations."""
    out = {k.name: (k.accumulate, True) for k in D.exact_kernels(weight, payload, "cpu")}
    w32 = torch.as_tensor(weight.T.copy(), dtype=torch.float32).contiguous()
    x32 = x.to(torch.float32)
    out["float32 bare mm (limit)"] = (lambda _x: x32 @ w32, False)
    if payload.binary:
        n_out = weight.shape[0]

        def csr(inp: torch.Tensor) -> torch.Tensor:
            return torch.sparse.mm(inp.to(torch.float32).to_sparse_csr(), w32).to(torch.float64)

        def gather(inp: torch.Tensor) -> torch.Tensor:
            r, c = inp.nonzero(as_tuple=True)
            acc = torch.zeros(inp.shape[0], n_out, dtype=torch.float32)
            return acc.index_add_(0, r, w32.index_select(0, c)).to(torch.float64)

        out["sparse CSR (rejected)"] = (csr, False)
        out["gather index_add (rejected)"] = (gather, False)
    return out


def run_mode(mode: str, reps: int) -> dict:
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    rows_out, chooser = [], []
    for name, n_in, n_out, bits in SHAPES:
        w = bench_weight(n_in, n_out, seed=n_in + n_out)
        p = D.PayloadRange.for_message_bits(bits)
        _, rejected = D.kernel_report(w, p, "cpu")
        for rows in ROWS:
            x = D.calibration_input(n_in, p, rows, torch.device("cpu"), seed=1)
            ref = x.numpy().astype(np.int64) @ w.T.astype(np.int64)
            cands = candidates(w, p, x)
            exact = {}
            for cname, (fn, _) in cands.items():
                fn(x)                                           # warm-up
                exact[cname] = bool(np.array_equal(fn(x).to(torch.float64).numpy(), ref))
            ts = {c: [] for c in cands}
            for _ in range(reps):
                for cname, (fn, _) in cands.items():
                    t0 = time.perf_counter()
                    fn(x)
                    ts[cname].append(time.perf_counter() - t0)
            med = {c: statistics.median(v) for c, v in ts.items()}
            mac = rows * n_in * n_out
            D.clear_cache()
            t0 = time.perf_counter()
            k = D.choose_kernel(w, p, rows, "cpu")
            choose_s = time.perf_counter() - t0
            cal = next(iter(D.calibrations().values()), None)
            chooser.append({"layer": name, "rows": rows, "chosen": k.name,
                            "choose_ms": 1e3 * choose_s,
                            "calibration": None if cal is None else {
                                "rows_timed": cal.rows_timed, "probe_rows": cal.probe_rows,
                                "seconds": cal.seconds, "probe_seconds": cal.probe_seconds,
                                "elapsed_s": cal.elapsed_s},
                            "not_offered": rejected})
            for cname, (_, in_module) in cands.items():
                rows_out.append({
                    "layer": name, "shape": f"{n_in}->{n_out}", "payload": [p.lo, p.hi],
                    "rows": rows, "kernel": cname, "in_module": in_module,
                    "median_us": 1e6 * med[cname], "gmac_s": mac / med[cname] / 1e9,
                    "vs_float32": med[cname] / med["float32"] if "float32" in med else None,
                    "exact": exact[cname], "chosen": cname == k.name})
    return {"mode": mode, "cpu": cpu_description(), "reps": reps, "results": rows_out,
            "chooser": chooser}


def markdown(run: dict) -> str:
    cpu = run["cpu"]
    lines = [f"### {run['mode']}: {cpu['model']} ({cpu['vendor']}), flags "
             f"{', '.join(cpu['flags'])}; torch {cpu['torch']} capability "
             f"{cpu['torch_cpu_capability']}, {cpu['torch_threads']} threads, _int_mm path: "
             f"{cpu['int_mm_path']}; env {cpu['env'] or '{}'}; medians of {run['reps']} "
             "interleaved reps", "",
             "| layer | rows | kernel | median us | GMAC/s | time / float32 | exact | chosen |",
             "|---|---:|---|---:|---:|---:|---|---|"]
    for r in run["results"]:
        ratio = "" if r["vs_float32"] is None else f"{r['vs_float32']:.2f}"
        lines.append(f"| {r['layer']} {r['shape']} | {r['rows']} | {r['kernel']} | "
                     f"{r['median_us']:.0f} | {r['gmac_s']:.1f} | {ratio} | "
                     f"{'yes' if r['exact'] else 'NO'} | {'**yes**' if r['chosen'] else ''} |")
    lines += ["", "| layer | rows | chooser picks | choose_kernel ms | timed rows |",
              "|---|---:|---|---:|---:|"]
    for c in run["chooser"]:
        cal = c["calibration"] or {}
        lines.append(f"| {c['layer']} | {c['rows']} | {c['chosen']} | {c['choose_ms']:.1f} | "
                     f"{cal.get('rows_timed', '')} |")
    if "int8_selftest_onednn_capped" in run:
        lines += ["", "int8 `_int_mm` exactness self-test with oneDNN enabled but capped to AVX2 "
                  f"(what these env vars alone give): {run['int8_selftest_onednn_capped']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--emulate-avx2", action="store_true",
                    help="also run the AVX2-only emulation in a subprocess")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--child-avx2", metavar="OUT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.child_avx2:
        capped = {f"{n_in}->{n_out}": D.int_mm_is_exact(n_in, n_out, "cpu")
                  for _, n_in, n_out, _ in SHAPES}
        torch.backends.mkldnn.enabled = False    # torch's own dispatch on a CPU without VNNI
        D.clear_cache()
        run = run_mode("AVX2 emulation", args.reps)
        run["int8_selftest_onednn_capped"] = capped
        Path(args.child_avx2).write_text(json.dumps(run))
        return 0

    runs = [run_mode("native", args.reps)]
    if args.emulate_avx2:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "avx2.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--reps", str(args.reps),
                   "--child-avx2", str(out)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            subprocess.run(cmd, check=True, env={**os.environ, **AVX2_ENV})
            runs.append(json.loads(out.read_text()))
    for run in runs:
        print(markdown(run))
        print()
    if not args.no_write:
        data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        data.setdefault("runs", {})
        cmd = " ".join(["bench/bench_kernels.py"] + (argv if argv is not None else sys.argv[1:]))
        for run in runs:
            run["command"] = cmd
            data["runs"][f"{run['mode']}/threads={run['cpu']['torch_threads']}"] = run
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
