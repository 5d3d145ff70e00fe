"""How the saliency chip's settings were chosen (issue #16): the chip alone, on stage-1 validation.

    .venv/bin/python bench/bench_saliency_probe.py [--seed 0] [--epochs 10] [--hidden 128]
        [--du 0.5] [--dv 0.5] [--init graded] [--heads 2] [--out bench/results/saliency_probe.json]

A stripped-down model isolates the chip's part of the real-size recipe (``model/saliency.py``): a
:class:`~stft_neuro.model.host.SpikingBranch` with ``spiking.saliency`` (float mode, static
thresholds) weights the host's binned features, and one linear map of the pooled, standardised
features is trained towards the class's centred unit word vector (mean squared error, Adam, lr
1e-3, weight decay 1e-4) on ``stage_1_train`` of real-size synthetic UCF (seed k = data seed). Then
three stage-1 validation HMs are scored, each at its own calibrated b:

- ``trained_readout``: the trained linear map itself;
- ``ridge_readout``: the ridge family (``baselines/ridge.py``, member chosen on validation) fitted
  on the chip-pooled features in place of the mean-pooled ones (what ``fusion.readout=ridge``
  does in the STFT);
- ``ridge_readout_shuffled``: the same with each sample pooled by another sample's weights;

beside the ridge baseline on mean-pooled features (``ridge_mean_pooled``). Test is never read.
One row per setting is merged into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from stft_neuro import protocol
from stft_neuro.baselines import ridge
from stft_neuro.config import DataConfig, SpikingConfig
from stft_neuro.data import load_benchmark
from stft_neuro.model import word_geometry
from stft_neuro.model.host import SpikingBranch
from stft_neuro.results_file import update_locked

HERE = Path(__file__).resolve().parent
VAL = ("stage_1_val_seen", "stage_1_val_unseen")


def tensors(split):
    return torch.as_tensor(split.audio), torch.as_tensor(split.visual), torch.as_tensor(split.lengths)


def saliency_weights(br: SpikingBranch, a, v, n) -> torch.Tensor:
    """``(B, K, H)`` weights of the bins from the chip's last-layer spikes (float mode)."""
    x, g = br.encode(a, v, n)
    return br.saliency.weights(br.drive(x, g, br.chip).spikes[-1])


def weights_and_bins(br: SpikingBranch, split, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """The chip's weights ``(N, K, H)`` and the raw binned features ``(N, K, Da + Dv)`` of a split."""
    a, v, n = tensors(split)
    with torch.no_grad():
        w = torch.cat([saliency_weights(br, a[i:i + batch], v[i:i + batch], n[i:i + batch])
                       for i in range(0, len(n), batch)])
        return w, br.binned_features(a, v, n)


def best_ridge_hm(bench, x: dict[str, np.ndarray]) -> float:
    """Validation HM of the best ridge family member on the given pooled features."""
    feats = ridge._Features(bench)
    feats.x = {name: x[name] for name in ("stage_1_train", *VAL)}
    return max(feats.metrics(feats.fit("stage_1_train", v), v, 1, None).HM for v in ridge.FAMILY)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--hidden", default="128", help="chip layer widths, e.g. 256,256,128")
    ap.add_argument("--du", type=float, default=0.5)
    ap.add_argument("--dv", type=float, default=0.5)
    ap.add_argument("--init", default="graded", choices=("default", "graded"))
    ap.add_argument("--heads", type=int, default=2, choices=(1, 2))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "saliency_probe.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    bench = load_benchmark(DataConfig(sizes="real", seed=args.seed))
    hidden = tuple(int(h) for h in args.hidden.split(","))
    cfg = SpikingConfig(hidden=hidden, num_steps=10 + len(hidden), du=args.du, dv=args.dv, init=args.init,
                        dynamic_threshold=False, saliency=args.heads)
    train = bench.splits["stage_1_train"]
    a, v, n = tensors(train)
    br = SpikingBranch(a.shape[-1], v.shape[-1], cfg)
    if args.init == "graded":
        with torch.no_grad():
            br.chip.graded_init(br.encode(a[:512], v[:512], n[:512])[0], cfg.init_drive_std, cfg.init_drive_mean)
    mask = torch.as_tensor(train.mask())
    raw = torch.cat([a, v], -1)[mask]
    mu, sd = raw.mean(0), raw.std(0)
    table = torch.as_tensor(word_geometry.apply_np(bench.class_embeddings, "centred_unit"), dtype=torch.float32)
    head = torch.nn.Linear(raw.shape[-1], table.shape[1], bias=False)
    opt = torch.optim.Adam([*br.parameters(), *head.parameters()], lr=1e-3, weight_decay=1e-4)
    y = table[torch.as_tensor(train.labels)]
    for _ in range(args.epochs):
        for idx in torch.randperm(len(n)).split(64):
            p = br.saliency.pool(saliency_weights(br, a[idx], v[idx], n[idx]), br.binned_features(a[idx], v[idx], n[idx]))
            loss = ((head((p - mu) / sd) - y[idx]) ** 2).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    br.eval()
    wb = {name: weights_and_bins(br, bench.splits[name]) for name in ("stage_1_train", *VAL)}
    x = {name: br.saliency.pool(w, bins).double().numpy() for name, (w, bins) in wb.items()}
    # the shuffle pools each validation sample's own bins by another's weights (both validation
    # splits permuted together)
    w_val, bins_val = (torch.cat([wb[s][k] for s in VAL]) for k in (0, 1))
    perm = torch.as_tensor(np.random.default_rng(args.seed).permutation(len(w_val)))
    shuffled = br.saliency.pool(w_val[perm], bins_val).double().numpy()
    sizes = np.cumsum([0] + [len(bench.splits[s].labels) for s in VAL])
    x_shuffled = {**x, **{s: shuffled[sizes[i]:sizes[i + 1]] for i, s in enumerate(VAL)}}
    with torch.no_grad():
        emb = head((torch.as_tensor(np.concatenate([x[s] for s in VAL]), dtype=torch.float32) - mu) / sd).numpy()
    labels = np.concatenate([bench.splits[s].labels for s in VAL])
    row = {**{k: list(v) if isinstance(v, tuple) else v for k, v in vars(args).items() if k != "out"},
           "ridge_mean_pooled": ridge.select_and_run(bench)["stage1_val"]["HM"],
           "trained_readout": protocol.calibrate(emb, labels, table.numpy(), bench.seen(1), bench.unseen(1)).HM,
           "ridge_readout": best_ridge_hm(bench, x),
           "ridge_readout_shuffled": best_ridge_hm(bench, x_shuffled),
           "seconds": time.perf_counter() - t0}
    key = f"seed{args.seed} hidden{args.hidden} du{args.du:g} dv{args.dv:g} {args.init} heads{args.heads} epochs{args.epochs}"
    update_locked(args.out, lambda d: {**(d or {}), key: row}, indent=2)
    print(json.dumps({key: row}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
