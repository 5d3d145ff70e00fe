"""A run stopped in stage 2 and resumed reports the same result as one never stopped, stage 1 included."""
from __future__ import annotations

import json

import pytest

from stft_neuro import config
from stft_neuro.data import load_benchmark
from stft_neuro.train import Trainer

TINY = ["data.root=none", "data.train_per_class=3", "data.eval_per_class=2", "data.max_seconds=4",
        "data.audio_dim=24", "data.visual_dim=20", "data.generated_classes=10", "data.generated_unseen=2",
        "data.generated_val_unseen=2", "spiking.input_dim=16", "spiking.hidden=12,8", "spiking.num_steps=4",
        "transformer.dim=16", "transformer.heads=2", "transformer.num_latents=2", "fusion.width=16",
        "fusion.ranks=3", "fusion.embed_dim=8", "train.epochs=2", "train.batch_size=16", "train.threads=1"]


def test_resume_inside_stage_2_keeps_the_stage_1_outcome(tmp_path) -> None:
    cfg = config.load(overrides=TINY)
    bench = load_benchmark(cfg.data)

    def stop_in_stage_2(row):
        if row["stage"] == 2:
            raise KeyboardInterrupt

    run = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, bench, run, on_epoch=stop_in_stage_2).run()
    resumed = Trainer(cfg, bench, run).run(resume=True)
    straight = Trainer(cfg, bench, tmp_path / "straight").run()
    assert resumed == straight and "stage1_val" in resumed
    assert json.loads((run / "metrics.json").read_text()) == json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert Trainer(cfg, bench, run).run(resume=True) == straight  # a finished run answers from disk
