"""The host <-> Lava bridge, measured: one run, side by side, a markdown table on stdout.

    .venv/bin/python bench/bench_bridge.py [--batch 64] [--steps 10] [--seqs 3] [--repeats 5]
                                           [--mem-run RUN] [--skip-onnx] [--json FILE]

All at the STFT's real size (512 -> 256 -> 256 -> 128, 8-bit graded input, a plan from the project's
quantizer on trained-like Student-t weights, dynamic thresholds), Lava 0.10 ``fixed_pt`` on CPU:

1. **Bridge per-step cost vs Lava with no host I/O**: :class:`LavaSession` (one network per batch,
   reset in place, per-step send/receive through ``sim/lava_runtime.py``) against the same
   block-diagonal network at the same batch with its payloads and thetas played from
   ``RingBuffer`` sources inside Lava (no host channel, no host), one blocking ``RunSteps``.
   Both are timed from their second step on (the first prepares the Sparse models' weights). The two are measured alternately ``--repeats`` times; the table gives the medians
   and the median of the per-pair ratios (a shared machine's load drifts between runs).
2. **Reference vs Lava on the same hybrid workload**: ``SpikingBranch.drive`` (torch host: GLP
   encoding, entropy threshold cues, closed loop) through ``ReferenceSimulator`` and through
   ``LavaSession``, same samples, identical spikes (checked).
3. **Host latency per step, torch vs onnxruntime**: the threshold-cue step (spikes -> theta, plan
   conversion included) of a real-size STFT, torch vs its exported ``host_cue.onnx``.
4. **Peak memory** (``ru_maxrss``) of ``stft-neuro simulate --backend reference`` on the test
   splits of ``--mem-run`` (a run folder; >= 1,000 test samples), in a fresh process.

The machine is named (lscpu model name, avx2 / avx512_vnni flags) beside the figures.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from bench_reference import SIZES, bench_plan  # noqa: E402  (the same trained-like plan)

ROOT = Path(__file__).resolve().parents[1]


from stft_neuro.machine import cpu_name  # noqa: E402


def workload(plan, T: int, B: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    lo, hi = plan.payload_range
    x = rng.integers(lo, hi + 1, (T, B, plan.n_in))
    th = np.zeros((T, B, plan.num_layers))
    for l, (tlo, thi) in enumerate(plan.theta_range):
        th[..., l] = np.clip(rng.integers(-plan.vth[l] // 2, plan.vth[l] // 2 + 1, (T, B)), tlo, thi)
    return torch.tensor(x, dtype=torch.float64), torch.tensor(th, dtype=torch.float64)


def bench_bridge(plan, T, B, seqs) -> dict:
    """LavaSession: build once, then ``seqs`` sequences of B samples, step by step."""
    from stft_neuro.sim.lava_session import LavaSession
    data = [workload(plan, T, B, 100 + k) for k in range(seqs)]
    with LavaSession(plan, B) as s:
        t0 = time.perf_counter()
        state = s.reset(B)
        # the first step prepares the weights inside Lava's Sparse models (~0.15 s at B = 64); the
        # no-I/O run excludes its first step too, so both are timed from the second step on
        _, state = s.step(data[0][0][0], data[0][1][0], state)
        build = time.perf_counter() - t0
        s.reset_timing()
        t1 = time.perf_counter()
        for k, (x, th) in enumerate(data):
            for t in range(1 if k == 0 else 0, T):
                if t == 0:
                    state = s.reset(B)
                _, state = s.step(x[t], th[t], state)
        loop = time.perf_counter() - t1
        timing = dict(vars(s.timing))
    steps = T * seqs - 1
    return {"build_s": build, "loop_s": loop, "samples": B * seqs, "steps": steps,
            "samples_per_s": B * steps / T / loop, "sample_steps_per_s": B * steps / loop,
            "samples_per_s_incl_build": B * seqs / (loop + build),
            "step_ms": 1e3 * loop / steps,   # the whole loop: steps, waits, resets
            "reset_ms": 1e3 * timing["reset_s"] / max(1, timing["resets"]), "timing": timing}


def bench_no_io(plan, T, B, seqs) -> dict:
    """The bridge's network, its inputs played by RingBuffers inside Lava: no host I/O at all."""
    from lava.proc.io.source import PySendModelFixed, RingBuffer

    from stft_neuro.hw_targets.loihi2.weights import lava_effective_weights
    from stft_neuro.sim.lava_runtime import load
    from stft_neuro.sim.lava_session import block_diagonal
    lv = load()
    steps = T * seqs
    xs, ths = zip(*[workload(plan, T, B, 100 + k) for k in range(seqs)])
    x = torch.cat(xs).numpy().astype(np.int32).reshape(steps, -1).T            # (B*n_in, steps)
    th = torch.cat(ths).numpy().astype(np.int32).reshape(steps, -1).T          # (B*L, steps)
    th = np.concatenate([th, np.zeros((1, steps), dtype=np.int32)])             # + reset flag
    src, th_src = RingBuffer(data=x), RingBuffer(data=th)
    L = plan.num_layers
    prev, lifs = src.s_out, []
    for l, layer in enumerate(plan.network.layers):
        syn = lv.Sparse(weights=block_diagonal(lava_effective_weights(layer.weight), B),
                           weight_exp=int(layer.weight_exp), num_message_bits=int(layer.num_message_bits))
        lif = lv.BatchThetaLIF(layer=l, num_layers=L, batch=B, shape=(B * layer.n_out,),
                                  du=int(layer.du), dv=int(layer.dv), vth=int(layer.vth),
                                  bias_mant=np.tile(np.asarray(layer.bias_mant), B),
                                  bias_exp=int(layer.bias_exp))
        prev.connect(syn.s_in)
        syn.a_out.connect(lif.a_in)
        th_src.s_out.connect(lif.theta_in)
        prev = lif.s_out
        lifs.append(lif)
    cfg = lv.Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map={
        RingBuffer: PySendModelFixed, lv.BatchThetaLIF: lv.PyBatchThetaLifModelBitAcc,
        lv.Sparse: lv.PySparseModelBitAcc})
    try:
        with warnings.catch_warnings():  # Lava scans sim/ for models of BatchThetaLIF; it is given
            warnings.filterwarnings("ignore", message="Cannot import module", category=UserWarning)
            lifs[-1].create_runtime(run_cfg=cfg)
        lifs[-1].run(condition=lv.RunSteps(num_steps=1), run_cfg=cfg)   # warm-up step
        t0 = time.perf_counter()
        lifs[-1].run(condition=lv.RunSteps(num_steps=steps - 1), run_cfg=cfg)
        sec = time.perf_counter() - t0
    finally:
        lifs[-1].stop()
    return {"steps": steps - 1, "step_ms": 1e3 * sec / (steps - 1)}


