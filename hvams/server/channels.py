"""Server-side ID channels: rows from the server's shard, updates by its optimizer."""
from __future__ import annotations

import numpy as np

from ..embedding.shard import EmbeddingShard
from ..protocol.channels import ChannelSpec
from ..protocol.timing import stage


class EmbeddingChannel:
    """Server side of an ID table: rows from the shard, updates by its optimizer."""

    def __init__(self, spec: ChannelSpec, shard: EmbeddingShard):
        self.spec, self.shard = spec, shard

    def serve(self, keys: np.ndarray, train: bool) -> np.ndarray:
        with stage("id_serve"):
            return self.shard.gather(keys, insert=train)

    def update(self, keys: np.ndarray, grads: np.ndarray, lr_scale: float) -> None:
        with stage("id_update"):
            self.shard.apply(keys, grads, lr_scale)

    def after_update(self, lr_scale: float) -> None:
        """Hook for channels that synchronise among servers (the image model)."""
