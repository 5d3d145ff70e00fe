"""Throughput of ``stft-neuro run-nir`` per backend on a graph written by snnTorch 1.0.

The graph: Linear(64->128) Leaky, Linear(128->128) Synaptic, Linear(128->32) RLeaky (per-neuron
parameters, reset to zero), exported with ``export_to_nir`` and written to a file; the input a
seeded ``(B, T, 64)`` array. Every backend runs the same library path as the command
(``stft_neuro.run_nir.run``: read the file, build, simulate), so the times include reading the
graph and, for Lava, building, compiling and starting the processes and stopping them. Lava
``floating_pt`` is measured two ways: one block-diagonal network for the whole batch (what run-nir
does) and one network per sample (B runs). The outputs of all backends are compared with the torch
backend. Prints a markdown table; the CPU is named from /proc/cpuinfo.

    .venv/bin/python bench/bench_run_nir.py [--batch 16] [--steps 100] [--reps 5]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from stft_neuro.machine import cpu_name




def write_graph(path: Path, seed: int = 0) -> None:
    import nir
    import snntorch as snn
    from snntorch.export_nir import export_to_nir

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    def u(n, lo, hi):
        return torch.rand(n, generator=g) * (hi - lo) + lo

    kw = dict(reset_mechanism="zero", reset_delay=False, init_hidden=True)
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 128), snn.Leaky(beta=u(128, .8, .95), threshold=u(128, .5, 1.), **kw),
        torch.nn.Linear(128, 128), snn.Synaptic(alpha=u(128, .5, .9), beta=u(128, .8, .95),
                                                threshold=u(128, .5, 1.), **kw),
        torch.nn.Linear(128, 32), snn.RLeaky(beta=u(32, .8, .95), threshold=u(32, .5, 1.),
                                             linear_features=32, **kw))
    with torch.no_grad():
        for i in (2, 4):
            net[i].weight.mul_(3.0)
    nir.write(path, export_to_nir(net.eval(), torch.zeros(1, 64), ignore_dims=[0]))


def timed(fn, reps: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--reps", type=int, default=5, help="repetitions (Lava: at most 3)")
    ap.add_argument("--per-sample-batch", type=int, default=4,
                    help="batch for the one-network-per-sample Lava measurement (slow)")
    args = ap.parse_args()
    from stft_neuro.converters.nir_in import read_nir
    from stft_neuro.converters.nir_lava import LavaFloatRunner, lower
    from stft_neuro.run_nir import run

    torch.manual_seed(0)
    B, T = args.batch, args.steps
    x = np.random.default_rng(0).random((B, T, 64)) * 1.5
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "snntorch.nir"
        write_graph(path)
        t_torch, (ref, _) = timed(lambda: run(str(path), x, "torch"), args.reps)
        ref_y = ref["output"]
        rows.append(("torch (float32)", B, t_torch, 1.0))
        t_lava, (lo, info) = timed(lambda: run(str(path), x, "lava"), min(3, args.reps))
        agree = float(np.mean(lo["output"] == ref_y))
        rows.append(("lava floating_pt, one network for the batch", B, t_lava, agree))
        graph, dt, _ = read_nir(path, warn=False)
        plan = lower(graph, dt)
        Bs = min(args.per_sample_batch, B)

        def per_sample():
            return np.concatenate([LavaFloatRunner(plan).run(x[b:b + 1])["output"]
                                   for b in range(Bs)])

        t_sep, ys = timed(per_sample, 1)
        rows.append(("lava floating_pt, one network per sample", Bs, t_sep,
                     float(np.mean(ys == ref_y[:Bs]))))
    spikes = float(ref_y.mean())
    print(f"run-nir throughput, snnTorch graph 64-128(Leaky)-128(Synaptic)-32(RLeaky), T = {T}, "
          f"output spike rate {spikes:.3f}\n")
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}\n")
    print("| backend | B | median s per run | samples/s | sample-steps/s | spikes equal to torch |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, b, t, agree in rows:
        print(f"| {name} | {b} | {t:.3f} | {b / t:.1f} | {b * T / t:.0f} | {agree:.4f} |")
    print(f"\nLava (batch run) split: build+compile+start {info['lava']['build_s']:.2f} s, "
          f"steps {info['lava']['steps_s']:.2f} s, stop {info['lava']['teardown_s']:.2f} s, "
          f"{info['lava']['extra_zero_steps']} extra zero steps for alignment.")


if __name__ == "__main__":
    main()
