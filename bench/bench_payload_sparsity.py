"""Sparse messages into the chip, measured on a trained (QAT) run: issue 17, part 2.

For a run folder (``stft-neuro train --qat``), on the stage-2 test samples, with the spiking branch
run closed loop by the bit-exact reference simulator (== Lava ``fixed_pt`` == torch deploy mode):

1. **payload dead zone** ``k`` (``DeploymentPlan.payload_dead_zone``; kept in the plan): HM, host ->
   chip payloads per sample, layer-1 synaptic events and the chip's energy per sample, per ``k``.
2. **delta encoding of the input** (measured only, not built): how often a payload changes from
   one step to the next, and the messages a delta encoder would send: plain deltas
   ``q_t - q_{t-1}`` (lossless), and a sigma-delta encoder with error feedback and a dead zone
   ``k`` (the host sends ``d_t = q_t - r_{t-1}`` when ``|d_t| > k``, ``r_t = r_{t-1} + d_t``;
   the chip would integrate ``r``). Events are messages x layer-1 fan-out, as the report counts.
3. **magnitude pruning of layer-1 weights** (measured only; no retraining): the smallest ``p`` %
   of the nonzero layer-1 integer weights set to 0 in the plan; HM, layer-1 events, chip energy;
   and pruning combined with the dead zone.

HM is measured on the benchmark's stage-2 test samples of one run (no seeds, no intervals): at the
demo's small sizes (408 test samples) differences of a few HM points are within its noise.

Energies are **estimates** (Loihi per-operation model, Davies et al. 2018; no Loihi 2 table is
published) from ``hw_targets/loihi2/energy.py``, which equals ``stft-neuro report``'s count
(tests/test_energy_estimate.py). The ANN-on-host figure is the spiking branch's dense MACs per
sample x 4.6 pJ (Horowitz 2014), as the report computes it.

Usage: ``OMP_NUM_THREADS=1 python bench/bench_payload_sparsity.py RUN --out bench/results/payload_sparsity.json``
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from stft_neuro.checkpoint import load_run
from stft_neuro.data import load_benchmark
from stft_neuro.hw_targets.loihi2.energy import chip_energy
from stft_neuro.hw_targets.loihi2.network import FixedPointNetwork
from stft_neuro.hw_targets.loihi2.weights import lava_effective_weights
from stft_neuro.machine import cpu_name
from stft_neuro.report.energy import CONSTANTS
from stft_neuro.sim.reference import ReferenceSimulator
from stft_neuro.train import evaluate_split_pair

SPLITS = ("stage_2_test_seen", "stage_2_test_unseen")




@torch.no_grad()
def run_plan(model, bench, plan, batch: int = 128):
    """Closed-loop run of every test sample: payloads (T, N, n_in), spikes [(T, N, n)], theta."""
    br = model.spiking
    sim = ReferenceSimulator(plan)
    xs, sps, ths = [], [], []
    for name in SPLITS:
        sp = bench.splits[name]
        for i in range(0, len(sp.labels), batch):
            a, v, n = (torch.as_tensor(np.asarray(t[i:i + batch])) for t in (sp.audio, sp.visual, sp.lengths))
            x, g = br.encode(a, v, n)
            rec = br.drive(x, g, sim)
            xs.append(plan.encode_input(x))
            sps.append(rec.spikes)
            ths.append(rec.theta)
    x = torch.cat(xs, 1)
    spikes = [torch.cat([s[l] for s in sps], 1) for l in range(plan.num_layers)]
    theta = None if ths[0] is None else torch.cat(ths, 1)
    return x, spikes, theta


def energy_of(plan, x, spikes, theta) -> dict:
    w = [torch.as_tensor(lava_effective_weights(layer.weight)).double() for layer in plan.network.layers]
    e = chip_energy(x, spikes, w, plan=plan, theta=theta)
    N = x.shape[1]
    return {"chip_uj": float(e.total_uj), "synaptic_uj": float(e.synaptic_uj),
            "payloads_per_sample": float((x != 0).sum()) / N,
            "layer1_events_per_sample": float(e.synaptic_events[0]) / N,
            "events_per_sample": float(e.synaptic_events.sum()) / N}


def hm(model, bench, plan, bias) -> float:
    return float(evaluate_split_pair(model, bench, 2, torch.device("cpu"), bias,
                                     backend=ReferenceSimulator(plan)).HM)


def delta_messages(q: torch.Tensor, k: int, fanout: torch.Tensor) -> tuple[float, float, float]:
    """A sigma-delta encoder with dead zone ``k`` over ``q`` (T, N, n): messages per sample, the
    layer-1 synaptic events they would cause per sample (each message x its nonzero fan-out), and
    the largest reconstruction error ``|q - r|`` (<= k)."""
    r = torch.zeros_like(q[0])
    msgs, events = 0, 0.0
    err = 0.0
    for t in range(q.shape[0]):
        d = q[t] - r
        send = d.abs() > k
        msgs += int(send.sum())
        events += float(send.double().sum(0) @ fanout)
        r = torch.where(send, q[t], r)
        err = max(err, float((q[t] - r).abs().max()))
    return msgs / q.shape[1], events / q.shape[1], err


def pruned(plan, fraction: float):
    """The plan with the smallest ``fraction`` of layer 1's nonzero weights set to 0."""
    layer = plan.network.layers[0]
    w = lava_effective_weights(layer.weight)
    nz = np.abs(w[w != 0])
    if fraction <= 0 or nz.size == 0:
        return plan
    cut = np.quantile(nz, fraction)
    w2 = np.where(np.abs(w) <= cut, 0, w)
    layers = (dataclasses.replace(layer, weight=w2),) + plan.network.layers[1:]
    return dataclasses.replace(plan, network=FixedPointNetwork(layers))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a QAT run folder (stft-neuro train --qat)")
    p.add_argument("--out", default=None, help="write the results as JSON")
    p.add_argument("--dead-zones", default="0,1,2,4,8,16,24,32,48,64")
    p.add_argument("--prune", default="0,0.25,0.5,0.75,0.9")
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    model, cfg, meta = load_run(args.run)
    model.eval()
    if not model.spiking.deploy:
        raise SystemExit(f"{args.run}: not a QAT run (train --qat)")
    bench = load_benchmark(cfg.data)
    bias = float(meta["progress"]["best_bias"])
    base, _ = model.spiking.deployment_plan()
    mac = CONSTANTS["host_fp32_mac_pj"].value
    dense = sum(l.n_in * l.n_out for l in base.network.layers) * base.num_steps
    out: dict = {"run": str(args.run), "cpu": cpu_name(), "torch_threads": 1,
                 "estimate": True, "energy_model": "hw_targets/loihi2/energy.py (Davies 2018 per-op; "
                 "no Loihi 2 table is published); ANN: dense MACs x 4.6 pJ (Horowitz 2014)",
                 "spiking_branch_as_ann_uj": dense * mac / 1e6, "dense_macs_per_sample": dense,
                 "sizes": list(base.sizes), "num_steps": base.num_steps,
                 "layer1_weight_exp": int(base.network.layers[0].weight_exp)}
    x0, sp0, th0 = run_plan(model, bench, base)
    out["samples"] = int(x0.shape[1])

    rows = []
    for k in (int(v) for v in args.dead_zones.split(",")):
        model.spiking.chip.payload_dead_zone = k
        plan, _ = model.spiking.deployment_plan()
        x, sp, th = run_plan(model, bench, plan)
        rows.append({"k": k, "HM": hm(model, bench, plan, bias), **energy_of(plan, x, sp, th)})
        print("dead zone", rows[-1], flush=True)
    model.spiking.chip.payload_dead_zone = 0
    out["dead_zone"] = rows

    q = x0
    T = q.shape[0]
    changed = float((q[1:] != q[:-1]).double().mean())
    fanout = torch.as_tensor((lava_effective_weights(base.network.layers[0].weight) != 0).sum(0)).double()
    base_e = rows[0]
    delta = {"payload_changes_between_steps": changed,
             "plain_payloads_per_sample": float((q != 0).sum()) / q.shape[1],
             "mean_layer1_fanout": float(fanout.mean()), "rows": [],
             "note": "k = 0 is lossless (the chip would see the same inputs, so every other count is "
                     "unchanged): chip_uj_if_integrated_for_free = the plain run's chip energy minus "
                     "the layer-1 events saved x 23.6 pJ, assuming the chip-side integration costs "
                     "nothing extra (an assumption: Lava 0.10 has no exact form, see the report)"}
    for k in (0, 1, 2, 4, 8, 16, 32, 64):
        msgs, events, err = delta_messages(q, k, fanout)
        row = {"k": k, "messages_per_sample": msgs, "layer1_events_per_sample": events,
               "max_reconstruction_error": err}
        if k == 0:
            row["chip_uj_if_integrated_for_free"] = base_e["chip_uj"] - (
                base_e["layer1_events_per_sample"] - events) * CONSTANTS["loihi_synop_pj"].value / 1e6
        delta["rows"].append(row)
        print("delta", row, flush=True)
    # the host's input currents themselves: relative change between steps
    cur = []
    with torch.no_grad():
        for name in SPLITS:
            sp = bench.splits[name]
            a, v, n = (torch.as_tensor(np.asarray(t)) for t in (sp.audio, sp.visual, sp.lengths))
            cur.append(model.spiking.encode(a, v, n)[0])
    c = torch.cat(cur, 1)
    delta["current_rel_change_between_steps"] = float((c[1:] - c[:-1]).abs().mean() / c.abs().mean())
    delta["seconds_per_sample"] = {"min": int(min(int(bench.splits[s].lengths.min()) for s in SPLITS)),
                                   "max": int(max(int(bench.splits[s].lengths.max()) for s in SPLITS))}
    out["delta"] = delta

    prune_rows = []
    for frac in (float(v) for v in args.prune.split(",")):
        plan = pruned(base, frac)
        x, sp, th = run_plan(model, bench, plan)
        prune_rows.append({"fraction": frac, "HM": hm(model, bench, plan, bias), **energy_of(plan, x, sp, th)})
        print("prune", prune_rows[-1], flush=True)
    out["prune_layer1"] = prune_rows

    combined = []
    for frac in (0.75, 0.9):
        for k in (16, 32):
            model.spiking.chip.payload_dead_zone = k
            plan = pruned(model.spiking.deployment_plan()[0], frac)
            x, sp, th = run_plan(model, bench, plan)
            combined.append({"fraction": frac, "k": k, "HM": hm(model, bench, plan, bias),
                             **energy_of(plan, x, sp, th)})
            print("combined", combined[-1], flush=True)
    model.spiking.chip.payload_dead_zone = 0
    out["prune_and_dead_zone"] = combined
    out["wall_s"] = time.time() - t0
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in ("dead_zone", "prune_layer1", "prune_and_dead_zone")}, indent=1))


if __name__ == "__main__":
    main()
