"""Fewer steps (issue 17, part 3), *measured offline*: what a per-sample early exit would give.

Two measurements. ``--hybrid``: the early exit itself, in the hybrid loop (``stft-neuro simulate
--early-exit``: the run's rule calibrated on stage-1 validation, finished samples dropping out of
the batch), against the same run without it: ``simulate`` on the reference simulator over the whole
stage-2 test split and on Lava over a subset (``--lava-samples`` per split), each followed by
``stft-neuro report`` (chip energy per sample counted over the steps that ran, HM, mean steps).

Without ``--hybrid``: its potential, *offline*, on a trained (QAT) run, on the reference simulator,
with the host's own readout:

- Every sample runs all ``T`` steps closed loop (the spikes of step ``t`` do not depend on later
  steps, so the first ``n`` steps of a full run are exactly what a run stopped after ``n`` steps
  produced). After each step ``t`` the host's prediction is recomputed as if the run had stopped
  there: the TSF readout of the last layer's spikes with the steps after ``t`` empty, the fusion
  with the transformer and the nearest class embedding (calibration ``b`` of the run).
- Rule: stop after step ``t >= L + m`` (``L`` layers: the last layer's first input arrives at step
  ``L``) when the prediction has not changed for ``m`` steps
  (``pred[t] == pred[t-1] == ... == pred[t-m]``); ``m`` is calibrated on the stage-1 validation
  samples as the smallest patience whose predictions agree with the full run's on >= 99 %
  (and, for comparison, >= 95 %). A second rule, confidence: stop after the first step ``t >= L``
  whose margin (the runner-up class's distance minus the nearest's, calibration ``b`` applied) is
  at least ``tau``, ``tau`` the smallest validation-margin quantile that reaches the same agreement.
- On the stage-2 test samples: HM with the early-exit predictions, mean steps run, and the chip's
  energy per sample over the steps that ran, and the host's extra energy for the per-step
  predictions (readout + fusion + projection MACs x 4.6 pJ, counted by ``FlopCounterMode``) (``hw_targets/loihi2/energy.py``: exact counts of the
  truncated runs; an **estimate** in energy, Davies 2018 per-op model); and a fixed ``T' < T``
  for every sample for comparison.

Usage: ``OMP_NUM_THREADS=1 python bench/bench_early_exit.py RUN --out bench/results/early_exit.json``
(offline), ``... RUN --hybrid --out bench/results/early_exit_hybrid.json`` (the loop).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from stft_neuro.checkpoint import load_run
from stft_neuro.data import load_benchmark
from stft_neuro.hw_targets.loihi2.energy import chip_energy
from stft_neuro.hw_targets.loihi2.weights import lava_effective_weights
from stft_neuro.protocol import harmonic_mean, mean_per_class_accuracy
from stft_neuro.simulate.early_exit import per_step_predictions

from stft_neuro.machine import cpu_name

AGREEMENTS = (0.99, 0.95)


def per_step(model, bench, plan, names, bias, batch=128):
    """-> preds (T, N) as if stopped after each step, margins (T, N), labels (N,), payloads,
    spikes, theta (``simulate/early_exit.per_step_predictions``). Candidates are stage 2's
    classes for every split, the validation rows included, as this benchmark's tables were made
    (``simulate --early-exit`` calibrates among stage 1's)."""
    return per_step_predictions(model, bench, plan, bias, 2, names, batch, records=True)


def exit_steps(preds: np.ndarray, m: int, first: int = 0) -> np.ndarray:
    """Steps run per sample (1..T) under patience ``m``, counted from step ``first`` (the step
    at which the last layer first receives anything: the number of layers, one Dense delay each)."""
    T, N = preds.shape
    out = np.full(N, T)
    for i in range(N):
        for t in range(first + m, T):
            if np.all(preds[t - m:t + 1, i] == preds[t, i]):
                out[i] = t + 1
                break
    return out


def confident_steps(margins: np.ndarray, tau: float, first: int) -> np.ndarray:
    """Steps run per sample: stop after the first step ``t >= first`` whose margin is >= ``tau``."""
    T, N = margins.shape
    out = np.full(N, T)
    for i in range(N):
        hit = np.nonzero(margins[first:, i] >= tau)[0]
        if hit.size:
            out[i] = first + int(hit[0]) + 1
    return out


def hm_of(pred, labels, seen) -> tuple[float, float, float]:
    is_seen = np.isin(labels, seen)
    s = mean_per_class_accuracy(pred[is_seen], labels[is_seen])
    u = mean_per_class_accuracy(pred[~is_seen], labels[~is_seen])
    return 100 * s, 100 * u, 100 * harmonic_mean(s, u)


def energy_steps(plan, x, spikes, theta, steps: np.ndarray) -> float:
    """Chip uJ per sample when sample ``i`` runs ``steps[i]`` steps (exact counts, grouped)."""
    w = [torch.as_tensor(lava_effective_weights(layer.weight)).double() for layer in plan.network.layers]
    total = 0.0
    for n in np.unique(steps):
        idx = torch.as_tensor(np.nonzero(steps == n)[0])
        e = chip_energy(x[:n, idx], [s[:n, idx] for s in spikes], w, plan=plan,
                        theta=None if theta is None else theta[:n, idx])
        total += float(e.total_uj) * len(idx)
    return total / len(steps)


def hybrid(run: str, lava_samples: int, max_drop: float | None, scratch: Path) -> dict:
    """``simulate`` with and without ``--early-exit`` (reference: every test sample; Lava:
    ``lava_samples`` per split), each reported -> one row per run."""
    from stft_neuro.report.cli import report_run_folder
    from stft_neuro.simulate import simulate

    rows = []
    for backend, samples in (("reference", None), ("lava", lava_samples)):
        for early in (False, True):
            out = scratch / f"{backend}_{'early' if early else 'full'}"
            t0 = time.perf_counter()
            res = simulate(bundle=None, checkpoint=run, backend=backend, samples=samples, out=str(out),
                           force=True, early_exit="run" if early else None,
                           early_exit_max_drop=max_drop if early else None)
            wall = time.perf_counter() - t0
            rep, _ = report_run_folder(out)
            e = rep["energy"]
            ee = res["early_exit"] or {}
            rows.append({"backend": backend, "early_exit": early, "samples": res["samples"],
                         "rule": ee.get("describe"), "rule_source": ee.get("source"),
                         "steps_mean": ee.get("steps_mean", float(res["num_steps"])),
                         "steps_histogram": ee.get("steps_histogram"),
                         "S": res["metrics"]["S"], "U": res["metrics"]["U"], "HM": res["metrics"]["HM"],
                         "chip_uj": e["chip"] / 1e6, "host_uj": None if e["host"] is None else e["host"] / 1e6,
                         "host_early_exit_uj": (rep["host"]["components"].get("early_exit", {}).get("macs", 0)
                                                * CONSTANTS_MAC_PJ / 1e6),
                         "ann_uj": e["ann_all_on_host"]["spiking_branch_as_ann"] / 1e6,
                         "hybrid_uj": e["hybrid_total"] / 1e6, "wall_s": wall,
                         "loop_s": res["timings"]["loop_s"]})
            print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows}