def bench_hybrid(T, B, seqs) -> dict:
    """SpikingBranch.drive (torch host, closed loop) through the reference simulator and Lava."""
    from stft_neuro.config import SpikingConfig
    from stft_neuro.model.host import SpikingBranch
    from stft_neuro.sim.lava_session import LavaSession
    from stft_neuro.sim.reference import ReferenceSimulator
    torch.manual_seed(0)
    branch = SpikingBranch(512, 512, SpikingConfig(num_steps=T)).eval()
    S = 10
    feats = [(torch.randn(B, S, 512) * 2, torch.randn(B, S, 512) * 2,
              torch.randint(1, S + 1, (B,))) for _ in range(seqs)]
    out = {}
    with torch.no_grad():
        branch.calibrate_input(*feats[0])
        branch.cue_info.fill_(1.0)
        branch.set_deploy(True)
        plan, _ = branch.deployment_plan()
        records = {}
        for name in ("reference", "lava", "reference"):   # reference twice: the best of two
            backend = ReferenceSimulator(plan) if name == "reference" else LavaSession(plan, B)
            try:
                if name == "lava":
                    t0 = time.perf_counter()
                    backend.reset(B)
                    build = time.perf_counter() - t0
                else:
                    build = 0.0
                    branch.drive(*branch.encode(*feats[0]), backend)  # warm-up: kernel choice
                t0 = time.perf_counter()
                recs = [branch.drive(*branch.encode(*f), backend) for f in feats]
                sec = time.perf_counter() - t0
            finally:
                if name == "lava":
                    backend.close()
            records[name] = recs
            if name in out and out[name]["seconds"] <= sec:
                continue
            out[name] = {"seconds": sec, "build_s": build, "samples_per_s": B * seqs / sec,
                         "sample_steps_per_s": B * seqs * T / sec}
        same = all(torch.equal(a.spikes[l], b.spikes[l]) and torch.equal(a.theta, b.theta)
                   for a, b in zip(records["reference"], records["lava"]) for l in range(plan.num_layers))
        spikes = [int(sum(r.spikes[l].sum() for r in records["lava"])) for l in range(plan.num_layers)]
    out["identical"] = bool(same)
    out["spikes_per_layer"] = spikes
    return out


