"""The whole STFT: spiking branch + latent semantic transformer + Tucker fusion + projections.

    audio (B,S,Da), visual (B,S,Dv), lengths (B,)
      -> r = LatentSemanticTransformer(audio, visual)            (B, dim)       host
      -> s = SpikingBranch(audio, visual) [GLP, chip, TSF]       (B, n_L)       host + chip
      -> p = spike-pooled features (spiking.saliency)            (B, Da + Dv)   host, chip's weights
      -> joint = W_j (fusion(r, s) + skips(r, s, p))             (B, E)
         or, fusion.readout = ridge (eval, once fitted): ridge([h, p]) (B, 300)
    class word embeddings w2v (C, 300) -> text_emb = TextProjector(w2v)   (C, E)
    prediction: the class whose text_emb is nearest to joint (stft_neuro.protocol).

As in AVCA, audio and visual also get their own projections into the embedding space (trained
towards the class's text embedding) and the joint embedding reconstructs the word embedding; the
losses are in ``losses.py``. Ablations switch off the spiking branch (``spiking.enabled``), GLP,
TSF, dynamic thresholds (``SpikingConfig``) or replace Tucker by concatenation (``fusion.kind``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from stft_neuro.config import Config
from stft_neuro.model import word_geometry
from stft_neuro.model.fusion import build_fusion
from stft_neuro.model.host import SpikingBranch, masked_max_mean, valid_mask
from stft_neuro.model.ridge_readout import RidgeReadout
from stft_neuro.model.transformer import LatentSemanticTransformer
from stft_neuro.contract import SpikingBackend

WORD_DIM = 300  # word2vec class embeddings, 300-d and L2-normalised (AVCA/TCaF benchmark)


@dataclass
class HostPart:
    """What the host computes from the features alone, before the chip's output is known.

    ``r (B, dim)`` the transformer vector; ``mean (B, Da + Dv)`` the features' mean over the valid
    seconds; ``binned (B, K, Da + Dv)`` the binned features the chip's saliency weights pool
    (``spiking.saliency``; None without)."""

    r: Tensor
    mean: Tensor
    binned: Tensor | None = None

    def rows(self, idx) -> HostPart:
        return HostPart(self.r[idx], self.mean[idx], None if self.binned is None else self.binned[idx])


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
        # spiking.saliency: the spike-pooled features join the trained readout (LayerNorm: raw
        # features have the generator's scale), and the ridge readout (fusion.readout = ridge)
        d_feat = audio_dim + visual_dim
        saliency = self.spiking is not None and self.spiking.saliency is not None
        self.skip_pooled = (nn.Sequential(nn.LayerNorm(d_feat), nn.Linear(d_feat, width))
                            if saliency else None)
        self.ridge = RidgeReadout(width + d_feat) if cfg.fusion.readout == "ridge" else None
        self.joint = nn.Linear(width, e)
        self.audio_proj = mlp(audio_dim, width, e, p)
        self.visual_proj = mlp(visual_dim, width, e, p)
        self.text_proj = (mlp(WORD_DIM, width, e, p) if cfg.fusion.text_projection == "mlp"
                          else nn.Linear(WORD_DIM, e))
        self.reconstruct = mlp(e, width, WORD_DIM, p)
        # spiking.head: the chip's output projected on its own, trained like audio_proj/visual_proj.
        self.spike_proj = (mlp(dim_s, width, e, p)
                           if self.spiking is not None and cfg.spiking.head else None)

    @property
    def ridge_active(self) -> bool:
        """True in eval mode once a ridge readout is fitted: joint and class table are the ridge's."""
        return self.ridge is not None and not self.training and self.ridge.is_fitted

    def embed_classes(self, w2v: Tensor) -> Tensor:
        """(C, 300) word embeddings of the whole class table -> (C, E) class embeddings in the joint
        space, through ``fusion.word_geometry`` (``model/word_geometry.py``) and the text projection;
        with an active ridge readout, the ridge member's word geometry of the table (C, 300)."""
        if self.ridge_active:
            return self.ridge.class_table(w2v)
        return self.text_proj(word_geometry.apply(w2v, self.cfg.fusion.word_geometry))

    def host_part(self, audio: Tensor, visual: Tensor, lengths: Tensor) -> HostPart:
        """The host's chip-independent vectors of a batch (:class:`HostPart`)."""
        mask = valid_mask(lengths, audio.shape[1])
        r = self.transformer(audio, visual, mask)  # (B, dim)
        _, a_mean = masked_max_mean(audio, mask)
        _, v_mean = masked_max_mean(visual, mask)
        binned = (self.spiking.binned_features(audio, visual, lengths)
                  if self.spiking is not None and self.spiking.saliency is not None else None)
        return HostPart(r, torch.cat([a_mean, v_mean], dim=-1), binned)

    def pooled(self, host: HostPart, out_spikes: Tensor | None) -> Tensor:
        """The features the readout pools: spike-pooled with ``spiking.saliency`` (the last layer's
        spikes ``(T, B, n_L)``), else their mean over valid seconds: ``(B, Da + Dv)``."""
        if host.binned is None:
            return host.mean
        return self.spiking.saliency(out_spikes, host.binned)

    def pre_projection(self, r: Tensor, s: Tensor, pooled: Tensor | None = None) -> Tensor:
        """Fusion plus skip paths: ``(B, width)``, the vector the joint projection maps."""
        pre = self.fusion_norm(self.fusion(r, s))
        if self.skip is not None:
            pre = pre + self.skip(r)
        if self.skip_spiking is not None:
            pre = pre + self.skip_spiking(s)
        if self.skip_pooled is not None and pooled is not None:
            pre = pre + self.skip_pooled(pooled)
        return pre

    def joint_from(self, r: Tensor, s: Tensor, pooled: Tensor | None = None) -> Tensor:
        """The readout: transformer vector ``r (B, dim)``, spiking vector ``s (B, n_L)`` (``(B, 0)``
        without a spiking branch) and the readout's pooled features ``(B, Da + Dv)`` (see
        :meth:`pooled`; needed with ``spiking.saliency`` or a ridge readout) -> joint embedding
        ``(B, E)``, or ``(B, 300)`` from an active ridge readout. The one definition, used by
        :meth:`readout`, the ONNX readout graph and the report's operation counter."""
        pre = self.pre_projection(r, s, pooled)
        if self.ridge_active:
            return self.ridge(torch.cat([pre, pooled], dim=-1))
        return self.joint(pre)

    def readout_features(self, host: HostPart, out_spikes: Tensor | None) -> Tensor:
        """``[h, p]`` (``(B, width + Da + Dv)``): what a ridge readout maps (``model/ridge_readout.py``)."""
        s = self._spiking_vector(host, out_spikes)
        p = self.pooled(host, out_spikes)
        return torch.cat([self.pre_projection(host.r, s, p), p], dim=-1)

    def _spiking_vector(self, host: HostPart, out_spikes: Tensor | None) -> Tensor:
        if self.spiking is None:
            return host.r.new_zeros(host.r.shape[0], 0)
        return self.spiking.readout(out_spikes)

    def readout(self, host: HostPart, out_spikes: Tensor | None) -> Tensor:
        """The joint embedding from the host's vectors and the chip's last-layer spikes
        ``(T, B, n_L)`` (None without a spiking branch): what every host (torch, ONNX, simulate)
        computes once the spikes are known."""
        s = self._spiking_vector(host, out_spikes)
        return self.joint_from(host.r, s, self.pooled(host, out_spikes))

    def forward(self, audio: Tensor, visual: Tensor, lengths: Tensor,
                backend: SpikingBackend | None = None) -> dict[str, Tensor]:
        """``backend``: who runs the chip side (default: this model's own ChipNetwork)."""
        host = self.host_part(audio, visual, lengths)
        r = host.r
        out: dict[str, Tensor] = {}
        out_spikes = None
        if self.spiking is not None:
            s, record = self.spiking(audio, visual, lengths, backend)  # (B, n_L)
            out_spikes = record.spikes[-1]
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
        pooled = self.pooled(host, out_spikes)  # (B, Da + Dv): spike-pooled, or the mean
        joint = self.joint_from(r, s, pooled)  # (B, E)
        # the audio and visual projections (trained towards the class's text embedding) read the
        # pooled features: with spiking.saliency their losses teach the chip where the evidence is
        out.update(joint=joint, audio_emb=self.audio_proj(pooled[:, :self.audio_dim]),
                   visual_emb=self.visual_proj(pooled[:, self.audio_dim:]))
        if not self.ridge_active:
            out["recon"] = self.reconstruct(joint)
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
