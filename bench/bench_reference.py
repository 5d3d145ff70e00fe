"""Reference simulator vs Lava fixed_pt on the STFT's spiking branch (512-256-256-128, T=10).

Usage::

    .venv/bin/python bench/bench_reference.py [--repeats 7] [--lava-batch 64] [--no-emulate-avx2]
                                              [--no-write]

Measures, side by side in one process: the reference simulator at batch 1 and 256 with the kernels
it chooses by measurement (``sim/dense_kernels.py``), the same run with every exact kernel forced,
a plain float32 matmul of the same shapes (the float32 limit), and Lava fixed_pt through the
project's Lava backend, one :class:`LavaSession` of ``--lava-batch`` samples of the same inputs
(one network, reset in place between runs; spikes compared). Then it re-runs itself in a subprocess that emulates an
AVX2-only CPU on this one (``bench/bench_kernels.py`` explains the emulation: ATen and oneDNN capped
at AVX2 and torch's oneDNN int8 path off, so ``torch._int_mm`` is the naive loop of a CPU without
AVX512-VNNI). Prints markdown and replaces the section "## Reference simulator vs Lava fixed_pt"
of BENCHMARKS.md. Throughput is sample-timesteps per second, medians; Lava's figure counts its
whole ``run`` (reset, steps, host I/O), its one start-up is reported separately.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

EMULATION_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                 "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
CHILD_FLAG = "--child-emulated"

sys.path.insert(0, str(Path(__file__).resolve().parent))

SIZES = (512, 256, 256, 128)
T = 10
HEADING = "## Reference simulator vs Lava fixed_pt"


def bench_plan(seed: int = 0, T: int = T):
    """The project's quantizer applied to trained-like float weights (Student t, 3 dof): the
    plan a trained STFT deploys (``SIZES``, ``T`` steps), with spike rates near the trained
    model's (~10 %). ``bench_bridge.py`` benchmarks the same plan."""
    from stft_neuro.hw_targets.loihi2 import quantize as Q
    rng = np.random.default_rng(seed)
    floats = [Q.FloatLayer(name=f"lif{l + 1}",
                           weight=rng.standard_t(3, (SIZES[l + 1], SIZES[l])) * 2.5 / SIZES[l] ** 0.5,
                           bias=rng.normal(0, 0.02, SIZES[l + 1]), du=0.25, dv=0.1, threshold=1.0)
              for l in range(len(SIZES) - 1)]
    plan, _ = Q.plan_from_float(floats, input_scale=1.0 / 60, input_bits=8, num_steps=T)
    return plan


