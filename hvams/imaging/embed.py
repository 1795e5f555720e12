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
from .lru import LRU
from .source import normalize


FROZEN_CHUNK = 256  # images per frozen-backbone forward: bounds activation memory


class PixelEmbedder:
    """Pixels -> features (cached per key when the backbone is frozen) -> embeddings."""

    def __init__(self, model: ImageEmbedder, feature_cache: int = 200_000):
        self.model = model
        self.features = LRU(feature_cache if model.frozen else 0)
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
        todo = self.features.gather(keys, rows, out)
        with torch.no_grad():
            for start in range(0, len(todo), FROZEN_CHUNK):
                part = todo[start:start + FROZEN_CHUNK]
                idx = torch.as_tensor(part)
                feats = self.model.features(normalize(pixels.index_select(0, idx)))
                for j, i in enumerate(part):
                    self.features.put(int(keys[i]), feats[j].clone())
                out.index_copy_(0, idx, feats)
        self.backbone_runs += len(todo)
        return out

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

    def stats(self) -> dict:
        return {"backbone_runs": self.backbone_runs, "feature_cache": self.features.stats()}