def bench_host(B, T, reps=50) -> dict:
    """Per-step host latency of the threshold-cue step: torch vs onnxruntime (real-size STFT)."""
    from stft_neuro.config import Config
    from stft_neuro.export.onnx_host import OnnxHost, export_host_onnx
    from stft_neuro.model.stft import STFT
    torch.manual_seed(0)
    model = STFT(Config(), 512, 512).eval()
    br = model.spiking
    S = 10
    a, v, n = torch.randn(B, S, 512), torch.randn(B, S, 512), torch.randint(1, S + 1, (B,))
    with torch.no_grad():
        br.calibrate_input(a, v, n)
        br.set_deploy(True)
        plan, _ = br.deployment_plan()
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            export_host_onnx(model, plan, d)
            export_s = time.perf_counter() - t0
            host = OnnxHost(d)
            x, g = br.encode(a, v, n)
            spikes = tuple((torch.rand(B, k) < 0.1).float() for k in br.cfg.hidden)
            res = {"export_s": export_s}
            for name, fn in (
                    ("torch", lambda: plan.theta_to_chip(br.threshold_cue(spikes, g))),
                    ("onnxruntime", lambda: host.cue([s.numpy() for s in spikes], g.numpy()))):
                fn()
                t0 = time.perf_counter()
                for _ in range(reps):
                    fn()
                res[f"{name}_cue_ms"] = 1e3 * (time.perf_counter() - t0) / reps
            for name, fn in (("torch", lambda: plan.encode_input(br.encode(a, v, n)[0])),
                             ("onnxruntime", lambda: host.encode(a.numpy(), v.numpy(), n.numpy()))):
                fn()
                t0 = time.perf_counter()
                for _ in range(10):
                    fn()
                res[f"{name}_encode_ms"] = 1e3 * (time.perf_counter() - t0) / 10
    return res