def median_time(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def measure(repeats: int, lava_batch: int) -> dict:
    """All figures of one process (native or emulated) as a dict."""
    import torch

    from stft_neuro.machine import cpu_description
    from stft_neuro.sim import dense_kernels as K
    from stft_neuro.sim.reference import ReferenceSimulator

    plan = bench_plan()
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.integers(-128, 128, (T, 256, SIZES[0])), dtype=torch.float32)
    macs = sum(a * b for a, b in zip(SIZES[:-1], SIZES[1:]))  # per sample-step
    out: dict = {"cpu": cpu_description(), "threads": torch.get_num_threads(), "rows": []}
    ref = ReferenceSimulator(plan)
    spikes, _ = ref.run(x)
    out["rates"] = [float(s.mean()) for s in spikes]

    def row(what: str, B: int, seconds: float, kernels: str) -> dict:
        return {"what": what, "batch": B, "ms_per_run": seconds * 1e3, "sample_steps_per_s": T * B / seconds,
                "gmac_per_s": T * B * macs / seconds / 1e9, "kernels": kernels}

    for B in (1, 256):
        xb = x[:, :B].contiguous()
        sec = median_time(lambda: ref.run(xb), repeats)
        chosen = ", ".join(ref.kernel(l, T * B, xb.dtype).name for l in range(plan.num_layers))
        out["rows"].append(row(f"reference, batch {B} (kernels chosen by measurement)", B, sec, chosen))
    for name in K.KERNEL_NAMES:
        os.environ[K.ENV_VAR] = name
        try:
            forced = ReferenceSimulator(plan)
            s_forced, _ = forced.run(x)
            assert all(torch.equal(a, b) for a, b in zip(s_forced, spikes)), f"{name} not exact"
            sec = median_time(lambda: forced.run(x), repeats)
            out["rows"].append(row(f"reference, batch 256, {name} forced", 256, sec, name))
        except ValueError as exc:  # not exact for some layer here
            out["rows"].append({"what": f"reference, batch 256, {name} forced", "skipped": str(exc)[:100]})
        finally:
            del os.environ[K.ENV_VAR]
    mats = [(torch.randn(T * 256, a), torch.randn(a, b)) for a, b in zip(SIZES[:-1], SIZES[1:])]
    sec = median_time(lambda: [p @ q for p, q in mats], repeats)
    out["float32_limit_gmac_per_s"] = T * 256 * macs / sec / 1e9

    from stft_neuro.sim.lava_runtime import lava_available
    if lava_available() and lava_batch > 0:
        from stft_neuro.sim.lava_session import LavaSession
        xl = x[:, :lava_batch].contiguous()
        with LavaSession(plan, lava_batch) as lava:
            s_lava, _ = lava.run(xl)            # builds the network (start-up, once)
            build_s = lava.timing.build_s
            sec = median_time(lambda: lava.run(xl), max(3, repeats // 2))   # reset in place + T steps
        out["lava"] = {"batch": lava_batch, "sample_steps_per_s": T * lava_batch / sec,
                       "ms_per_step": sec / T * 1e3, "build_s": build_s,
                       "spikes_equal_reference": all(torch.equal(a, b[:, :lava_batch])
                                                     for a, b in zip(s_lava, spikes))}
    return out


def table(res: dict, title: str) -> list[str]:
    cpu = res["cpu"]
    flags = ", ".join(f for f in cpu.get("flags", []))
    lines = [f"**{title}**: {cpu.get('model', '?')}, flags {flags or 'none of the relevant'}; "
             f"torch {cpu.get('torch', '?')}, {res['threads']} threads; `_int_mm` path: "
             f"{cpu.get('int_mm_path', '?')}.", "",
             "| what | sample-timesteps/s | GMAC/s | kernels (layers 1, 2, 3) | ms / run |",
             "|---|---|---|---|---|"]
    for r in res["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['what']} | - | - | not exact here: {r['skipped']} | - |")
            continue
        lines.append(f"| {r['what']} | {r['sample_steps_per_s']:,.0f} | {r['gmac_per_s']:.1f} | "
                     f"{r['kernels']} | {r['ms_per_run']:.2f} |")
    lines.append(f"| float32 matmul, same shapes, batch 256 (the float32 limit) | - | "
                 f"{res['float32_limit_gmac_per_s']:.1f} | - | - |")
    lava = res.get("lava")
    if lava:
        lines.append(f"| Lava fixed_pt, `LavaSession` batch {lava['batch']} (one network, reset in place; "
                     f"steps, resets and host I/O) | {lava['sample_steps_per_s']:,.0f} | - | - | "
                     f"{lava['ms_per_step']:.2f} ms / step; start-up {lava['build_s']:.2f} s once; spikes "
                     f"equal reference: {lava['spikes_equal_reference']} |")
        r1, r256 = (r for r in res["rows"][:2])
        lines += ["", f"Reference over the Lava session (batch {lava['batch']}), measured in this run: "
                      f"reference batch 1 **{r1['sample_steps_per_s'] / lava['sample_steps_per_s']:,.1f}x**, "
                      f"batch 256 **{r256['sample_steps_per_s'] / lava['sample_steps_per_s']:,.0f}x**."]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--lava-batch", type=int, default=64,
                    help="samples in the one Lava session network (0: no Lava)")
    ap.add_argument("--no-emulate-avx2", action="store_true", help="skip the AVX2-only emulation")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: torch's default, one per core); on a shared, busy machine "
                         "1 thread avoids OpenMP stalls that slow 2-thread runs by 10x or more")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument(CHILD_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.child_emulated:
        import torch
        torch.backends.mkldnn.enabled = False  # torch's own int8 dispatch on a CPU without VNNI
        print(json.dumps(measure(args.repeats, args.lava_batch)))
        return 0

    native = measure(args.repeats, args.lava_batch)
    lines = [f"Network: {'-'.join(map(str, SIZES))} Dense+LIF, T={T}, 8-bit graded input, a plan "
             f"from the project's quantizer on trained-like weights; spike rates "
             f"{', '.join(f'{r:.1%}' for r in native['rates'])}. Medians of {args.repeats} runs. "
             "GMAC/s counts the dense MACs of all three layers (T*B*(512*256+256*256+256*128)). "
             f"Load average when it started: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
             "(other work on a shared machine slows both sides and can mislead the kernel choice).", ""]
    lines += table(native, "This CPU")
    if not args.no_emulate_avx2:
        env = dict(os.environ, **EMULATION_ENV)
        proc = subprocess.run([sys.executable, __file__, CHILD_FLAG, "--repeats", str(args.repeats),
                               "--lava-batch", str(args.lava_batch), "--threads", str(args.threads)],
                              env=env, capture_output=True, text=True, check=True)
        emulated = json.loads(proc.stdout.strip().splitlines()[-1])
        lines += ["", *table(emulated, "The same CPU emulating an AVX2-only one "
                                       f"({', '.join(f'{k}={v}' for k, v in EMULATION_ENV.items())}, "
                                       "oneDNN off in torch)")]
    lines += ["", "The kernel choice is measured per layer shape and power-of-two T*B bucket, once per "
                  "process (`sim/dense_kernels.py`); `STFT_NEURO_DENSE_KERNEL` forces one. Every forced "
                  "kernel's spikes were checked equal to the chosen ones.", ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        from markdown import replace_section
        replace_section(HEADING.removeprefix("## "), text,
                        f"python bench/bench_reference.py --repeats {args.repeats} "
                        f"--lava-batch {args.lava_batch}"
                        + (f" --threads {args.threads}" if args.threads else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
