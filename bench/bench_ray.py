"""Ray sharding (issue #12): wall time of ``simulate`` and of a small sweep with 1 and 2 workers.

    .venv/bin/python bench/bench_ray.py --checkpoint RUN [--samples 250] [--batch 64]
                                        [--sweep-seeds 0 1] [--skip-sweep] [--out FILE]

``simulate`` (reference and Lava backends, the run's real-size model): one process, then
``--ray --ray-workers 1`` and ``--ray --ray-workers 2`` (a private local Ray each time). Every wall
time is the whole command, as a user sees it (a fresh process: loading, planning, Ray start-up,
the run, writing). Each sharded run's records are checked byte-identical to the single-process
run's. Scaling efficiency = T(1 worker) / (2 x T(2 workers)). The per-sample cost is the Lava
shards' worker-seconds per sample at 1 worker (``results.json`` ``ray.shards[*].seconds``) less
their Lava builds (``timings.lava.build_s``), and the projection for a test split of ``--project`` samples
(VGGSound-GZSL's stage-2 test split: 9,032 seen + 3,450 unseen = 12,482) on N workers is
``setup + 4 x build + samples x cost / N`` with ``setup`` the 1-worker run's wall time less its
shards' time and ``build`` one Lava build (each worker runs 4 shards, each builds its network)
(an estimate: it assumes the per-sample cost of this CPU and perfect scaling beyond what is
measured).

The sweep: ``bench_quality.py run`` over ``--sweep-variants`` x ``--sweep-seeds`` at small sizes,
in one process, then ``--ray --ray-workers 1`` and ``2``; each in its own results file.
Results go to ``--out`` (default ``bench/results/ray.json``); the markdown is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stft_neuro.machine import cpu_name

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VGGSOUND_TEST = 9032 + 3450   # stage_2_test_seen.csv + stage_2_test_unseen.csv rows (main_split)




def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def bench_simulate(args, tmp: Path) -> dict:
    exe = str(ROOT / ".venv" / "bin" / "stft-neuro")
    out: dict = {}
    for backend in ("reference", "lava"):
        rows = {}
        for mode, extra in (("1 process", []), ("ray 1 worker", ["--ray", "--ray-workers", "1"]),
                            ("ray 2 workers", ["--ray", "--ray-workers", "2"])):
            folder = tmp / f"{backend}-{mode.replace(' ', '_')}"
            wall = _timed([exe, "simulate", "--checkpoint", args.checkpoint, "--backend", backend,
                           "--samples", str(args.samples), "--batch", str(args.batch), "--json",
                           "--out", str(folder), *extra])
            res = json.loads((folder / "results.json").read_text())
            rows[mode] = {"wall_s": wall, "loop_s": res["timings"]["loop_s"], "samples": res["samples"],
                          "shard_s": [s["seconds"] for s in res["ray"]["shards"]] if res["ray"] else None,
                          "shards": len(res["ray"]["shards"]) if res["ray"] else None,
                          "ray_startup_s": res["ray"]["startup_s"] if res["ray"] else None,
                          "lava_builds": (res["timings"]["lava"] or {}).get("builds"),
                          "lava_build_s": (res["timings"]["lava"] or {}).get("build_s")}
            if mode != "1 process":
                base = tmp / f"{backend}-1_process"
                for f in ("records.npz", "plan.safetensors"):
                    rows[mode][f"{f} identical"] = (base / f).read_bytes() == (folder / f).read_bytes()
            print(backend, mode, json.dumps(rows[mode]), flush=True)
        one, two = rows["ray 1 worker"], rows["ray 2 workers"]
        n = one["samples"]
        build = (one["lava_build_s"] or 0.0) / max(1, one["lava_builds"] or 1)   # per shard
        cost = (sum(one["shard_s"]) - (one["lava_build_s"] or 0.0)) / n
        setup = one["wall_s"] - sum(one["shard_s"])
        # N workers run 4N shards (simulate's _shard_ranges), 4 after another on each worker
        out[backend] = {"runs": rows, "efficiency": one["wall_s"] / (2 * two["wall_s"]),
                        "worker_s_per_sample": cost, "build_s_per_shard": build, "setup_s": setup,
                        "projection_s": {str(w): setup + 4 * build + args.project * cost / w
                                         for w in (1, 2, 8, 32, 128)}}
    return out


def bench_sweep(args, tmp: Path) -> dict:
    rows = {}
    sets = [a for s in args.sweep_set for a in ("--set", s)]
    for mode, extra in (("1 process", []), ("ray 1 worker", ["--ray", "--ray-workers", "1"]),
                        ("ray 2 workers", ["--ray", "--ray-workers", "2"])):
        tag = mode.replace(" ", "_")
        wall = _timed([sys.executable, str(HERE / "bench_quality.py"), "run", "--out", str(tmp / f"sweep_{tag}.json"),
                       "--work", str(tmp / f"work_{tag}"), "--seeds", *map(str, args.sweep_seeds),
                       "--variants", *args.sweep_variants, *sets, *extra])
        data = json.loads((tmp / f"sweep_{tag}.json").read_text())
        rows[mode] = {"wall_s": wall, "runs": sum(len(r) for r in data["results"].values()),
                      "HM": {f"{v} / {s}": r["HM"] for v, by in sorted(data["results"].items())
                             for s, r in sorted(by.items())}}
        print("sweep", mode, json.dumps(rows[mode]), flush=True)
    return {"runs": rows, "efficiency": rows["ray 1 worker"]["wall_s"] / (2 * rows["ray 2 workers"]["wall_s"]),
            "same_HM": rows["ray 2 workers"]["HM"] == rows["1 process"]["HM"] == rows["ray 1 worker"]["HM"]}


def markdown(r: dict) -> str:
    lines = [f"CPU: {r['cpu']}; load average before / after: {r['load_before']} / {r['load_after']}.", "",
             "| what | 1 process | Ray, 1 worker | Ray, 2 workers | efficiency 1 -> 2 | records identical |",
             "|---|---|---|---|---|---|"]
    for backend, b in r.get("simulate", {}).items():
        runs = b["runs"]
        same = all(v for m in ("ray 1 worker", "ray 2 workers") for k, v in runs[m].items() if k.endswith("identical"))
        lines.append(f"| simulate --backend {backend}, {runs['1 process']['samples']} samples | "
                     + " | ".join(f"{runs[m]['wall_s']:.1f} s" for m in ("1 process", "ray 1 worker", "ray 2 workers"))
                     + f" | {100 * b['efficiency']:.0f} % | {'yes' if same else 'NO'} |")
    if "sweep" in r:
        s = r["sweep"]["runs"]
        lines.append(f"| sweep, {s['1 process']['runs']} runs | "
                     + " | ".join(f"{s[m]['wall_s']:.1f} s" for m in ("1 process", "ray 1 worker", "ray 2 workers"))
                     + f" | {100 * r['sweep']['efficiency']:.0f} % | same HM: {'yes' if r['sweep']['same_HM'] else 'NO'} |")
    lava = r.get("simulate", {}).get("lava")
    if lava:
        proj = ", ".join(f"{w} worker{'s' if w != '1' else ''}: {t / 60:.1f} min" if t < 3600 else
                         f"{w} workers: {t / 3600:.1f} h" for w, t in lava["projection_s"].items())
        lines += ["", f"Lava per-sample cost: {lava['worker_s_per_sample'] * 1e3:.1f} ms of worker time per "
                      f"sample (1 worker, host included), plus {lava['build_s_per_shard']:.1f} s of Lava build "
                      f"per shard (4 shards per worker); fixed setup (load, plan, Ray start-up, merge, "
                      f"write) {lava['setup_s']:.1f} s. Projected "
                      f"wall time of a VGGSound-GZSL-size test split ({r['project']:,} samples) through Lava "
                      f"(estimate: this CPU's cost, perfect scaling): {proj}."]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--samples", type=int, default=250, help="per split (simulate --samples)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--project", type=int, default=VGGSOUND_TEST)
    ap.add_argument("--sweep-seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--sweep-variants", nargs="+", default=["STFT (full)", "AVCA-like (no spiking, concat)"])
    ap.add_argument("--sweep-set", action="append", default=["data.sizes=small", "train.epochs=2"])
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "ray.json"))
    args = ap.parse_args()
    r = {"cpu": cpu_name(), "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()), "project": args.project,
         "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        r["simulate"] = bench_simulate(args, Path(tmp))
        if not args.skip_sweep:
            r["sweep"] = bench_sweep(args, Path(tmp))
    r["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    Path(args.out).write_text(json.dumps(r, indent=1))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
