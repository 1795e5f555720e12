"""The image model on workers (strategies store-in-server and store-in-worker)."""
from __future__ import annotations

import numpy as np
import torch

from .embed import PixelEmbedder
from .payload import unpack
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
            return self.embedder.embed_from(self.source, keys)
        body, valid = unpack(payload, self.model.frozen, self.size)
        if self.model.frozen:
            return self.embedder.head(body, valid)
        return self.embedder.embed(keys, body, valid)

    def stats(self) -> dict:
        out = self.embedder.stats()
        if self.source is not None:
            out.update(self.source.stats())
        return out
