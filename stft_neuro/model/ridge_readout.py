"""The STFT's last linear map fitted in closed form: ``fusion.readout = "ridge"`` (issue #16).

Why: at real size the joint projection trained by the losses overfits the seen classes (the full
STFT's S 84 / U 27 against the ridge baseline's S 91 / U 32 on synthetic UCF), while a ridge map
with a strong penalty transfers to unseen classes. Here the network is trained as before (the
losses on the trained joint projection shape the transformer, the fusion and the chip); the map
from the readout's features to the class table is then fitted in closed form, with the ridge
family of ``stft_neuro/baselines/ridge.py`` (no intercept or intercept; word geometry; lambda),
its member chosen on stage-1 validation HM.

Features (``STFT.readout_features``), per sample::

    f = [h, p]     h (width,)  the fusion's pre-projection vector (fusion + skip paths)
                   p (Da + Dv,) the spike-pooled features (``spiking.saliency``) or, without them,
                                the features' mean over the valid seconds

In eval mode a fitted readout replaces the trained one: ``joint = ((f - mu) / sd) W + y_bar``
(``(B, 300)``) and the class table is the member's word geometry of the word2vec table
(``STFT.embed_classes``). In training mode the trained projection is used (the losses need it).
The buffers (``mu``, ``sd``, ``weight``, ``intercept``, ``geometry``, ``fitted``) are part of the
model's weights, so a saved run carries its fitted map.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from stft_neuro.model import word_geometry

WORD_DIM = 300  # the word2vec width (stft.WORD_DIM; not imported from there: stft imports this module)


class RidgeReadout(nn.Module):
    """``f (B, F)`` -> ``(B, 300)`` once fitted (module doc)."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.register_buffer("mu", torch.zeros(n_features))
        self.register_buffer("sd", torch.ones(n_features))
        self.register_buffer("weight", torch.zeros(n_features, WORD_DIM))
        self.register_buffer("intercept", torch.zeros(WORD_DIM))
        self.register_buffer("geometry", torch.zeros((), dtype=torch.int64))  # index in GEOMETRIES
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        # Python copies of the two flags, so that a traced graph (ONNX export) never reads a
        # buffer's value; kept in step by set_map and by loading a state dict
        self._fitted, self._geometry = False, word_geometry.GEOMETRIES[0]

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._fitted = bool(self.fitted)
        self._geometry = word_geometry.GEOMETRIES[int(self.geometry)]

    @property
    def is_fitted(self) -> bool:
        return self._fitted

    @property
    def geometry_name(self) -> str:
        return self._geometry

    def forward(self, f: Tensor) -> Tensor:
        return ((f - self.mu) / self.sd) @ self.weight + self.intercept

    def class_table(self, w2v: Tensor) -> Tensor:
        """``(C, 300)`` word2vec -> the class table the fitted map predicts into."""
        return word_geometry.apply(w2v, self.geometry_name).to(self.weight.dtype)

    @torch.no_grad()
    def set_map(self, ridge_map, geometry: str) -> None:
        """Load a fitted ``baselines.ridge.RidgeMap`` and its word geometry."""
        for name, value in (("mu", ridge_map.mu), ("sd", ridge_map.sd), ("weight", ridge_map.weight),
                            ("intercept", ridge_map.intercept)):
            buf = getattr(self, name)
            buf.copy_(torch.as_tensor(np.asarray(value), dtype=buf.dtype))
        self.geometry.fill_(word_geometry.GEOMETRIES.index(geometry))
        self.fitted.fill_(True)
        self._fitted, self._geometry = True, geometry
