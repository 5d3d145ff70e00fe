"""Tucker fusion against an explicit einsum reference; multi-scale; concat; parameter counts."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from stft_neuro.config import FusionConfig
from stft_neuro.errors import UserError
from stft_neuro.model.fusion import (
    ConcatFusion,
    MultiScaleTuckerFusion,
    TuckerFusion,
    bilinear_parameter_count,
    build_fusion,
    concat_parameter_count,
    multiscale_tucker_parameter_count,
    parameter_table,
    tucker_parameter_count,
)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_tucker_equals_explicit_mode_products():
    torch.manual_seed(0)
    f = TuckerFusion(dim_r=4, dim_s=3, rank=2, width=5, out_dim=6, dropout=0.0).eval()
    r, s = torch.randn(7, 4), torch.randn(7, 3)
    rf = torch.tanh(r @ f.proj_r.weight.T + f.proj_r.bias)  # (B, R)
    sf = torch.tanh(s @ f.proj_s.weight.T + f.proj_s.bias)  # (B, R)
    z = torch.einsum("ijk,bi,bj->bk", f.core, rf, sf)  # G x1 r' x2 s'
    y = z @ f.proj_o.weight.T + f.proj_o.bias  # x3 U_o
    torch.testing.assert_close(f(r, s), y)


def test_tucker_hand_computed_tiny_case():
    # rank 1, width 1: y = w_o * G * tanh(u_r.r + b_r) * tanh(u_s.s + b_s) + b_o.
    f = TuckerFusion(2, 1, rank=1, width=1, out_dim=1)
    with torch.no_grad():
        f.proj_r.weight.copy_(torch.tensor([[1.0, -1.0]]))
        f.proj_r.bias.fill_(0.0)
        f.proj_s.weight.fill_(2.0)
        f.proj_s.bias.fill_(0.5)
        f.core.fill_(3.0)
        f.proj_o.weight.fill_(-1.0)
        f.proj_o.bias.fill_(0.25)
    r, s = torch.tensor([[0.5, 0.2]]), torch.tensor([[0.1]])
    expected = -1.0 * 3.0 * torch.tanh(torch.tensor(0.3)) * torch.tanh(torch.tensor(0.7)) + 0.25
    torch.testing.assert_close(f(r, s), expected.reshape(1, 1))


def test_tucker_is_bilinear_in_factors():
    torch.manual_seed(1)
    f = TuckerFusion(5, 4, rank=3, width=6, dropout=0.0)
    rf, sf = torch.randn(2, 3), torch.randn(2, 3)
    base = f.proj_o.bias
    z = lambda a, b: (f.proj_o(torch.einsum("ijk,bi,bj->bk", f.core, a, b)) - base)  # noqa: E731
    torch.testing.assert_close(z(2 * rf, sf), 2 * z(rf, sf))
    torch.testing.assert_close(z(rf, -sf), -z(rf, sf))


def test_multiscale_single_rank_equals_tucker_with_same_weights():
    torch.manual_seed(0)
    cfg = FusionConfig(ranks=(4,), width=8, dropout=0.0)
    ms = MultiScaleTuckerFusion(6, 5, cfg).eval()
    single = TuckerFusion(6, 5, 4, 8, 8, 0.0).eval()
    single.load_state_dict(ms.scales[0].state_dict())
    with torch.no_grad():
        ms.scale_logits.fill_(3.7)  # any logit: softmax of one scale is exactly 1
    r, s = torch.randn(3, 6), torch.randn(3, 5)
    torch.testing.assert_close(ms(r, s), single(r, s))


def test_multiscale_is_softmax_weighted_sum():
    torch.manual_seed(0)
    cfg = FusionConfig(ranks=(2, 3, 5), width=4, dropout=0.0)
    ms = MultiScaleTuckerFusion(6, 5, cfg).eval()
    with torch.no_grad():
        ms.scale_logits.copy_(torch.tensor([0.0, 1.0, -2.0]))
    r, s = torch.randn(3, 6), torch.randn(3, 5)
    w = torch.softmax(torch.tensor([0.0, 1.0, -2.0]), 0)
    expected = sum(w[i] * ms.scales[i](r, s) for i in range(3))
    torch.testing.assert_close(ms(r, s), expected)
    assert ms(r, s).shape == (3, 4)


def test_gradients_reach_every_fusion_parameter():
    torch.manual_seed(0)
    for module in (MultiScaleTuckerFusion(6, 5, FusionConfig(ranks=(2, 3), width=4)),
                   ConcatFusion(6, 5, FusionConfig(width=4))):
        module.train()
        module(torch.randn(8, 6), torch.randn(8, 5)).pow(2).sum().backward()
        for name, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_concat_fusion_and_no_spiking_branch():
    torch.manual_seed(0)
    cfg = FusionConfig(kind="concat", width=8, dropout=0.0)
    f = ConcatFusion(6, 5, cfg).eval()
    r, s = torch.randn(3, 6), torch.randn(3, 5)
    assert f(r, s).shape == (3, 8)
    torch.testing.assert_close(f(r, s), f.net(torch.cat([r, s], dim=1)))
    with pytest.raises(UserError, match="no spiking vector"):
        f(r)
    only_r = ConcatFusion(6, 0, cfg).eval()
    assert only_r(r).shape == (3, 8)
    assert _count(only_r) == concat_parameter_count(6, 0, 8)


def test_build_fusion_kinds():
    tucker = FusionConfig(kind="tucker", ranks=(2, 3), width=8)
    concat = FusionConfig(kind="concat", width=8)
    assert isinstance(build_fusion(tucker, 6, 5), MultiScaleTuckerFusion)
    assert isinstance(build_fusion(concat, 6, 5), ConcatFusion)
    r = torch.randn(3, 6)
    for cfg in (tucker, concat):
        f = build_fusion(cfg, 6, 0).eval()  # no spiking branch: MLP on r alone
        assert f.out_dim == 8
        torch.testing.assert_close(f(r, None), f(r, torch.zeros(3, 0)))
        assert _count(f) == concat_parameter_count(6, 0, 8)
    with pytest.raises(UserError, match="kind"):
        build_fusion(FusionConfig(kind="sum"), 6, 5)


@pytest.mark.parametrize("dim_r,dim_s,rank,width,out_dim",
                         [(4, 3, 2, 5, 6), (256, 128, 16, 256, None), (256, 128, 60, 512, None)])
def test_tucker_parameter_count_matches_module(dim_r, dim_s, rank, width, out_dim):
    module = TuckerFusion(dim_r, dim_s, rank, width, out_dim)
    assert _count(module) == tucker_parameter_count(dim_r, dim_s, rank, width, out_dim)


def test_bilinear_and_multiscale_counts_match_modules():
    assert _count(nn.Bilinear(7, 5, 3)) == bilinear_parameter_count(7, 5, 3)
    assert _count(nn.Bilinear(256, 128, 256)) == bilinear_parameter_count(256, 128, 256)
    cfg = FusionConfig()
    assert _count(MultiScaleTuckerFusion(256, 128, cfg)) == \
        multiscale_tucker_parameter_count(256, 128, cfg.ranks, cfg.width)
    assert _count(ConcatFusion(256, 128, cfg)) == concat_parameter_count(256, 128, cfg.width)


def test_parameter_table_default_config():
    cfg = FusionConfig()
    rows = {(row["fusion"], tuple(row["ranks"])): row for row in parameter_table(cfg, 256, 128)}
    assert rows[("tucker", (16,))]["parameters"] == 257 * 16 + 129 * 16 + 16 * 16 * 256 + 257 * 256
    assert rows[("tucker-multiscale", (16, 32))]["parameters"] == 477_794
    assert rows[("bilinear", ())]["parameters"] == 256 * 128 * 256 + 256 == 8_388_864
    assert rows[("bilinear", ())]["vs_bilinear"] == 1.0
    assert rows[("tucker-multiscale", (16, 32))]["vs_bilinear"] < 0.06
