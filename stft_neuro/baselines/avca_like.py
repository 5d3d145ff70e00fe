"""An AVCA-like baseline: the project's transformer and projections, no spiking branch, concatenation fusion.

AVCA (Mercea et al., CVPR 2022) embeds audio and visual features with cross-modal attention and
projects them into the word2vec space, trained with triplet, projection and reconstruction losses;
it has no spiking branch and no Tucker fusion. Here that is :class:`~stft_neuro.model.stft.STFT`
with three config switches (``OVERRIDES``): ``spiking.enabled = false`` (no GLP, chip, TSF or
threshold cues), ``fusion.kind = concat`` (an MLP on the transformer vector instead of a Tucker
product; with the spiking branch off ``build_fusion`` uses that MLP whatever the kind says, so this
is also the "no spiking branch" ablation) and ``fusion.text_projection = mlp`` (AVCA's 2-layer
projection of word2vec, also the STFT's default; pinned so the baseline stays AVCA's when the STFT
is trained with ``fusion.text_projection=linear``, as the real-size sweep's full STFT is). Everything else
(transformer, losses, optimiser, AVCA protocol) is the full model's.

Not a reimplementation of AVCA: AVCA works on clip-level (mean) features with its own encoders;
this model reads the per-second sequences with the project's latent-slot transformer.
"""
from __future__ import annotations

from pathlib import Path

from stft_neuro import config as config_mod
from stft_neuro.config import Config
from stft_neuro.data.benchmark import Benchmark

OVERRIDES: tuple[str, ...] = ("spiking.enabled=false", "fusion.kind=concat", "fusion.text_projection=mlp")


def avca_like_config(cfg: Config) -> Config:
    """``cfg`` with the AVCA-like switches applied (all other keys unchanged)."""
    return config_mod.from_dict(config_mod.parse_overrides(list(OVERRIDES)), cfg)


def run_protocol(cfg: Config, bench: Benchmark, run_dir: Path, resume: bool = False) -> dict:
    """Both AVCA stages of the AVCA-like model into ``run_dir`` (``Trainer.run``'s result)."""
    from stft_neuro.train import Trainer
    return Trainer(avca_like_config(cfg), bench, Path(run_dir)).run(resume=resume)
