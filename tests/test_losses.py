"""Losses on hand-computed tiny cases; total is the paper's weighted sum."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stft_neuro.errors import UserError
from stft_neuro.model.losses import (
    euclidean_distances,
    projection_loss,
    reconstruction_loss,
    stft_loss,
    triplet_loss,
)

CLASSES = torch.tensor([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0]])  # (C=3, E=2)


def test_euclidean_distances():
    d = euclidean_distances(torch.tensor([[0.0, 0.0], [3.0, 0.0]]), CLASSES)
    torch.testing.assert_close(d, torch.tensor([[0.0, 5.0, 10.0], [3.0, math.sqrt(16.0), 7.0]]),
                               atol=1e-5, rtol=0)


def test_triplet_zero_when_positive_closer_by_more_than_margin():
    anchor = torch.tensor([[0.1, 0.0], [3.0, 4.1]])
    assert triplet_loss(anchor, CLASSES, torch.tensor([0, 1]), margin=1.0).item() == 0.0


def test_triplet_known_value_two_classes():
    classes = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    anchor = torch.tensor([[0.5, 0.0], [0.5, 0.0]])
    # sample 0 (class 0): d_pos 0.5, d_neg 1.5 -> relu(0.5 - 1.5 + 1.5) = 0.5
    # sample 1 (class 1): d_pos 1.5, d_neg 0.5 -> relu(1.5 - 0.5 + 1.5) = 2.5
    loss = triplet_loss(anchor, classes, torch.tensor([0, 1]), margin=1.5)
    torch.testing.assert_close(loss, torch.tensor(1.5))


def test_triplet_all_negatives_known_value():
    anchor = torch.tensor([[4.0, 4.0]])  # class 0: d_pos = sqrt(32); class 1 at 1; class 2 at sqrt(52)
    d_pos = math.sqrt(32.0)
    expected = (max(d_pos - 1.0 + 0.5, 0.0) + max(d_pos - math.sqrt(52.0) + 0.5, 0.0)) / 2
    loss = triplet_loss(anchor, CLASSES, torch.tensor([0]), margin=0.5)
    torch.testing.assert_close(loss, torch.tensor(expected))


def test_triplet_uses_hardest_candidate_negative():
    anchor = torch.tensor([[4.0, 4.0]])  # class 0: d_pos = sqrt(32); class 1 at 1; class 2 at sqrt(52)
    labels = torch.tensor([0])
    d_pos = math.sqrt(32.0)
    hardest = triplet_loss(anchor, CLASSES, labels, margin=0.5, negatives="hardest")
    torch.testing.assert_close(hardest, torch.tensor(d_pos - 1.0 + 0.5))
    # Class 1 is not a training class: the negative is class 2.
    only_2 = triplet_loss(anchor, CLASSES, labels, margin=0.5, candidates=[0, 2], negatives="hardest")
    torch.testing.assert_close(only_2, torch.tensor(max(d_pos - math.sqrt(52.0) + 0.5, 0.0)))


def test_triplet_needs_a_negative():
    with pytest.raises(UserError, match="no negative"):
        triplet_loss(torch.zeros(1, 2), CLASSES, torch.tensor([0]), 1.0, candidates=torch.tensor([0]))


def test_triplet_gradient_finite_at_zero_distance():
    anchor = torch.zeros(1, 2, requires_grad=True)
    class_emb = CLASSES.clone().requires_grad_(True)
    triplet_loss(anchor, class_emb, torch.tensor([0]), margin=10.0).backward()
    assert torch.isfinite(anchor.grad).all() and torch.isfinite(class_emb.grad).all()


def test_projection_and_reconstruction_losses():
    target = torch.tensor([[1.0, 2.0]])
    a, v = torch.tensor([[1.0, 0.0]]), torch.tensor([[3.0, 2.0]])
    torch.testing.assert_close(projection_loss(a, v, target), torch.tensor(2.0 + 2.0))
    torch.testing.assert_close(reconstruction_loss(torch.ones(2, 300), torch.zeros(2, 300)), torch.tensor(1.0))


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b, c, e = 5, 4, 3
    out = {k: torch.randn(b, e, generator=g, requires_grad=True) for k in ("joint", "audio_emb", "visual_emb")}
    out["recon"] = torch.randn(b, 300, generator=g, requires_grad=True)
    text_emb = torch.randn(c, e, generator=g, requires_grad=True)
    w2v = torch.randn(c, 300, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1])
    return out, text_emb, w2v, labels


def test_stft_loss_total_is_paper_weighted_sum():
    out, text_emb, w2v, labels = _batch()
    train = torch.tensor([0, 1, 2])
    terms = stft_loss(out, text_emb, w2v, labels, margin=1.0, train_classes=train)
    torch.testing.assert_close(terms["total"],
                               0.5 * terms["triplet"] + 0.5 * (terms["projection"] + terms["reconstruction"]))
    parts = [triplet_loss(out[k], text_emb, labels, 1.0, train) for k in ("joint", "audio_emb", "visual_emb")]
    torch.testing.assert_close(terms["triplet"], sum(parts) / 3)
    torch.testing.assert_close(terms["triplet_joint"], parts[0])
    target = text_emb[labels]
    torch.testing.assert_close(terms["projection"],
                               F.mse_loss(out["audio_emb"], target) + F.mse_loss(out["visual_emb"], target))
    torch.testing.assert_close(terms["reconstruction"], F.mse_loss(out["recon"], w2v[labels]))
    terms["total"].backward()
    for key, t in list(out.items()) + [("text_emb", text_emb)]:
        assert t.grad is not None and t.grad.abs().sum() > 0, key


def test_stft_loss_joint_only():
    out, text_emb, w2v, labels = _batch(1)
    terms = stft_loss(out, text_emb, w2v, labels, 1.0, None, modality_triplets=False)
    torch.testing.assert_close(terms["triplet"], triplet_loss(out["joint"], text_emb, labels, 1.0))
    assert "triplet_audio" not in terms


def test_stft_loss_missing_key():
    out, text_emb, w2v, labels = _batch()
    del out["recon"]
    with pytest.raises(UserError, match="recon"):
        stft_loss(out, text_emb, w2v, labels, 1.0, None)
