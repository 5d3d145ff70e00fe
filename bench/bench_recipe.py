"""One recipe candidate on stage-1 validation, with what its spiking branch is worth (issue #16).

    .venv/bin/python bench/bench_recipe.py NAME [--seed 0] [--set section.key=value ...]

Trains stage 1 only (``train.stages=1``) on the real-size synthetic benchmark (``data.sizes=real``,
``train.threads=1``, seed k = data seed = training seed), keeps the best validation epoch, and
scores that model on ``stage_1_val_{seen,unseen}`` as trained, with the spiking output zeroed and
with it shuffled across samples (``stft_neuro/branch_worth.py``, at the run's b). Test is never
read: this is how the real-size recipe's changes were chosen. One row per (NAME, seed) is merged
into ``bench/results/recipe16.json`` (resumable: the run folder under
``bench/results/runs/recipe16/NAME/seedK`` resumes from its last epoch).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stft_neuro import config as config_mod  # noqa: E402
from stft_neuro.branch_worth import branch_worth  # noqa: E402
from stft_neuro.checkpoint import load_run  # noqa: E402
from stft_neuro.data import load_benchmark  # noqa: E402
from stft_neuro.train import Trainer  # noqa: E402
from stft_neuro.results_file import update_locked  # noqa: E402

HERE = Path(__file__).resolve().parent
BASE = ["data.sizes=real", "train.threads=1", "train.stages=1"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "recipe16.json")
    args = ap.parse_args()
    cfg = config_mod.load(overrides=[*BASE, *args.overrides, f"data.seed={args.seed}", f"train.seed={args.seed}"])
    bench = load_benchmark(cfg.data)
    run_dir = HERE / "results" / "runs" / "recipe16" / args.name / f"seed{args.seed}"
    t0 = time.perf_counter()
    result = Trainer(cfg, bench, run_dir).run(resume=(run_dir / "meta.json").is_file())
    model = load_run(run_dir, "stage1_best.safetensors")[0]
    worth = (branch_worth(model, bench, 1, result["stage1_val"]["bias"], seed=args.seed)
             if model.spiking is not None else None)
    row = {"overrides": args.overrides, "stage1_val": result["stage1_val"],
           "worth_HM": None if worth is None else {k: v["HM"] for k, v in worth.items()},
           "seconds": time.perf_counter() - t0, "fusion": cfg.to_dict()["fusion"]}

    def merge(on_disk):
        data = on_disk or {}
        data.setdefault(args.name, {})[str(args.seed)] = row
        return data
    update_locked(args.out, merge)
    print(json.dumps({args.name: row}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
