"""Embed image keys with the shared image model, wherever it lives.

``PixelEmbedder`` is the one code path from pixels (or cached backbone
features) to 12-d embeddings: the AMS server channel, the store-in-server
worker and the store-in-worker worker all call it, so the three strategies
compute the same numbers.
"""
from __future__ import annotations

import numpy as np
import torch

from ..models.image import ImageEmbedder
from ..protocol.timing import stage
from .source import ImageSource, normalize
from .tensor_cache import TensorCache


FROZEN_CHUNK = 256  # images per frozen-backbone forward: bounds activation memory


class PixelEmbedder:
    """Pixels -> features (cached per key when the backbone is frozen) -> embeddings."""

    def __init__(self, model: ImageEmbedder, feature_cache: int = 200_000):
        self.model = model
        self.features = TensorCache(feature_cache if model.frozen else 0)
        self.backbone_runs = 0

    def backbone_features(self, keys: np.ndarray, pixels: torch.Tensor, valid: np.ndarray
                          ) -> torch.Tensor:
        """(k, F) features of the valid keys (rows of invalid keys are zeros)."""
        k = len(keys)
        out = torch.zeros((k, self.model.feature_dim))
        rows = np.flatnonzero(valid)
        if not self.model.frozen:
            if len(rows):
                idx = torch.from_numpy(rows)
                feats = self.model.features(normalize(pixels.index_select(0, idx)))
                self.backbone_runs += len(rows)
                out = out.index_put((idx,), feats)
            return out
        self._frozen_forward(keys, pixels, self.features.gather(keys, rows, out), out)
        return out

    def _frozen_forward(self, keys: np.ndarray, pixels: torch.Tensor, rows: np.ndarray,
                        out: torch.Tensor) -> None:
        """out[rows] = frozen backbone features of pixels[rows], in chunks; cache them."""
        with torch.no_grad():
            for start in range(0, len(rows), FROZEN_CHUNK):
                idx = torch.from_numpy(rows[start:start + FROZEN_CHUNK])
                out.index_copy_(0, idx, self.model.features(normalize(pixels.index_select(0, idx))))
        if len(rows):
            self.features.put_many(np.asarray(keys)[rows], out.index_select(0, torch.from_numpy(rows)))
        self.backbone_runs += len(rows)

    def features_from(self, source: ImageSource, keys: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """Backbone features and validity of ``keys``, reading pixels from ``source``.

        With a frozen backbone only the keys missing from the feature cache are
        read and decoded: a cached key needs no pixels at all.
        """
        keys = np.asarray(keys, np.int64)
        if not self.model.frozen:
            with stage("decode"):
                pixels, valid = source.load(keys)
            with stage("image_compute"):
                return self.backbone_features(keys, pixels, valid), valid
        out = torch.zeros((len(keys), self.model.feature_dim))
        with stage("decode"):
            todo = self.features.gather(keys, np.arange(len(keys)), out)
            pixels, loaded = source.load(keys[todo])
        valid = np.ones(len(keys), bool)
        valid[todo] = loaded
        if len(todo):
            with stage("image_compute"):
                part = torch.zeros((len(todo), self.model.feature_dim))
                self._frozen_forward(keys[todo], pixels, np.flatnonzero(loaded), part)
                out.index_copy_(0, torch.from_numpy(todo), part)
        return out, valid

    def head(self, feats: torch.Tensor, valid: np.ndarray) -> torch.Tensor:
        """Embeddings: the head on valid rows, the learned missing row elsewhere."""
        k = feats.shape[0]
        out = self.model.missing.unsqueeze(0).expand(k, -1)
        if valid.any():
            idx = torch.from_numpy(np.flatnonzero(valid))
            emb = self.model.head(feats.index_select(0, idx))
            out = out.index_put((idx,), emb)
        return out

    def embed(self, keys: np.ndarray, pixels: torch.Tensor, valid: np.ndarray) -> torch.Tensor:
        return self.head(self.backbone_features(keys, pixels, valid), valid)

    def embed_from(self, source: ImageSource, keys: np.ndarray) -> torch.Tensor:
        """Embeddings of ``keys`` read from ``source`` (see ``features_from``)."""
        feats, valid = self.features_from(source, keys)
        with stage("image_compute"):
            return self.head(feats, valid)

    def stats(self) -> dict:
        return {"backbone_runs": self.backbone_runs, "feature_cache": self.features.stats()}
