"""``store-in-server``: servers read and decode their partitions' images and send the pixels
(or, with a frozen backbone, its cached features); workers run the image model."""
from __future__ import annotations

from ..imaging.local import LocalImages
from ..imaging.payload import payload_spec
from ..models.image import feature_dim_of
from ..protocol.channels import image_channel
from ..protocol.compression import Compression
from ..server.image_channels import PixelChannel
from ..store.lmdb_store import read_manifest
from .base import image_embedder, image_source
from .local import WorkerImageModel


class StoreInServer(WorkerImageModel):

    def image_spec(self, dtype):
        cfg = self.cfg
        P = read_manifest(cfg.images_dir)["partitions"]
        width, payload = payload_spec(feature_dim_of(cfg), cfg.freeze_backbone, cfg.image_size,
                                      dtype)
        return image_channel(P, width, payload, trainable=False,
                             wire=Compression(cfg.row_compression).row_dtype(payload))

    def server_channel(self, spec, rt, topo, counter):
        source = image_source(self.cfg, rt, topo.role_rank, topo.num_servers)
        # A frozen backbone runs on the servers, once per image (its features are cached).
        embedder = image_embedder(self.cfg, rt) if self.cfg.freeze_backbone else None
        return PixelChannel(spec, source, embedder)

    def worker_images(self, rt):
        return LocalImages(image_embedder(self.cfg, rt), self.cfg.image_size)
