"""``store-in-worker``: every worker reads the whole store and runs the image model itself;
no image channel."""
from __future__ import annotations

from ..imaging.local import LocalImages
from .base import image_embedder, image_source
from .local import WorkerImageModel


class StoreInWorker(WorkerImageModel):

    def worker_images(self, rt):
        source = image_source(self.cfg, rt)  # first: the caches split free GPU memory in turn
        return LocalImages(image_embedder(self.cfg, rt), self.cfg.image_size, source)
