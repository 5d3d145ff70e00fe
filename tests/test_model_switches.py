"""Model-level switches added for issue #11: linear text projection and fusion output norm."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from stft_neuro import config as config_mod
from stft_neuro.errors import ConfigError
from stft_neuro.model.stft import STFT

SMALL = ["transformer.dim=16", "transformer.heads=2", "fusion.width=24", "fusion.embed_dim=8",
         "fusion.ranks=4", "spiking.hidden=12,10", "spiking.input_dim=14", "spiking.num_steps=3"]


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(5, 4, 6, generator=g), torch.randn(5, 4, 7, generator=g), torch.tensor([4, 1, 2, 3, 4])


@pytest.mark.parametrize("text", ["mlp", "linear"])
@pytest.mark.parametrize("norm", [False, True])
def test_switches_build_and_run(text: str, norm: bool) -> None:
    cfg = config_mod.load(overrides=[*SMALL, f"fusion.text_projection={text}", f"fusion.output_norm={norm}"])
    torch.manual_seed(0)
    model = STFT(cfg, 6, 7).eval()
    assert isinstance(model.text_proj, nn.Linear) == (text == "linear")
    assert isinstance(model.fusion_norm, nn.LayerNorm) == norm
    out = model(*_batch())
    assert out["joint"].shape == (5, 8) and torch.isfinite(out["joint"]).all()
    assert model.embed_classes(torch.randn(3, 300)).shape == (3, 8)


def test_output_norm_puts_the_fusion_at_unit_scale() -> None:
    cfg = config_mod.load(overrides=[*SMALL, "fusion.output_norm=true"])
    torch.manual_seed(0)
    model = STFT(cfg, 6, 7).eval()
    seen = {}
    model.fusion_norm.register_forward_hook(lambda m, i, o: seen.__setitem__("y", o))
    model(*_batch())
    y = seen["y"]  # (B, width): LayerNorm at init (weight 1, bias 0) -> zero mean, unit variance per row
    torch.testing.assert_close(y.mean(-1), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(5), atol=1e-2, rtol=0)  # LayerNorm eps


def test_bad_switch_values() -> None:
    with pytest.raises(ConfigError, match="text_projection must be mlp or linear"):
        config_mod.load(overrides=["fusion.text_projection=conv"])
    with pytest.raises(ConfigError, match="expected true or false"):
        config_mod.load(overrides=["fusion.output_norm=maybe"])


def test_older_runs_load_with_the_mlp_projection(tmp_path) -> None:
    """A run folder written before the switch existed (no ``fusion.text_projection`` in its
    config.json) had the MLP and must load as one, weights intact, whatever the default is."""
    import contextlib
    import io
    import json

    from stft_neuro.checkpoint import load_run
    from stft_neuro.cli import main
    from test_cli import TINY, _sets

    run = tmp_path / "mlp-run"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "--json", "--out", str(run),
                     *_sets(*TINY, "train.epochs=1", "fusion.text_projection=mlp")]) == 0
    before, _, _ = load_run(run)
    raw = json.loads((run / "config.json").read_text())
    del raw["fusion"]["text_projection"]
    (run / "config.json").write_text(json.dumps(raw))
    after, cfg, _ = load_run(run)
    assert cfg.fusion.text_projection == "mlp" and not isinstance(after.text_proj, nn.Linear)
    w = torch.randn(3, 300, generator=torch.Generator().manual_seed(1))
    assert torch.equal(before.eval().embed_classes(w), after.eval().embed_classes(w))


def test_transformer_dropout_predicts_some_samples_from_the_spiking_branch_alone() -> None:
    """fusion.transformer_dropout zeroes r for whole samples in training only: a dropped sample's
    joint embedding is the readout of (0, s); evaluation never drops."""
    cfg = config_mod.load(overrides=[*SMALL, "fusion.transformer_dropout=0.5", "fusion.skip=both"])
    torch.manual_seed(0)
    model = STFT(cfg, 6, 7)
    a, v, n = _batch()
    seen = {}
    model.transformer.register_forward_hook(lambda m, i, o: seen.__setitem__("r", o))
    model.spiking.register_forward_hook(lambda m, i, o: seen.__setitem__("s", o[0]))
    model.train()
    model.fusion.eval()  # its own dropout off, so the readout below is deterministic
    model.fusion_norm.eval()
    torch.manual_seed(3)
    joint = model(a, v, n)["joint"]
    r, s = seen["r"], seen["s"]
    with torch.no_grad():
        kept, dropped = model.joint_from(r, s), model.joint_from(torch.zeros_like(r), s)
    is_dropped = torch.isclose(joint, dropped, atol=1e-6).all(-1)
    is_kept = torch.isclose(joint, kept, atol=1e-6).all(-1)
    assert bool((is_dropped ^ is_kept).all())          # every sample is one or the other
    assert 0 < int(is_dropped.sum()) < 5                # and with p = 0.5 on 5 samples, both occur
    model.eval()
    torch.testing.assert_close(model(a, v, n)["joint"], model.joint_from(*_parts(model, a, v, n)))


def _parts(model: STFT, a, v, n):
    from stft_neuro.model.host import valid_mask
    return model.transformer(a, v, valid_mask(n, a.shape[1])), model.spiking(a, v, n)[0]


def test_spiking_weight_decay_has_its_own_parameter_group() -> None:
    """train.spiking_weight_decay applies to the spiking branch and the readout's skip_spiking only;
    equal decays keep the single group of runs written before the split."""
    from stft_neuro.train import parameter_groups
    cfg = config_mod.load(overrides=[*SMALL, "fusion.skip=both", "train.weight_decay=1e-3",
                                     "train.spiking_weight_decay=0"])
    model = STFT(cfg, 6, 7)
    host, spiking = parameter_groups(model, cfg)
    assert (host["weight_decay"], spiking["weight_decay"]) == (1e-3, 0.0)
    expected = {id(p) for p in (*model.spiking.parameters(), *model.skip_spiking.parameters())}
    assert {id(p) for p in spiking["params"]} == expected
    assert len(host["params"]) + len(spiking["params"]) == len(list(model.parameters()))
    same = config_mod.load(overrides=[*SMALL, "train.weight_decay=1e-3", "train.spiking_weight_decay=1e-3"])
    assert len(parameter_groups(STFT(same, 6, 7), same)) == 1
    with pytest.raises(ConfigError, match="spiking_weight_decay must be >= 0"):
        config_mod.load(overrides=["train.spiking_weight_decay=-2"])
    with pytest.raises(ConfigError, match="transformer_dropout must be in"):
        config_mod.load(overrides=["fusion.transformer_dropout=1"])


def test_runs_before_the_split_decay_the_spiking_branch_like_the_host() -> None:
    raw = config_mod.load(overrides=["data.sizes=real", "train.weight_decay=1e-5"]).to_dict()
    del raw["train"]["spiking_weight_decay"], raw["fusion"]["transformer_dropout"]
    cfg = config_mod.from_run_dict(raw)
    assert cfg.train.spiking_weight_decay == 1e-5 and cfg.fusion.transformer_dropout == 0.0


def test_graded_init_puts_every_layer_in_the_graded_range() -> None:
    """spiking.init=graded: each layer's synaptic drive has the configured spread and steady mean on
    the calibration batch, and the neurons' rates are graded (neither silent nor firing on every
    step) where the default initialisation leaves layer 1 a saturated sign code."""
    from stft_neuro.model.spiking import ChipNetwork
    torch.manual_seed(0)
    chip = ChipNetwork((64, 48, 32), du=0.25, dv=0.1, threshold=1.0, surrogate_slope=5.0, num_steps=12)
    x = (torch.randn(1, 200, 64) * 0.3 + torch.randn(1, 1, 64)).expand(12, 200, 64).contiguous()

    def saturated(ch: ChipNetwork) -> float:
        with torch.no_grad():
            rates = ch.run(x)[0][0][1:].mean(0)  # layer 1, after its one-step Dense delay
        return float(((rates == 0) | (rates > 0.9)).float().mean())

    before = saturated(chip)
    assert before > 0.8  # default init: nearly every layer-1 neuron silent or always on (0.93 here)
    chip.graded_init(x, drive_std=0.1, drive_mean=0.1)
    with torch.no_grad():
        spikes, _ = chip.run(x)
        pre = x
        for l in range(chip.num_layers):
            a = pre @ chip.weights[l].t()
            torch.testing.assert_close(a.std(dim=(0, 1)), torch.full((a.shape[-1],), 0.1), atol=1e-4, rtol=1e-3)
            steady = a.mean(dim=(0, 1)) + chip.biases[l] * chip.du  # drive + bias in drive units
            torch.testing.assert_close(steady, torch.full_like(steady, 0.1), atol=1e-5, rtol=1e-4)
            pre = spikes[l]
    assert saturated(chip) < before / 2, (before, saturated(chip))
