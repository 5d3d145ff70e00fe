"""The whole STFT: spiking branch + latent semantic transformer + Tucker fusion + projections.

    audio (B,S,Da), visual (B,S,Dv), lengths (B,)
      -> r = LatentSemanticTransformer(audio, visual)            (B, dim)       host
      -> s = SpikingBranch(audio, visual) [GLP, chip, TSF]       (B, n_L)       host + chip
      -> joint = W_j fusion(r, s)                                (B, E)
    class word embeddings w2v (C, 300) -> text_emb = TextProjector(w2v)   (C, E)
    prediction: the class whose text_emb is nearest to joint (stft_neuro.protocol).

As in AVCA, audio and visual also get their own projections into the embedding space (trained
towards the class's text embedding) and the joint embedding reconstructs the word embedding; the
losses are in ``losses.py``. Ablations switch off the spiking branch (``spiking.enabled``), GLP,
TSF, dynamic thresholds (``SpikingConfig``) or replace Tucker by concatenation (``fusion.kind``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from stft_neuro.config import Config
from stft_neuro.model import word_geometry
from stft_neuro.model.fusion import build_fusion
from stft_neuro.model.host import SpikingBranch, masked_max_mean, valid_mask
from stft_neuro.model.transformer import LatentSemanticTransformer
from stft_neuro.contract import SpikingBackend

WORD_DIM = 300  # word2vec class embeddings, 300-d and L2-normalised (AVCA/TCaF benchmark)


def mlp(d_in: int, d_hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.LayerNorm(d_hidden), nn.GELU(),
                         nn.Dropout(dropout), nn.Linear(d_hidden, d_out))


class STFT(nn.Module):
    """Spiking Tucker Fusion Transformer. ``forward`` returns a dict of embeddings (see losses)."""

    def __init__(self, cfg: Config, audio_dim: int, visual_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.audio_dim, self.visual_dim = audio_dim, visual_dim
        e, width, p = cfg.fusion.embed_dim, cfg.fusion.width, cfg.fusion.dropout
        self.transformer = LatentSemanticTransformer(audio_dim, visual_dim, cfg.transformer)
        self.spiking = SpikingBranch(audio_dim, visual_dim, cfg.spiking) if cfg.spiking.enabled else None
        dim_s = self.spiking.out_dim if self.spiking is not None else 0
        self.fusion = build_fusion(cfg.fusion, self.transformer.out_dim, dim_s)
        # Residual paths around the fusion (fusion.skip): a multiplicative (Tucker) fusion alone
        # starts with tiny gradients (its core is a product of three small factors) and training
        # stalls; with a skip, the fusion learns the interaction on top of a working linear path.
        # "transformer": W r (the original); "spiking": W s (the chip's output carries the linear
        # path, r enters only through the fusion); "both": W r + W' s.
        skip = cfg.fusion.skip
        self.skip = (nn.Linear(self.transformer.out_dim, width)
                     if skip in ("transformer", "both") or self.spiking is None else None)
        self.skip_spiking = (nn.Linear(dim_s, width)
                             if skip in ("spiking", "both") and self.spiking is not None else None)
        # fusion.output_norm: the fusion's output at unit scale beside the skip (see FusionConfig).
        self.fusion_norm = nn.LayerNorm(width) if cfg.fusion.output_norm else nn.Identity()
        self.joint = nn.Linear(width, e)
        self.audio_proj = mlp(audio_dim, width, e, p)
        self.visual_proj = mlp(visual_dim, width, e, p)
        self.text_proj = (mlp(WORD_DIM, width, e, p) if cfg.fusion.text_projection == "mlp"
                          else nn.Linear(WORD_DIM, e))
        self.reconstruct = mlp(e, width, WORD_DIM, p)
        # spiking.head: the chip's output projected on its own, trained like audio_proj/visual_proj.
        self.spike_proj = (mlp(dim_s, width, e, p)
                           if self.spiking is not None and cfg.spiking.head else None)

    def embed_classes(self, w2v: Tensor) -> Tensor:
        """(C, 300) word embeddings of the whole class table -> (C, E) class embeddings in the joint
        space, through ``fusion.word_geometry`` (``model/word_geometry.py``) and the text projection."""
        return self.text_proj(word_geometry.apply(w2v, self.cfg.fusion.word_geometry))

    def joint_from(self, r: Tensor, s: Tensor) -> Tensor:
        """The readout: transformer vector ``r (B, dim)`` and spiking vector ``s (B, n_L)`` (``(B, 0)``
        without a spiking branch) -> joint embedding ``(B, E)``. The one definition, used by
        ``forward``, the ONNX readout graph and the report's operation counter."""
        pre = self.fusion_norm(self.fusion(r, s))
        if self.skip is not None:
            pre = pre + self.skip(r)
        if self.skip_spiking is not None:
            pre = pre + self.skip_spiking(s)
        return self.joint(pre)

    def forward(self, audio: Tensor, visual: Tensor, lengths: Tensor,
                backend: SpikingBackend | None = None) -> dict[str, Tensor]:
        """``backend``: who runs the chip side (default: this model's own ChipNetwork)."""
        mask = valid_mask(lengths, audio.shape[1])
        r = self.transformer(audio, visual, mask)  # (B, dim)
        out: dict[str, Tensor] = {}
        if self.spiking is not None:
            s, record = self.spiking(audio, visual, lengths, backend)  # (B, n_L)
            out["spikes"] = record.spikes
            out["record"] = record
            if record.theta is not None:
                out["theta"] = record.theta
        else:
            s = r.new_zeros(r.shape[0], 0)
        p_drop = self.cfg.fusion.transformer_dropout
        if self.training and p_drop > 0 and self.spiking is not None:
            keep = (torch.rand(r.shape[0], 1, device=r.device) >= p_drop).to(r.dtype)
            r = r * keep  # fusion.transformer_dropout: some samples predicted from s alone
        joint = self.joint_from(r, s)  # (B, E)
        _, audio_mean = masked_max_mean(audio, mask)
        _, visual_mean = masked_max_mean(visual, mask)
        out.update(joint=joint, audio_emb=self.audio_proj(audio_mean),
                   visual_emb=self.visual_proj(visual_mean), recon=self.reconstruct(joint))
        if self.spike_proj is not None:
            out["spike_emb"] = self.spike_proj(s)
        return out


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def embed_split(model: STFT, audio, visual, lengths, batch_size: int = 256,
                device: str | torch.device = "cpu", backend: SpikingBackend | None = None) -> Tensor:
    """Joint embeddings (N, E) of numpy arrays, in eval mode, batched."""
    model.eval()
    outs = []
    for i in range(0, len(lengths), batch_size):
        a = torch.as_tensor(audio[i:i + batch_size], device=device)
        v = torch.as_tensor(visual[i:i + batch_size], device=device)
        n = torch.as_tensor(lengths[i:i + batch_size], device=device)
        outs.append(model(a, v, n, backend=backend)["joint"].float().cpu())
    return torch.cat(outs) if outs else torch.zeros(0, model.cfg.fusion.embed_dim)
