"""``ams``: servers embed their partitions' images with the shared image model and send 12
floats per image; its gradients come back, and servers allreduce the image model's."""
from __future__ import annotations

from pathlib import Path

from ..protocol.channels import image_channel
from ..protocol.compression import Compression
from ..server.image_channels import AmsImageChannel
from ..store.lmdb_store import read_manifest
from ..train.checkpoint import load_torch
from .base import NoImages, image_embedder, image_source, load_matching

IMAGE_FILE = "image.pt"  # the image model and its Adam state, written by the first server


class Ams(NoImages):

    def image_spec(self, dtype):
        P = read_manifest(self.cfg.images_dir)["partitions"]
        return image_channel(P, self.cfg.emb_dim, dtype,
                             wire=Compression(self.cfg.row_compression).row_dtype(dtype))

    def server_channel(self, spec, rt, topo, counter):
        source = image_source(self.cfg, rt, topo.role_rank, topo.num_servers)
        return AmsImageChannel(spec, source, image_embedder(self.cfg, rt), topo, counter,
                               self.cfg.image_lr, self.cfg.allreduce_compression,
                               self.cfg.backbone_lr_scale)

    def server_state(self, channel):
        return {IMAGE_FILE: channel.state()}

    def restore_server(self, channel, ckpt: Path, device) -> None:
        if (ckpt / IMAGE_FILE).exists():
            channel.load(load_torch(ckpt / IMAGE_FILE, device))

    def image_weights(self, ckpt: Path):
        path = ckpt / IMAGE_FILE
        return load_torch(path)["model"] if path.exists() else None

    def warm_server(self, channel, source):
        weights = source.image_weights
        return {} if weights is None else {
            "image_model": load_matching(channel.embedder.model, weights)}
