"""The image model on workers (strategies store-in-server and store-in-worker)."""
from __future__ import annotations

import numpy as np
import torch

from .embed import PixelEmbedder
from .source import ImageSource


class LocalImages:
    """Turns a batch's image keys into embeddings on the worker.

    store-in-worker: reads and decodes the images itself (``source``).
    store-in-server: unpacks the payload the servers sent (pixels + validity
    byte, or frozen-backbone features + validity flag).
    """

    def __init__(self, embedder: PixelEmbedder, size: int, source: ImageSource | None = None):
        self.embedder, self.size, self.source = embedder, size, source
        self.model = embedder.model

    def parameters(self) -> list[torch.nn.Parameter]:
        return self.model.trainable_parameters()

    def embed(self, keys: np.ndarray, payload: torch.Tensor | None) -> torch.Tensor:
        if self.source is not None:
            pixels, valid = self.source.load(keys)
            return self.embedder.embed(keys, pixels, valid)
        k = len(keys)
        valid = (payload[:, -1] > 0).numpy()
        if self.model.frozen:
            return self.embedder.head(payload[:, :-1].float(), valid)
        pixels = payload[:, :-1].reshape(k, 3, self.size, self.size)
        return self.embedder.embed(keys, pixels, valid)

    def stats(self) -> dict:
        out = self.embedder.stats()
        if self.source is not None:
            out.update(self.source.stats())
        return out
