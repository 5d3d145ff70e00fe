"""Where the chip's energy can go, on validation only (issue #17): the payload dead zone x layer-1
pruning, applied to trained float runs without retraining (post-training quantization).

    .venv/bin/python bench/bench_energy_probe.py --from-runs DIR [--seeds 0] [--densities 1,0.5,0.25,0.1,0.05]
                                                 [--dead-zones 0,8,16,24,32,64] [--out FILE]

Per seed ``k``: the run ``DIR/seed<k>``'s **stage-1** model (``stage1_best.safetensors``: trained
on ``stage_1_train`` only), its payload scale calibrated on ``stage_1_train``, then for every
(density, k): layer 1 pruned to its largest weights (``ChipNetwork.prune_input_weights``), the dead
zone set, deploy mode (Loihi 2 arithmetic), the ridge readout refitted on ``stage_1_train`` with
the member the run chose (for ``fusion.readout = ridge``), and on the stage-1 validation split:
HM (b calibrated there) and the chip's energy per sample (``SpikingBranch.chip_energy`` in deploy
mode: the report's exact count). Nothing here reads a test split: this is how the grid that
``bench/bench_energy.py`` fine-tunes and tests was chosen. It is a lower bound on what QAT keeps
(no weight adapts to the pruning or the dead zone).

Writes ``--out`` (default ``bench/results/energy_probe.json``) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from stft_neuro.baselines.ridge import RidgeVariant
from stft_neuro.checkpoint import load_run, write_json
from stft_neuro.data import load_benchmark
from stft_neuro.errors import UserError
from stft_neuro.machine import cpu_name
from stft_neuro.readout_fit import fit_readout
from stft_neuro.run_plan import calibrate
from stft_neuro.train import evaluate_split_pair

HERE = Path(__file__).resolve().parent


@torch.no_grad()
def val_energy_uj(model, bench, batch: int = 512) -> float:
    """Chip energy per sample (uJ, deploy mode) over both stage-1 validation splits."""
    total, n = 0.0, 0
    for name in ("stage_1_val_seen", "stage_1_val_unseen"):
        sp = bench.splits[name]
        for i in range(0, len(sp.labels), batch):
            a, v, l = (torch.as_tensor(x[i:i + batch]) for x in (sp.audio, sp.visual, sp.lengths))
            _, rec = model.spiking(a, v, l)
            total += float(model.spiking.chip_energy(rec).total_uj) * len(a)
            n += len(a)
    return total / max(1, n)


def probe_seed(run: Path, densities: list[float], dead_zones: list[int]) -> list[dict]:
    model, cfg, meta = load_run(run, "stage1_best.safetensors")
    if model.spiking is None:
        raise UserError(f"{run}: no spiking branch to probe")
    member = meta["progress"].get("readout_member")
    bench = load_benchmark(cfg.data)
    cpu = torch.device("cpu")
    calibrate(model, bench.splits["stage_1_train"], cpu)
    w0 = model.spiking.chip.weights[0].detach().clone()
    rows = []
    for density in densities:
        for k in dead_zones:
            t0 = time.perf_counter()
            with torch.no_grad():
                model.spiking.chip.weights[0].copy_(w0)
            if density < 1:
                model.spiking.chip.prune_input_weights(density)
            model.spiking.chip.payload_dead_zone = k
            model.spiking.set_deploy(True)
            if model.ridge is not None and member is not None:
                fit_readout(model, bench, 1, cpu, RidgeVariant(**member))
            m = evaluate_split_pair(model, bench, 1, cpu)
            rows.append({"density": density, "k": k, "HM": m.HM, "S": m.S, "U": m.U,
                         "chip_uj": val_energy_uj(model, bench), "seconds": time.perf_counter() - t0})
            print(f"  density {density:<5g} k {k:>3}: val HM {m.HM:5.2f}, chip {rows[-1]['chip_uj']:.3f} uJ",
                  flush=True)
    return rows


def table(data: dict) -> str:
    seeds = sorted(data["results"], key=int)
    first = data["results"][seeds[0]]
    lines = ["| layer-1 density | k | " + " | ".join(f"seed {s} val HM | chip uJ" for s in seeds) + " |",
             "|---:|---:|" + "---:|---:|" * len(seeds)]
    for i, r in enumerate(first):
        cells = " | ".join(f"{data['results'][s][i]['HM']:.2f} | {data['results'][s][i]['chip_uj']:.3f}"
                           for s in seeds)
        lines.append(f"| {r['density']:g} | {r['k']} | {cells} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from-runs", type=Path, required=True, metavar="DIR")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--densities", default="1,0.5,0.25,0.1,0.05")
    ap.add_argument("--dead-zones", default="0,8,16,24,32,64")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "energy_probe.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    try:
        densities = [float(d) for d in args.densities.split(",")]
        dead_zones = [int(k) for k in args.dead_zones.split(",")]
        data = {"from_runs": str(args.from_runs), "cpu": cpu_name(), "results": {}}
        for seed in args.seeds:
            run = args.from_runs / f"seed{seed}"
            if not (run / "stage1_best.safetensors").is_file():
                raise UserError(f"{run}: no stage1_best.safetensors (not a finished float run)")
            print(f"seed {seed}: {run}", flush=True)
            data["results"][str(seed)] = probe_seed(run, densities, dead_zones)
    except (UserError, ValueError) as exc:
        print(f"bench_energy_probe: error: {exc}", file=sys.stderr)
        return 2
    write_json(args.out, data)
    print(table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
