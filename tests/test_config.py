"""Config: TOML + overrides, and one clear error for every wrong key or value."""
from __future__ import annotations

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
