"""Embed image keys with the shared image model, wherever it lives.

``PixelEmbedder`` is the one code path from pixels (or cached backbone
features) to 12-d embeddings: the AMS server channel, the store-in-server
worker and the store-in-worker worker all call it, so the three strategies
compute the same numbers. It runs on its ``Runtime``'s device and precision:
the model, the feature cache and every intermediate tensor live there.
"""
from __future__ import annotations

import numpy as np
import torch

from ..models.image import ImageEmbedder
from ..protocol.timing import stage
from ..runtime import Runtime
from .source import ImageSource, normalize
from .tensor_cache import TensorCache


CHUNK = 512  # images per backbone pass (config key backbone_chunk): bounds activation memory


class PixelEmbedder:
    """Pixels -> features (cached per key when the backbone is frozen) -> embeddings."""

    def __init__(self, model: ImageEmbedder, feature_cache: int = 200_000,
                 runtime: Runtime | None = None, cache_bytes: int | None = None,
                 chunk: int = CHUNK):
        self.rt = runtime or Runtime.cpu()
        self.model = self.rt.module(model, image_model=True)
        self.features = TensorCache(feature_cache if model.frozen else 0, self.rt.device, cache_bytes)
        self.chunk = chunk
        self.backbone_runs = 0

    def _backbone(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.rt.image_input(normalize(pixels, self.rt.dtype))
        with self.rt.compute():
            return self.model.features(x).to(self.rt.dtype)

    def _trainable(self, pixels: torch.Tensor) -> torch.Tensor:
        """Trainable backbone features of ``pixels`` with their graph, in bounded memory.

        Above one chunk, each chunk runs under activation checkpointing: its forward keeps
        only its input, and backward recomputes it chunk by chunk, so at most one chunk's
        activations are alive, for a third more compute. Batch norm uses its running
        statistics and there is no dropout, so the recomputed chunk equals the first."""
        if len(pixels) <= self.chunk:
            return self._backbone(pixels)
        if not torch.is_grad_enabled():  # evaluation: no graph, no recompute
            return torch.cat([self._backbone(pixels[i:i + self.chunk])
                              for i in range(0, len(pixels), self.chunk)])
        from torch.utils.checkpoint import checkpoint

        return torch.cat([checkpoint(self._backbone, pixels[i:i + self.chunk], use_reentrant=False)
                          for i in range(0, len(pixels), self.chunk)])

    def backbone_features(self, keys: np.ndarray, pixels: torch.Tensor, valid: np.ndarray
                          ) -> torch.Tensor:
        """(k, F) features of the valid keys (rows of invalid keys are zeros)."""
        k = len(keys)
        out = self.rt.zeros(k, self.model.feature_dim)
        rows = np.flatnonzero(valid)
        if not self.model.frozen:
            if len(rows):
                idx = self.rt.index(rows)
                feats = self._trainable(pixels.index_select(0, idx))
                self.backbone_runs += len(rows)
                out = out.index_put((idx,), feats)
            return out
        self._frozen_forward(keys, pixels, self.features.gather(keys, rows, out), out)
        return out

    def _frozen_forward(self, keys: np.ndarray, pixels: torch.Tensor, rows: np.ndarray,
                        out: torch.Tensor) -> None:
        """out[rows] = frozen backbone features of pixels[rows], in chunks; cache them."""
        with torch.no_grad():
            for start in range(0, len(rows), self.chunk):
                idx = self.rt.index(rows[start:start + self.chunk])
                out.index_copy_(0, idx, self._backbone(pixels.index_select(0, idx)))
        if len(rows):
            self.features.put_many(np.asarray(keys)[rows], out.index_select(0, self.rt.index(rows)))
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
        out = self.rt.zeros(len(keys), self.model.feature_dim)
        with stage("decode"):
            todo = self.features.gather(keys, np.arange(len(keys)), out)
            pixels, loaded = source.load(keys[todo])
        valid = np.ones(len(keys), bool)
        valid[todo] = loaded
        if len(todo):
            with stage("image_compute"):
                part = self.rt.zeros(len(todo), self.model.feature_dim)
                self._frozen_forward(keys[todo], pixels, np.flatnonzero(loaded), part)
                out.index_copy_(0, self.rt.index(todo), part)
        return out, valid

    def head(self, feats: torch.Tensor, valid: np.ndarray) -> torch.Tensor:
        """Embeddings: the head on valid rows, the learned missing row elsewhere."""
        k = feats.shape[0]
        out = self.model.missing.unsqueeze(0).expand(k, -1)
        if valid.any():
            idx = self.rt.index(np.flatnonzero(valid))
            with self.rt.compute():
                emb = self.model.head(feats.index_select(0, idx)).to(self.rt.dtype)
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


class KeyEmbedder(PixelEmbedder):
    """For a backbone that reads image keys, not pixels (``true-attributes``): no
    store reads, no decoding, no feature cache; the same head and missing row."""

    def __init__(self, model: ImageEmbedder, feature_cache: int = 0,
                 runtime: Runtime | None = None, cache_bytes: int | None = None,
                 chunk: int = CHUNK):
        super().__init__(model, 0, runtime, cache_bytes, chunk)

    def _lookup(self, keys: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        feats, known = self.model.backbone.lookup(self.rt.index(np.asarray(keys, np.int64)),
                                                  self.rt.dtype)
        return feats, (known.cpu() if known.is_cuda else known).numpy()

    def backbone_features(self, keys, pixels, valid):
        return self._lookup(keys)[0]

    def features_from(self, source: ImageSource, keys: np.ndarray):
        with stage("image_compute"):
            return self._lookup(keys)


def embedder_for(model: ImageEmbedder, feature_cache: int = 200_000,
                 runtime: Runtime | None = None, cache_bytes: int | None = None,
                 chunk: int = CHUNK) -> PixelEmbedder:
    """The embedder that feeds ``model``'s backbone what it reads: pixels or keys."""
    cls = KeyEmbedder if getattr(model.backbone, "reads_keys", False) else PixelEmbedder
    return cls(model, feature_cache, runtime, cache_bytes, chunk)
