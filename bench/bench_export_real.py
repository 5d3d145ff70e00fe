"""What ``stft-neuro export --target lava`` writes, at real size: the netx plan's cost per seed (issue 18).

    .venv/bin/python bench/bench_export_real.py RUN [RUN ...] [--out bench/results/export_real.json]

For each trained run folder (e.g. the issue-16 sweep's ``bench/results/runs/quality16_UCF_real/
STFT_(full)/seed<k>``) it runs the command a user runs, ``stft-neuro export --checkpoint RUN
--target lava --out TMP``, and keeps the bundle manifest's ``netx_cost``: the HM of the run's own
plan and of the netx plan export derived from it, both through the reference simulator in the
closed loop on the stage-2 test split at the run's b, and the weights the derivation zeroed. One
row per run is merged into the results file.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stft_neuro.results_file import update_locked  # noqa: E402

HERE = Path(__file__).resolve().parent


def table(data: dict) -> str:
    """Markdown: one row per run, then the mean difference."""
    lines = ["| run | HM, run's own plan | HM, netx plan (what export writes) | difference | "
             "nonzero weights zeroed |", "|---|---:|---:|---:|---:|"]
    diffs = []
    for run, row in sorted(data.items()):
        hm = row["hm"]
        diffs.append(hm["hm_difference"])
        lines.append(f"| `{run}` | {hm['run_plan']['HM']:.2f} | {hm['netx_plan']['HM']:.2f} | "
                     f"{hm['hm_difference']:+.2f} | {row['weights_zeroed'] / row['weights_nonzero']:.1%} |")
    lines.append(f"| mean of {len(diffs)} | | | {sum(diffs) / len(diffs):+.2f} | |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "export_real.json")
    ap.add_argument("--table", action="store_true", help="print the markdown table of the results file")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return 0
    exe = Path(sys.executable).with_name("stft-neuro")
    for run in args.runs:
        with tempfile.TemporaryDirectory() as tmp:
            bundle = Path(tmp) / "bundle"
            done = subprocess.run([str(exe), "export", "--checkpoint", str(run), "--target", "lava",
                                   "--out", str(bundle)], capture_output=True, text=True)
            if done.returncode != 0:
                print(f"error: export of {run} failed: {done.stderr.strip()}", file=sys.stderr)
                return 1
            cost = json.loads((bundle / "manifest.json").read_text())["netx_cost"]
        hm = cost["hm"]
        row = {"hm": hm, "weights_zeroed": cost["static"]["weights_zeroed"],
               "weights_nonzero": cost["static"]["weights_nonzero"]}

        def merge(on_disk, key=str(run), row=row):
            data = on_disk or {}
            data[key] = row
            return data
        update_locked(args.out, merge)
        print(json.dumps({str(run): row}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
