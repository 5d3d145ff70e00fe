"""Reference simulator vs Lava fixed_pt on the same 512-256-256-128 fixed-point stack (T=10).

Usage::

    .venv/bin/python bench/bench_reference.py [--repeats 7] [--lava-samples 3] [--no-write]

Prints a markdown table and replaces the section "## Reference simulator vs Lava fixed_pt" of
BENCHMARKS.md (other sections are kept). Throughput is sample-timesteps per second, medians.
Lava's figure counts only its per-step send/receive loop (its ~1 s build/start-up per sample is
reported separately).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from markdown import replace_section  # noqa: E402

from stft_neuro.hw_targets.loihi2.network import FixedPointLayer, FixedPointNetwork
from stft_neuro.sim.reference import ReferenceSimulator

SIZES = (512, 256, 256, 128)
T = 10
HEADING = "## Reference simulator vs Lava fixed_pt"


def bench_network(seed: int = 0) -> FixedPointNetwork:
    """Random 8-bit mixed-sign weights; thresholds set for a ~10-20 % spike rate."""
    rng = np.random.default_rng(seed)
    vths = (40000, 2500, 1500)
    exps = (-4, 0, 0)
    layers = []
    for l in range(len(SIZES) - 1):
        n_in, n_out = SIZES[l], SIZES[l + 1]
        layers.append(FixedPointLayer(
            name=f"lif{l}", weight=rng.integers(-128, 128, (n_out, n_in)) * 2, weight_exp=exps[l],
            du=400, dv=300, vth=vths[l], bias_mant=np.zeros(n_out, dtype=np.int64), bias_exp=0,
            num_message_bits=8 if l == 0 else 0))
    return FixedPointNetwork(tuple(layers))


def median_time(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--lava-samples", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args(argv)

    net = bench_network()
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.integers(-128, 128, (T, 256, SIZES[0])), dtype=torch.float64)
    ref = ReferenceSimulator(net)
    spikes, _ = ref.run(x)
    rates = [float(s.mean()) for s in spikes]
    macs_per_sample_step = sum(a * b for a, b in zip(SIZES[:-1], SIZES[1:]))

    rows = []
    res = {}
    for B in (1, 256):
        xb = x[:, :B].contiguous()
        dt = median_time(lambda: ref.run(xb), args.repeats)
        res[B] = T * B / dt
        rows.append((f"reference, batch {B}", f"{T * B / dt:,.0f}",
                     f"{T * B * macs_per_sample_step / dt / 1e9:.2f}", f"{dt * 1e3:.2f} ms / run(T={T})"))
    # float32 matmul of the same shapes (dense, T*B rows), same run
    mats = [(torch.randn(T * 256, a), torch.randn(a, b)) for a, b in zip(SIZES[:-1], SIZES[1:])]
    dt_mm = median_time(lambda: [p @ q for p, q in mats], args.repeats)
    rows.append(("float32 matmul, same shapes, batch 256", "-",
                 f"{T * 256 * macs_per_sample_step / dt_mm / 1e9:.2f}", f"{dt_mm * 1e3:.2f} ms"))

    lava_rate = None
    try:
        from stft_neuro.sim.lava_runner import LavaRunner, lava_available
        if lava_available():
            lr = LavaRunner(net, read_state=False)
            s_lava, _ = lr.run(x[:, :args.lava_samples])
            same = all(torch.equal(a, b[:, :args.lava_samples]) for a, b in zip(s_lava, spikes))
            lava_rate = lr.timing.steps / lr.timing.steps_s
            rows.append((f"Lava fixed_pt ({args.lava_samples} samples, steps only)",
                         f"{lava_rate:,.0f}", "-",
                         f"{lr.timing.steps_s / lr.timing.steps * 1e3:.2f} ms / step; build "
                         f"{lr.timing.build_s / lr.timing.samples:.2f} s / sample; spikes equal "
                         f"reference: {same}"))
    except Exception as exc:  # report, do not hide
        rows.append(("Lava fixed_pt", "failed", "-", repr(exc)[:80]))

    lines = [
             f"Network: {'-'.join(map(str, SIZES))} Dense+LIF, T={T}, 8-bit graded input, "
             f"spike rates {', '.join(f'{r:.1%}' for r in rates)}. Medians of {args.repeats} runs.",
             "", "| what | sample-timesteps/s | effective GMAC/s | notes |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    if lava_rate:
        lines += ["", f"Speed-up over Lava fixed_pt: batch 1 **{res[1] / lava_rate:,.0f}x**, "
                      f"batch 256 **{res[256] / lava_rate:,.0f}x** (target >= 300x at batch 256)."]
    lines += ["", "Effective GMAC/s counts the dense MACs of all three layers "
                  "(T*B*(512*256+256*256+256*128)); the simulator runs them as int8 x int8 -> int32 "
                  "matmuls where exact (`torch._int_mm`), float32 otherwise.", ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        replace_section(HEADING.removeprefix("## "), text,
                        f"python bench/bench_reference.py --repeats {args.repeats} "
                        f"--lava-samples {args.lava_samples}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