CONSTANTS_MAC_PJ = 4.6   # report/energy.py host_fp32_mac_pj (Horowitz 2014)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--out", default=None)
    p.add_argument("--dead-zone", type=int, default=0, help="the plan's payload dead zone")
    p.add_argument("--hybrid", action="store_true", help="the early exit in the hybrid loop (simulate)")
    p.add_argument("--lava-samples", type=int, default=20, help="--hybrid: Lava samples per split")
    p.add_argument("--max-drop", type=float, default=None, help="--hybrid: --early-exit-max-drop")
    p.add_argument("--scratch", default="/tmp/bench_early_exit", help="--hybrid: where simulate writes")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.hybrid:
        t0 = time.time()
        out = {"run": str(args.run), "cpu": cpu_name(), "torch_threads": 1, "estimate": True,
               **hybrid(args.run, args.lava_samples, args.max_drop, Path(args.scratch)),
               "wall_s": time.time() - t0}
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        return
    t0 = time.time()
    model, cfg, meta = load_run(args.run)
    model.eval()
    bias = float(meta["progress"]["best_bias"])
    bench = load_benchmark(cfg.data)
    model.spiking.chip.payload_dead_zone = args.dead_zone
    plan, _ = model.spiking.deployment_plan()
    T = plan.num_steps
    seen = bench.seen(2)
    val, val_margin, _, _, _, _ = per_step(model, bench, plan, ("stage_1_val_seen", "stage_1_val_unseen"),
                                           bias)
    first = plan.num_layers
    from stft_neuro.report.counts import host_flops
    from stft_neuro.report.energy import CONSTANTS
    h = host_flops(model, int(bench.splits["stage_2_test_seen"].audio.shape[1]))
    per_eval_uj = sum(h[k].macs for k in ("readout", "fusion", "projection")) \
        * CONSTANTS["host_fp32_mac_pj"].value / 1e6

    def host_extra(steps: np.ndarray) -> float:
        """Host uJ per sample for the per-step predictions beyond the one a full run makes anyway:
        one readout + fusion + projection after every step from ``first`` to the exit."""
        return float(np.mean(steps - first) - 1) * per_eval_uj
    agree = {m: float(np.mean(val[exit_steps(val, m, first) - 1, np.arange(val.shape[1])] == val[-1]))
             for m in range(1, T - first)}
    test, test_margin, labels, x, spikes, theta = per_step(
        model, bench, plan, ("stage_2_test_seen", "stage_2_test_unseen"), bias)
    N = test.shape[1]
    full = hm_of(test[-1], labels, seen)
    rows = [{"rule": "full T", "steps_mean": float(T), "S": full[0], "U": full[1], "HM": full[2],
             "chip_uj": energy_steps(plan, x, spikes, theta, np.full(N, T))}]
    patience, histogram = {}, {}
    for target in AGREEMENTS:
        m = min([k for k, a in agree.items() if a >= target], default=T - first)
        steps = exit_steps(test, m, first)
        early = hm_of(test[steps - 1, np.arange(N)], labels, seen)
        patience[str(target)] = m
        histogram[str(target)] = {int(k): int(v) for k, v in zip(*np.unique(steps, return_counts=True))}
        rows.append({"rule": f"early exit, patience {m} (validation agreement >= {target})",
                     "steps_mean": float(steps.mean()), "S": early[0], "U": early[1], "HM": early[2],
                     "agreement_with_full": float(np.mean(test[steps - 1, np.arange(N)] == test[-1])),
                     "chip_uj": energy_steps(plan, x, spikes, theta, steps),
                     "host_extra_uj": host_extra(steps)})
    # confidence rule: the smallest margin threshold tau (over the validation margins' quantiles)
    # whose early-exit predictions agree with the full run's on >= target of the validation samples
    grid = np.unique(np.quantile(val_margin[first:], np.linspace(0, 1, 101)))
    tau_by_target = {}
    for target in AGREEMENTS:
        ok = [tau for tau in grid
              if np.mean(val[confident_steps(val_margin, tau, first) - 1, np.arange(val.shape[1])] == val[-1])
              >= target]
        tau = min(ok) if ok else float("inf")
        tau_by_target[str(target)] = float(tau)
        steps = confident_steps(test_margin, tau, first)
        early = hm_of(test[steps - 1, np.arange(N)], labels, seen)
        histogram[f"confidence {target}"] = {int(k): int(v) for k, v in zip(*np.unique(steps, return_counts=True))}
        rows.append({"rule": f"early exit, margin >= {tau:.4g} (validation agreement >= {target})",
                     "steps_mean": float(steps.mean()), "S": early[0], "U": early[1], "HM": early[2],
                     "agreement_with_full": float(np.mean(test[steps - 1, np.arange(N)] == test[-1])),
                     "chip_uj": energy_steps(plan, x, spikes, theta, steps),
                     "host_extra_uj": host_extra(steps)})
    for Tp in (4, 6, 8):
        r = hm_of(test[Tp - 1], labels, seen)
        rows.append({"rule": f"fixed T' = {Tp}", "steps_mean": float(Tp), "S": r[0], "U": r[1], "HM": r[2],
                     "agreement_with_full": float(np.mean(test[Tp - 1] == test[-1])),
                     "chip_uj": energy_steps(plan, x, spikes, theta, np.full(N, Tp))})
    out = {"run": str(args.run), "cpu": cpu_name(), "torch_threads": 1, "estimate": True,
           "payload_dead_zone": args.dead_zone, "T": T, "test_samples": N,
           "validation_agreement_by_patience": agree, "patience": patience,
           "margin_threshold": tau_by_target,
           "host_uj_per_prediction": per_eval_uj,
           "steps_run_histogram": histogram,
           "rows": rows, "wall_s": time.time() - t0}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
