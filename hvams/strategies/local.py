"""What the two strategies whose image model trains on the workers share."""
from __future__ import annotations

from pathlib import Path

from ..train.checkpoint import load_torch
from .base import NoImages, load_matching


class WorkerImageModel(NoImages):
    """The image model trains on every worker (Horovod allreduce with the dense model), and
    its state travels in the workers' ``dense.pt`` as ``image_model``."""

    def worker_state(self, images):
        return images.model.state_dict()

    def restore_worker(self, images, dense: dict) -> None:
        images.model.load_state_dict(dense["image_model"])

    def image_weights(self, ckpt: Path):
        return load_torch(ckpt / "dense.pt").get("image_model")

    def warm_worker(self, images, source):
        weights = source.image_weights
        return {} if weights is None else {"image_model": load_matching(images.model, weights)}