def bench_memory(run: str) -> dict:
    with tempfile.TemporaryDirectory() as d:
        code = ("import resource, sys, json; from stft_neuro.cli import main; "
                f"rc = main(['simulate', '--checkpoint', {run!r}, '--backend', 'reference', "
                f"'--out', {d + '/sim'!r}, '--json']); "
                "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
        if p.returncode != 0:
            return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"}
        rss = int(p.stdout.strip().splitlines()[-1].split()[1])
        res = json.loads("\n".join(p.stdout.strip().splitlines()[:-1]))
    return {"maxrss_mib": rss / 1024, "samples": res["samples"], "sizes": res["sizes"],
            "samples_per_s": res["timings"]["samples_per_s"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seqs", type=int, default=3, help="sequences (batches) per bridge measurement")
    ap.add_argument("--repeats", type=int, default=5,
                    help="alternating bridge / no-host-I/O measurements (medians are reported)")
    ap.add_argument("--mem-run", help="run folder for the peak-memory measurement (>= 1,000 test samples)")
    ap.add_argument("--skip-onnx", action="store_true")
    ap.add_argument("--json", help="also write all figures to this JSON file")
    args = ap.parse_args()
    from stft_neuro.sim.lava_runtime import load
    load()
    B, T = args.batch, args.steps
    cpu = cpu_name()
    plan = bench_plan(T=T)
    res: dict = {"cpu": cpu, "batch": B, "steps": T, "command": " ".join(sys.argv)}
    print(f"# bench_bridge: {cpu}; B = {B}, T = {T}, sizes {SIZES}", file=sys.stderr)
    pairs = []
    for k in range(args.repeats):
        bridge, no_io = bench_bridge(plan, T, B, args.seqs), bench_no_io(plan, T, B, args.seqs)
        pairs.append((bridge, no_io))
        print(f"bridge {bridge['step_ms']:.1f} ms/step, no host I/O {no_io['step_ms']:.1f} ms/step",
              file=sys.stderr)
    res["pairs"] = [{"bridge_step_ms": b["step_ms"], "no_io_step_ms": n["step_ms"]} for b, n in pairs]
    res["bridge"] = min((b for b, _ in pairs), key=lambda b: abs(b["step_ms"] - statistics.median(
        x["step_ms"] for x, _ in pairs)))   # the median run, for its other figures
    res["bridge_step_ms"] = statistics.median(b["step_ms"] for b, _ in pairs)
    res["no_io_step_ms"] = statistics.median(n["step_ms"] for _, n in pairs)
    res["overhead"] = statistics.median(b["step_ms"] / n["step_ms"] - 1 for b, n in pairs)
    res["hybrid"] = bench_hybrid(T, B, args.seqs)
    if not args.skip_onnx:
        res["host"] = bench_host(B, T)
    if args.mem_run:
        res["memory"] = bench_memory(args.mem_run)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    print(table(res))
    return 0


def table(r: dict) -> str:
    b, h = r["bridge"], r["hybrid"]
    pairs = ", ".join(f"{p['bridge_step_ms']:.1f}/{p['no_io_step_ms']:.1f}" for p in r["pairs"])
    rows = [
        ("Lava bridge (LavaSession), steady state", f"{b['samples_per_s']:.1f} samples/s, "
         f"{b['sample_steps_per_s']:.0f} sample-steps/s ({b['samples']} samples; start-up "
         f"{b['build_s']:.2f} s once (build + first step), reset {b['reset_ms']:.1f} ms/batch)"),
        ("Lava bridge incl. start-up", f"{b['samples_per_s_incl_build']:.1f} samples/s"),
        ("bridge per step (whole batch, host I/O + checks), median", f"{r['bridge_step_ms']:.1f} ms"),
        ("Lava, same network, no host I/O (RingBuffer inputs), median", f"{r['no_io_step_ms']:.1f} ms per step"),
        ("bridge / no host I/O, each pair (ms per step)", pairs),
        ("bridge overhead vs no host I/O (median of the pairs)",
         f"**{100 * r['overhead']:+.0f}%** (goal <= 20%)"),
        ("hybrid closed loop, reference backend", f"{h['reference']['samples_per_s']:.0f} samples/s, "
         f"{h['reference']['sample_steps_per_s']:.0f} sample-steps/s"),
        ("hybrid closed loop, Lava backend", f"{h['lava']['samples_per_s']:.1f} samples/s, "
         f"{h['lava']['sample_steps_per_s']:.0f} sample-steps/s (+{h['lava']['build_s']:.1f} s start-up)"),
        ("reference / Lava (same workload)", f"{h['reference']['samples_per_s'] / h['lava']['samples_per_s']:.0f}x; "
         f"records identical: {h['identical']}; spikes per layer {h['spikes_per_layer']}"),
    ]
    if "host" in r:
        hh = r["host"]
        rows += [("host cue step, torch", f"{hh['torch_cue_ms']:.3f} ms"),
                 ("host cue step, onnxruntime", f"{hh['onnxruntime_cue_ms']:.3f} ms"),
                 ("host encoder (per sequence), torch / onnxruntime",
                  f"{hh['torch_encode_ms']:.1f} / {hh['onnxruntime_encode_ms']:.1f} ms")]
    if "memory" in r:
        m = r["memory"]
        rows.append(("peak memory, simulate --backend reference",
                     m.get("error") or f"{m['maxrss_mib']:.0f} MiB ru_maxrss ({m['samples']} samples, "
                                       f"sizes {m['sizes']}, {m['samples_per_s']:.0f} samples/s)"))
    head = (f"CPU: {r['cpu']}\nB = {r['batch']}, T = {r['steps']}, real size {SIZES}, Lava 0.10 fixed_pt; "
            f"command: `{r['command']}`\n\n| measurement | value |\n|---|---|\n")
    return head + "\n".join(f"| {a} | {v} |" for a, v in rows)


if __name__ == "__main__":
    sys.exit(main())
