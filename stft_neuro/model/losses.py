"""AVCA-style training losses: triplet against class text embeddings, projection, reconstruction.

The paper (Li et al., IEEE TIP 33, 2024), as AVCA trains: a triplet loss of the joint audio-visual
embedding against class text embeddings, projection losses (MSE of the audio and visual
projections to the word embedding), reconstruction losses, and ``L = 0.5 L_triplet + 0.5 (L_proj + L_rec)``.

What the model hands in (``stft_loss``):

* ``out["joint"] (B, E)``: the joint audio-visual embedding;
* ``out["audio_emb"] (B, E)``, ``out["visual_emb"] (B, E)``: the unimodal projections;
* ``out["recon"] (B, 300)``: the word embedding reconstructed from the joint embedding;
* ``text_emb (C, E)``: every class's word embedding ``w2v (C, 300)`` through the model's text projector.

Choices where the paper is silent:

* Triplet negatives are classes, not samples: for each anchor the positive is its own class's text
  embedding and the negatives are the other classes among ``candidates`` (the training classes;
  never an unseen class), Euclidean distance, hinge ``relu(d_pos - d_neg + margin)`` averaged over
  every (anchor, negative class) pair (``negatives="all"``, the default). Hardest-negative mining
  (``negatives="hardest"``) is kept as an option but not used: trained from scratch it collapses
  the joint embedding to one point (every class at the same distance, loss = margin; measured on the
  synthetic UCF benchmark: validation HM 0 after 6 epochs, against about 20 with all negatives).
* ``triplet`` also covers the audio and visual embeddings, as AVCA trains each modality's projection
  against the text embeddings too: ``triplet = mean(t_joint, t_audio, t_visual)`` (a mean, so that
  the term keeps the scale of one triplet loss and the paper's 0.5/0.5 balance). ``modality_triplets
  =False`` gives the paper's joint-only term. Each part is returned as well.
* With a spiking head (``spiking.head``, ``out["spike_emb"]``) the spiking vector's projection is a
  third modality in both the triplet mean and the projection sum (issue #16: without it the chip's
  output carried no class information the readout used).
* ``projection = MSE(audio_emb, t) + MSE(visual_emb, t)`` with target ``t = text_emb[labels]``, in the
  shared E-dim space (the word embedding, projected). The target is not detached: the text projector
  learns from it too (the triplet's margin keeps classes apart, so this cannot collapse to a point).
* ``reconstruction = MSE(recon, w2v[labels])`` (the fixed 300-d word embedding).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from stft_neuro.errors import UserError

TRIPLET_WEIGHT = 0.5  # paper: L = 0.5 L_triplet + 0.5 (L_proj + L_rec)
REGRESSION_WEIGHT = 0.5
_DIST_EPS = 1e-12  # inside the sqrt of a squared distance, so that d = 0 has a finite gradient


def euclidean_distances(x: Tensor, y: Tensor) -> Tensor:
    """Pairwise Euclidean distances ``x (B, E)``, ``y (C, E)`` -> ``(B, C)``."""
    sq = (x[:, None, :] - y[None, :, :]).pow(2).sum(dim=-1)  # (B, C)
    return sq.clamp_min(_DIST_EPS).sqrt()


def triplet_loss(anchor: Tensor, class_emb: Tensor, labels: Tensor, margin: float,
                 candidates: Tensor | Sequence[int] | None = None, negatives: str = "all") -> Tensor:
    """Class triplet loss ``relu(d(a_b, c_{y_b}) - d(a_b, c_k) + margin)`` over negative classes k.

    ``negatives="all"``: mean over every anchor and every negative class among the candidates;
    ``"hardest"``: per anchor only the nearest negative class (``min_k d(a_b, c_k)``), mean over b.

    ``anchor (B, E)``; ``class_emb (C, E)``; ``labels (B,)`` int class indices into ``class_emb``;
    ``candidates``: int tensor (or sequence) of class indices allowed as negatives (the training classes), or
    ``None`` for all ``C``. Returns a scalar. Raises :class:`UserError` if a sample has no negative.
    """
    if anchor.dim() != 2 or class_emb.dim() != 2 or anchor.shape[1] != class_emb.shape[1]:
        raise UserError(f"triplet_loss: anchor {tuple(anchor.shape)} and class_emb "
                        f"{tuple(class_emb.shape)} must be (B, E) and (C, E)")
    if labels.shape != anchor.shape[:1]:
        raise UserError(f"triplet_loss: labels {tuple(labels.shape)} must be ({anchor.shape[0]},)")
    num_classes = class_emb.shape[0]
    labels = labels.long()
    dist = euclidean_distances(anchor, class_emb)  # (B, C)
    d_pos = dist.gather(1, labels[:, None]).squeeze(1)  # (B,)
    allowed = torch.zeros(num_classes, dtype=torch.bool, device=anchor.device)  # (C,)
    if candidates is None:
        allowed[:] = True
    else:
        allowed[torch.as_tensor(candidates, device=anchor.device).long()] = True
    classes = torch.arange(num_classes, device=anchor.device)
    negatives_mask = allowed[None, :] & (classes[None, :] != labels[:, None])  # (B, C)
    if not bool(negatives_mask.any(dim=1).all()):
        raise UserError("triplet_loss: some sample has no negative class among the candidates "
                        "(need at least two candidate classes)")
    if negatives == "hardest":
        d_neg = dist.masked_fill(~negatives_mask, float("inf")).min(dim=1).values  # (B,)
        return F.relu(d_pos - d_neg + margin).mean()
    if negatives != "all":
        raise ValueError(f"triplet_loss: negatives must be 'all' or 'hardest', got {negatives!r}")
    hinge = F.relu(d_pos[:, None] - dist + margin) * negatives_mask  # (B, C)
    return hinge.sum() / negatives_mask.sum()


def projection_loss(audio_emb: Tensor, visual_emb: Tensor, target: Tensor) -> Tensor:
    """``MSE(audio_emb, target) + MSE(visual_emb, target)``, all ``(B, E)``; scalar."""
    return F.mse_loss(audio_emb, target) + F.mse_loss(visual_emb, target)


def reconstruction_loss(recon: Tensor, w2v_target: Tensor) -> Tensor:
    """``MSE(recon, w2v_target)``, both ``(B, 300)``; scalar."""
    return F.mse_loss(recon, w2v_target)


_OUT_KEYS = ("joint", "audio_emb", "visual_emb", "recon")


def stft_loss(out: dict[str, Tensor], text_emb: Tensor, w2v: Tensor, labels: Tensor, margin: float,
              train_classes: Tensor | Sequence[int] | None,
              modality_triplets: bool = True) -> dict[str, Tensor]:
    """All training losses; ``total = 0.5 triplet + 0.5 (projection + reconstruction)``.

    ``out``: ``joint``, ``audio_emb``, ``visual_emb`` ``(B, E)`` and ``recon (B, 300)``; ``text_emb
    (C, E)``; ``w2v (C, 300)``; ``labels (B,)`` class indices; ``train_classes``: indices allowed as
    triplet negatives (``None``: all). Returns scalars ``triplet``, ``projection``,
    ``reconstruction``, ``total``, and the parts ``triplet_joint`` (and ``triplet_audio``,
    ``triplet_visual`` when ``modality_triplets``). See the module docstring for the choices.
    """
    missing = [k for k in _OUT_KEYS if k not in out]
    if missing:
        raise UserError(f"stft_loss: model output lacks {', '.join(missing)}")
    labels = labels.long()
    terms: dict[str, Tensor] = {}
    terms["triplet_joint"] = triplet_loss(out["joint"], text_emb, labels, margin, train_classes)
    heads = ("audio", "visual", "spike") if "spike_emb" in out else ("audio", "visual")
    if modality_triplets:
        for head in heads:
            terms[f"triplet_{head}"] = triplet_loss(out[f"{head}_emb"], text_emb, labels, margin, train_classes)
        terms["triplet"] = sum(terms[f"triplet_{k}"] for k in ("joint", *heads)) / (1 + len(heads))
    else:
        terms["triplet"] = terms["triplet_joint"]
    terms["projection"] = projection_loss(out["audio_emb"], out["visual_emb"], text_emb[labels])
    if "spike_emb" in out:
        terms["projection"] = terms["projection"] + F.mse_loss(out["spike_emb"], text_emb[labels])
    terms["reconstruction"] = reconstruction_loss(out["recon"], w2v[labels])
    terms["total"] = (TRIPLET_WEIGHT * terms["triplet"]
                      + REGRESSION_WEIGHT * (terms["projection"] + terms["reconstruction"]))
    return terms
