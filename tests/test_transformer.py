"""LatentSemanticTransformer: shapes, padding invariance, batch consistency, gradients."""
from __future__ import annotations

import pytest
import torch

from stft_neuro.config import TransformerConfig
from stft_neuro.errors import UserError
from stft_neuro.model.transformer import LatentSemanticTransformer, sinusoidal_positions

DA, DV = 12, 10
CFG = TransformerConfig(dim=16, heads=4, layers=2, num_latents=3, dropout=0.1)


def _model(cfg: TransformerConfig = CFG) -> LatentSemanticTransformer:
    torch.manual_seed(0)
    return LatentSemanticTransformer(DA, DV, cfg)


def _inputs(lengths: list[int], seconds: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(len(lengths), seconds, DA, generator=g)
    visual = torch.randn(len(lengths), seconds, DV, generator=g)
    mask = torch.arange(seconds)[None, :] < torch.tensor(lengths)[:, None]  # (B, S)
    return audio, visual, mask


def test_shape_and_out_dim():
    model = _model()
    audio, visual, mask = _inputs([3, 5, 1], 5)
    r = model(audio, visual, mask)
    assert r.shape == (3, CFG.dim)
    assert model.out_dim == CFG.dim
    assert torch.isfinite(r).all()
    assert model(audio, visual).shape == (3, CFG.dim)  # mask=None: all valid


def test_padding_does_not_change_output():
    model = _model().eval()
    audio, visual, mask = _inputs([2, 6, 4, 1], 6)
    ref = model(audio, visual, mask)
    junk_a, junk_v = audio.clone(), visual.clone()
    pad = ~mask
    junk_a[pad] = 1e6 * torch.randn(int(pad.sum()), DA)
    junk_v[pad] = float("nan")
    out = model(junk_a, junk_v, mask)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    # More padding seconds appended (longer S) changes nothing either.
    more_a = torch.cat([audio, torch.randn(4, 3, DA)], dim=1)
    more_v = torch.cat([visual, torch.randn(4, 3, DV)], dim=1)
    more_m = torch.cat([mask, torch.zeros(4, 3, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(model(more_a, more_v, more_m), ref, rtol=1e-5, atol=1e-5)


def test_batch_consistency_and_truncation():
    model = _model().eval()
    lengths = [2, 6, 4]
    audio, visual, mask = _inputs(lengths, 6)
    batched = model(audio, visual, mask)
    for b, n in enumerate(lengths):
        alone = model(audio[b:b + 1, :n], visual[b:b + 1, :n])
        torch.testing.assert_close(alone[0], batched[b], rtol=1e-5, atol=1e-5)


def test_gradient_reaches_every_parameter():
    model = _model().train()
    audio, visual, mask = _inputs([3, 5, 2], 5)
    model(audio, visual, mask).pow(2).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_output_depends_on_both_modalities_and_on_valid_content():
    model = _model().eval()
    audio, visual, mask = _inputs([3, 3], 3)
    ref = model(audio, visual, mask)
    assert not torch.allclose(model(audio + 1.0, visual, mask), ref)
    assert not torch.allclose(model(audio, visual + 1.0, mask), ref)
    # Order of seconds matters (positional encoding).
    assert not torch.allclose(model(audio.flip(1), visual.flip(1), mask), ref)


def test_bad_inputs_raise_user_error():
    model = _model()
    audio, visual, mask = _inputs([3, 2], 3)
    with pytest.raises(UserError, match="no valid second"):
        model(audio, visual, torch.tensor([[True, False, False], [False, False, False]]))
    with pytest.raises(UserError, match="audio"):
        model(audio[..., :5], visual, mask)
    with pytest.raises(UserError, match="differ"):
        model(audio, visual[:, :2], mask)
    with pytest.raises(UserError, match="mask"):
        model(audio, visual, mask[:, :2])
    with pytest.raises(UserError, match="multiple"):
        LatentSemanticTransformer(DA, DV, TransformerConfig(dim=10, heads=4))


def test_default_config_runs():
    torch.manual_seed(0)
    model = LatentSemanticTransformer(512, 512, TransformerConfig()).eval()
    audio, visual = torch.randn(2, 10, 512), torch.randn(2, 10, 512)
    assert model(audio, visual).shape == (2, 256)


def test_sinusoidal_positions():
    enc = sinusoidal_positions(5, 7)
    assert enc.shape == (5, 7)
    torch.testing.assert_close(enc[0, :4], torch.zeros(4))  # sin(0)
    torch.testing.assert_close(enc[0, 4:], torch.ones(3))  # cos(0), truncated to dim
