"""Where a trained STFT's spiking branch loses class information: linear probes (issue #16).

    .venv/bin/python bench/bench_branch_probe.py RUN_DIR [--weights stage1_best.safetensors]

For each internal vector of the model (the transformer vector r, the spiking vector s, both, the
host's input currents averaged over steps, the first chip layer's synaptic input ``W1 x`` and its
ReLU, and every chip layer's firing rates, with dynamic and with static thresholds) a ridge map
(``stft_neuro.baselines.ridge.RidgeMap``, no intercept) is fitted from ``stage_1_train`` vectors to
the centred unit word table and scored on ``stage_1_val_{seen,unseen}`` (calibrated b); the best
lambda in 1..1e4 is kept. A vector that a linear map cannot read the classes from gives a low HM.
Test is never read. Prints a JSON dict ``{vector: {"HM", "S", "U", "lambda"}}``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from stft_neuro import protocol
from stft_neuro.baselines.ridge import RidgeMap
from stft_neuro.checkpoint import load_run
from stft_neuro.data import load_benchmark
from stft_neuro.model import word_geometry
from stft_neuro.model.host import valid_mask

LAMBDAS = (1.0, 10.0, 100.0, 1000.0, 10000.0)
SPLITS = ("stage_1_train", "stage_1_val_seen", "stage_1_val_unseen")


@torch.no_grad()
def vectors(model, split, batch: int = 256) -> dict[str, np.ndarray]:
    """Every probed vector of ``split``'s samples, ``{name: (N, d)}``."""
    br = model.spiking
    out: dict[str, list] = {}
    for i in range(0, len(split.labels), batch):
        a, v, n = (torch.as_tensor(x[i:i + batch]) for x in (split.audio, split.visual, split.lengths))
        r = model.transformer(a, v, valid_mask(n, a.shape[1]))
        x, g = br.encode(a, v, n)
        dyn = br.drive(x, g, br.chip).spikes
        s = br.readout(dyn[-1])  # the spiking vector STFT.forward computes from the same run
        static, _ = br.chip.run(x, None, br.chip.reset(x.shape[1]))
        w1x = x.mean(0) @ br.chip.weights[0].T
        got = {"transformer vector r": r, "spiking vector s": s, "r and s": torch.cat([r, s], 1),
               "host input currents (mean over T)": x.mean(0), "layer-1 synaptic input W1 x": w1x,
               "relu(W1 x)": torch.relu(w1x)}
        for l, (d, st) in enumerate(zip(dyn, static)):
            got[f"layer-{l + 1} rates, dynamic thresholds"] = d.mean(0)
            got[f"layer-{l + 1} rates, static thresholds"] = st.mean(0)
        for k, val in got.items():
            out.setdefault(k, []).append(val.double().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--weights", default="stage1_best.safetensors")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, cfg, _ = load_run(args.run_dir, args.weights)
    if model.spiking is None:
        print("error: the run has no spiking branch to probe", file=sys.stderr)
        return 2
    model.eval()
    bench = load_benchmark(cfg.data)
    table = word_geometry.apply_np(bench.class_embeddings, "centred_unit")
    vec = {name: vectors(model, bench.splits[name]) for name in SPLITS}
    labels = {name: bench.splits[name].labels for name in SPLITS}
    val_labels = np.concatenate([labels[SPLITS[1]], labels[SPLITS[2]]])
    result = {}
    for key in vec[SPLITS[0]]:
        best = None
        for lam in LAMBDAS:
            fit = RidgeMap.fit(vec[SPLITS[0]][key], table[labels[SPLITS[0]]], lam, intercept=False)
            pred = fit(np.concatenate([vec[SPLITS[1]][key], vec[SPLITS[2]][key]]))
            m = protocol.calibrate(pred, val_labels, table, bench.seen(1), bench.unseen(1))
            if best is None or m.HM > best["HM"]:
                best = {"HM": m.HM, "S": m.S, "U": m.U, "lambda": lam}
        result[key] = best
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
