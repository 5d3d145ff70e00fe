"""Float vs quantized (PTQ) vs quantization-aware fine-tuned (QAT) STFT on the synthetic benchmark.

    .venv/bin/python bench/bench_qat.py [--seeds 0 1 2] [--qat-epochs 3]

Per seed: train the float model (both AVCA stages), quantize its spiking branch to Loihi 2 units
(post-training, PTQ), fine-tune in deploy mode (QAT), and test all three with the stage-1 b. For
the QAT model it also evaluates through the reference simulator of the exported integer network
and checks that the metrics are identical to the torch deploy mode's. Results go to the section
"Float vs QAT" of BENCHMARKS.md and to ``bench/results/qat.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from markdown import replace_section  # noqa: E402

from stft_neuro import config as config_mod  # noqa: E402
from stft_neuro.checkpoint import load_run  # noqa: E402
from stft_neuro.data import load_benchmark  # noqa: E402
from stft_neuro.qat import qat_finetune  # noqa: E402
from stft_neuro.sim.reference import ReferenceSimulator  # noqa: E402
from stft_neuro.train import Trainer, evaluate_split_pair  # noqa: E402

METRICS = ("S", "U", "HM", "ZSL")


def mean_sd(xs: list[float]) -> str:
    return f"{xs[0]:.1f}" if len(xs) == 1 else f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--qat-epochs", type=int, default=3)
    ap.add_argument("--qat-lr", type=float, default=1e-4)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    bench = load_benchmark(config_mod.Config().data)
    rows = []
    for seed in args.seeds:
        cfg = config_mod.load(overrides=[f"train.seed={seed}"])
        with tempfile.TemporaryDirectory() as tmp:
            float_dir, qat_dir = Path(tmp) / "float", Path(tmp) / "qat"
            Trainer(cfg, bench, float_dir).run()
            res = qat_finetune(float_dir, qat_dir, [f"train.epochs={args.qat_epochs}",
                                                    f"train.lr={args.qat_lr}"], bench=bench)
            model, _, meta = load_run(qat_dir)
            sim = ReferenceSimulator(model.spiking.deployment_plan()[0])
            via_ref = evaluate_split_pair(model, bench, 2, torch.device("cpu"),
                                          float(meta["progress"]["best_bias"]), backend=sim).to_dict()
        res["reference_simulator"] = via_ref
        res["reference_equals_deploy"] = via_ref == res["qat"]
        res["seed"] = seed
        rows.append(res)
        print(f"seed {seed}: HM float {res['float']['HM']:.1f}, PTQ {res['ptq']['HM']:.1f}, "
              f"QAT {res['qat']['HM']:.1f}, via reference simulator {via_ref['HM']:.1f} "
              f"(identical: {res['reference_equals_deploy']})", flush=True)

    lines = [f"{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), mean ± sd; float model "
             f"as in the ablation table; QAT = {args.qat_epochs} epochs of deploy-mode fine-tuning on "
             f"stage_2_train at lr {args.qat_lr}; all tested with the float run's stage-1 b.", "",
             "| model | S | U | HM | ZSL |", "|---|---|---|---|---|"]
    for key, label in (("float", "float"), ("ptq", "quantized, no fine-tuning (PTQ)"),
                       ("qat", "QAT (torch deploy mode)"),
                       ("reference_simulator", "QAT through the reference simulator")):
        lines.append(f"| {label} | " + " | ".join(mean_sd([r[key][k] for r in rows]) for k in METRICS) + " |")
    drops = [r["float"]["HM"] - r["qat"]["HM"] for r in rows]
    sat = [r["quantization"]["weights_saturated"] for r in rows]
    lines += ["", f"HM drop float -> QAT: {mean_sd(drops)} points (positive = worse; the issue allows "
              f"at most 1). Weights saturated by quantization: {sat} (per seed, of "
              f"{sum(l['weights'] for l in rows[0]['quantization']['layers']):,}). Reference simulator "
              f"metrics identical to the torch deploy mode in every seed: "
              f"{all(r['reference_equals_deploy'] for r in rows)}. QAT's gain over float comes with "
              f"{args.qat_epochs} more epochs of training at a lower learning rate; no equal-epoch "
              "float fine-tuning was run as a control, so read it as 'no loss from quantization'.", "",
              "Per-layer fixed-point parameters (seed " + str(rows[0]["seed"]) + "): " + "; ".join(
                  f"{l['name']} weight_exp {l['weight_exp']}, vth {l['vth']}, du {l['du']}, dv {l['dv']}"
                  for l in rows[0]["quantization"]["layers"]) + "."]
    body = "\n".join(lines)
    print(body)
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "qat.json").write_text(json.dumps(rows, indent=2))
    if not args.no_write:
        replace_section("Float vs QAT (synthetic benchmark, UCF-GZSL split)", body,
                        "python bench/bench_qat.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
