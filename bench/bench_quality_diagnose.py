"""What the spiking branch of a trained STFT contributes: firing, fusion share, and HM without it.

    .venv/bin/python bench/bench_quality_diagnose.py RUN_DIR [--weights stage1_best.safetensors]

``RUN_DIR`` is a Trainer run folder (``config.json`` + weights), e.g. one of
``bench/results/runs/quality_UCF_real/STFT_(full)/seed0``. The benchmark is regenerated from the
run's own config (synthetic data is a function of it). On the stage-1 validation splits it reports:

- the calibrated S/U/HM/ZSL of the model as trained, and with the spiking vector ``s`` replaced by
  zeros at test time (the fusion then sees only ``r``): how much the trained model uses ``s``;
- per chip layer, the mean firing rate (spikes per neuron per step), the fraction of neurons that
  never fire and that fire at every step, on the validation samples;
- the RMS of the two summands of the joint pre-activation, ``fusion(r, s)`` and ``skip(r)``;
- GLP's learnt ``b`` per modality, and the mean entropy of TSF's weights over steps (bits; log2 T
  means uniform = the plain mean).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from stft_neuro import config as config_mod
from stft_neuro.data import load_benchmark
from stft_neuro.train import evaluate_split_pair, make_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--weights", default="stage1_best.safetensors")
    ap.add_argument("--samples", type=int, default=512, help="validation samples for the firing statistics")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = config_mod.from_run_dict(json.loads((args.run_dir / "config.json").read_text()))
    bench = load_benchmark(cfg.data)
    model = make_model(cfg, bench)
    from safetensors.torch import load_file
    model.load_state_dict(load_file(str(args.run_dir / args.weights)))
    model.eval()
    dev = torch.device("cpu")
    out = {"run": str(args.run_dir), "as_trained": evaluate_split_pair(model, bench, 1, dev).to_dict()}
    if model.spiking is None:
        print(json.dumps(out, indent=1))
        return 0

    def zero_s(_module, _inputs, output):
        s, record = output
        return torch.zeros_like(s), record

    handle = model.spiking.register_forward_hook(zero_s)
    out["s_zeroed_at_test"] = evaluate_split_pair(model, bench, 1, dev).to_dict()
    handle.remove()

    seen, unseen = bench.splits["stage_1_val_seen"], bench.splits["stage_1_val_unseen"]
    rng = np.random.default_rng(0)
    idx_s = rng.permutation(len(seen))[:args.samples // 2]
    idx_u = rng.permutation(len(unseen))[:args.samples // 2]
    a = torch.as_tensor(np.concatenate([seen.audio[idx_s], unseen.audio[idx_u]]))
    v = torch.as_tensor(np.concatenate([seen.visual[idx_s], unseen.visual[idx_u]]))
    n = torch.as_tensor(np.concatenate([seen.lengths[idx_s], unseen.lengths[idx_u]]))
    parts: dict[str, torch.Tensor] = {}
    hooks = [model.fusion.register_forward_hook(lambda m, i, o: parts.__setitem__("fusion", o)),
             model.skip.register_forward_hook(lambda m, i, o: parts.__setitem__("skip", o))]
    with torch.no_grad():
        res = model(a, v, n)
        s_vec, record = model.spiking(a, v, n)
    for h in hooks:
        h.remove()
    layers = []
    for l, sp in enumerate(res["spikes"]):  # (T, B, n_l)
        per_neuron = sp.float().mean(dim=(0, 1))  # (n_l,)
        layers.append({"layer": l, "width": int(sp.shape[-1]), "rate": float(sp.float().mean()),
                       "silent_frac": float((per_neuron == 0).float().mean()),
                       "always_frac": float((per_neuron == 1).float().mean())})
    out["layers"] = layers
    rms = lambda t: float(t.pow(2).mean().sqrt())  # noqa: E731
    out["rms"] = {"fusion(r,s)": rms(parts["fusion"]), "skip(r)": rms(parts["skip"]), "s": rms(s_vec)}
    br = model.spiking
    if br.glp_audio is not None:
        out["glp_b"] = {"audio": float(br.glp_audio.b.detach()), "visual": float(br.glp_visual.b.detach())}
    if br.cfg.tsf:
        last = res["spikes"][-1].float()
        scores = br.tsf_score(last).squeeze(-1) + br.tsf_step_bias[:, None]  # (T, B)
        w = torch.softmax(scores, dim=0)
        ent = float(-(w * torch.log2(w.clamp_min(1e-12))).sum(0).mean())
        out["tsf_entropy_bits"] = {"mean": ent, "uniform": math.log2(w.shape[0])}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
