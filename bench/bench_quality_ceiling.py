"""What the synthetic generator lets any model reach: separability, an oracle, and linear transfer.

    .venv/bin/python bench/bench_quality_ceiling.py [--seed 0]

On the real-size synthetic UCF benchmark (stage-1 splits; numbers quoted in the docstring of
``stft_neuro/data/synthetic.py`` and the issue #11 report):

1. ridge (``stft_neuro.baselines.ridge``) fitted on stage_1_train, calibrated on stage-1 validation;
2. separability: the same ridge fitted on stage_1_train plus every other val-unseen sample, tested
   on the remaining val-unseen samples with the 12 val-unseen classes as candidates (their classes
   were seen in training): how far mean pooling is from separating classes;
3. an oracle that knows the generator's map ``f_m``: each val-unseen sample's mean-pooled features
   (centred) against ``f_m(e_c)`` (centred) of the candidate classes by cosine; ZSL accuracy;
4. linear transfer: the norm of each unseen word2vec vector outside the span of the seen classes'
   vectors, and the relative residual of ``f_m(e_unseen)`` after the same linear combination of
   the seen classes' ``f_m``.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from stft_neuro import protocol
from stft_neuro.baselines.ridge import RidgeMap, mean_pooled, run_protocol
from stft_neuro.config import DataConfig
from stft_neuro.data import load_benchmark
from stft_neuro.data import synthetic as syn


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = DataConfig(sizes="real", seed=args.seed)
    b = load_benchmark(cfg)
    out: dict = {"seed": args.seed, "ridge_stage1_val": run_protocol(b)["stage1_val_metrics"]}
    tr, vu = b.splits["stage_1_train"], b.splits["stage_1_val_unseen"]
    x_tr, y_tr = mean_pooled(tr), b.class_embeddings[tr.labels].astype(np.float64)
    x_vu = mean_pooled(vu)
    half = np.arange(len(vu)) % 2 == 0
    fit = RidgeMap.fit(np.concatenate([x_tr, x_vu[half]]),
                       np.concatenate([y_tr, b.class_embeddings[vu.labels[half]]]), 100.0)
    pred = protocol.predict(protocol.distances(fit(x_vu[~half]), b.class_embeddings), b.unseen(1))
    out["separability_val_unseen_classes_in_training"] = 100 * protocol.mean_per_class_accuracy(pred, vu.labels[~half])
    mrng = syn._rng(cfg.seed, syn._MAPS)  # the generator's own maps (same seed and draw order)
    mods = (syn._Modality(mrng, cfg.audio_dim), syn._Modality(mrng, cfg.visual_dim))
    emb = b.class_embeddings.astype(np.float64)
    un, seen = b.unseen(1), b.seen(1)
    proto = np.concatenate([mods[0](emb), mods[1](emb)], axis=1)  # (C, Da + Dv), no class offset
    xc = x_vu - x_vu.mean(0)
    pc = proto[un] - proto[un].mean(0)
    cos = (xc / np.linalg.norm(xc, axis=1, keepdims=True)) @ (pc / np.linalg.norm(pc, axis=1, keepdims=True)).T
    out["oracle_zsl_knowing_f"] = 100 * protocol.mean_per_class_accuracy(un[cos.argmax(1)], vu.labels)
    out["chance_zsl"] = 100 / len(un)
    coef = np.linalg.lstsq(emb[seen].T, emb[un].T, rcond=None)[0]  # (n_seen, n_unseen)
    out["w2v_norm_outside_seen_span"] = float(np.linalg.norm(emb[un].T - emb[seen].T @ coef, axis=0).mean())
    resid = np.linalg.norm(proto[un] - coef.T @ proto[seen], axis=1).mean()
    out["f_relative_residual"] = float(resid / np.linalg.norm(proto[un] - proto.mean(0), axis=1).mean())
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
