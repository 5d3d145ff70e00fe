"""Config: TOML + overrides, and one clear error for every wrong key or value."""
from __future__ import annotations

import dataclasses

import pytest

from stft_neuro import config
from stft_neuro.errors import ConfigError


def test_toml_then_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[train]\nepochs = 3\nlr = 0.01\n[spiking]\nhidden = [64, 32]\n[fusion]\nkind = "concat"\n')
    cfg = config.load(f, ["train.epochs=7", "spiking.dynamic_threshold=false"])
    assert cfg.train.epochs == 7 and cfg.train.lr == 0.01
    assert cfg.spiking.hidden == (64, 32) and cfg.spiking.dynamic_threshold is False
    assert cfg.fusion.kind == "concat"
    assert config.from_dict(cfg.to_dict()) == cfg  # the JSON a run writes reads back identically


@pytest.mark.parametrize("override, fragment", [
    ("train.epoch=3", "unknown key train.epoch"),
    ("nosuch.key=1", "unknown section 'nosuch'"),
    ("train.epochs=three", "train.epochs: expected an integer"),
    ("train.epochs=0", "train.epochs must be >= 1"),
    ("spiking.glp=maybe", "spiking.glp: expected true or false"),
    ("fusion.kind=outer", "fusion.kind must be tucker or concat"),
    ("epochs=3", "expected section.key=value"),
])
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        config.load(overrides=[override])
    assert fragment in str(info.value)


def test_bad_toml_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad)


def test_the_benchmark_size_selects_the_recipe() -> None:
    """Keys left at "auto" take the size's recipe (config.RECIPES); an explicit value wins; an
    override of the data section re-resolves them; a stored run keeps the values it trained with."""
    small = config.Config()
    assert (small.fusion.text_projection, small.fusion.word_geometry, small.fusion.skip,
            small.train.weight_decay) == ("mlp", "raw", "transformer", 1e-5)
    real = config.load(overrides=["data.sizes=real"])
    assert (real.fusion.text_projection, real.fusion.word_geometry, real.fusion.skip,
            real.train.weight_decay) == ("linear", "centred_unit", "both", 1e-3)
    mixed = config.load(overrides=["data.sizes=real", "fusion.skip=transformer", "train.weight_decay=0"])
    assert mixed.fusion.skip == "transformer" and mixed.train.weight_decay == 0.0
    assert mixed.fusion.word_geometry == "centred_unit"
    back = config.from_dict({"data": {"sizes": "small"}}, real)
    assert back.fusion.text_projection == "mlp" and back.train.weight_decay == 1e-5
    stored = config.from_run_dict(real.to_dict())
    assert stored == real and not stored.auto_keys
    with pytest.raises(ConfigError, match="weight_decay"):
        config.load(overrides=["train.weight_decay=-2"])


def test_the_real_size_recipe_selects_the_saliency_chip_unless_a_key_is_named(tmp_path) -> None:
    """``data.sizes=real`` in a fresh config brings ``RECIPE_CHIPS["real"]`` (issue #16); a key the
    TOML file or an override names wins; the small recipe, a ``Config()`` built directly and a
    config loaded on a stored run's (``base``) keep what they had."""
    real = config.load(overrides=["data.sizes=real"])
    assert (real.spiking.saliency, real.spiking.hidden, real.spiking.num_steps, real.fusion.readout,
            real.spiking.dynamic_threshold) == (2, (128,), 11, "ridge", False)
    # issue #17: deployed sparse (payload dead zone, layer 1 pruned in QAT)
    assert (real.spiking.payload_dead_zone, real.spiking.input_weight_density) == (32, 0.1)
    assert {"spiking.payload_dead_zone", "spiking.input_weight_density"} == config.DEPLOY_ONLY
    toml = tmp_path / "c.toml"
    toml.write_text('[data]\nsizes = "real"\n[spiking]\nhidden = [64]\n')
    named = config.load(toml, overrides=["spiking.du=0.25"])
    assert named.spiking.hidden == (64,) and named.spiking.du == 0.25 and named.spiking.saliency == 2
    small = config.load()
    assert small.spiking == dataclasses.replace(config.SpikingConfig(), payload_dead_zone=64,
                                                input_weight_density=0.25)
    assert small.fusion.readout == "trained"
    assert config.Config(data=config.DataConfig(sizes="real")).spiking.saliency == 0
    paper = config.load(overrides=["data.sizes=real", "spiking.saliency=0", "spiking.hidden=256,256,128"])
    on_base = config.load(overrides=["train.epochs=1"], base=paper)
    assert on_base.spiking == paper.spiking
