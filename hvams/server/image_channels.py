"""Server-side image channels: what a server sends for an image key.

``AmsImageChannel`` (strategy ``ams``): the 12-d embedding from the shared
image model, kept with its graph; the returned gradients are back-propagated,
the parameter gradients allreduced (Sum) among servers with Horovod, and the
same Adam step taken on every server, so all servers keep one model.

``PixelChannel`` (strategy ``store-in-server``): the decoded, resized pixels
(uint8, plus a validity byte), or with a frozen backbone the cached backbone
features (float32, plus a validity flag). Workers run the image model.
"""
from __future__ import annotations

import numpy as np
import torch

from ..imaging.embed import PixelEmbedder
from ..imaging.payload import pack
from ..imaging.source import ImageSource
from ..protocol.channels import ChannelSpec
from ..protocol.compression import Compression
from ..protocol.timing import stage


class AmsImageChannel:
    def __init__(self, spec: ChannelSpec, source: ImageSource, embedder: PixelEmbedder, topo,
                 counter, lr: float, compression: Compression = Compression.NONE,
                 backbone_lr_scale: float = 1.0):
        self.spec, self.source, self.embedder, self.topo, self.counter = spec, source, embedder, topo, counter
        self.compression = Compression(compression)
        self.trained_model = embedder.model  # the shared image model trains here
        self.params = embedder.model.trainable_parameters()
        groups = embedder.model.param_groups(lr, backbone_lr_scale)
        self.base_lrs = [g["base_lr"] for g in groups]  # this run's, also after a restore
        self.opt = torch.optim.Adam(groups)
        from ..distributed.gradients import role_reducer

        self.reducer = role_reducer(topo, self.compression, "image_model_grads")
        self._out = None

    def serve(self, keys: np.ndarray, train: bool) -> np.ndarray:
        rt = self.embedder.rt
        if train:
            self._out = self.embedder.embed_from(self.source, keys)
            return rt.download(self._out, self.spec.dtype)
        with torch.no_grad():
            return rt.download(self.embedder.embed_from(self.source, keys), self.spec.dtype)

    def update(self, keys: np.ndarray, grads: np.ndarray, lr_scale: float) -> None:
        if len(keys):
            g = self.embedder.rt.upload(grads).to(self._out.dtype)
            with stage("image_compute"):
                self._out.backward(g)
        self._out = None

    def after_update(self, lr_scale: float) -> None:
        """Allreduce the image model's gradients among servers, then step (every server)."""
        if self.topo.num_servers > 1:
            self.counter.add("allreduce_servers", self.compression.allreduce_bytes(self.params))
            with stage("image_allreduce"):
                self.reducer.reduce(self.params)
        else:
            self.reducer.reduce(self.params)  # (only fills missing gradients with zeros)
        for group, lr in zip(self.opt.param_groups, self.base_lrs):
            group["lr"] = lr * lr_scale
        with stage("image_compute"):
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def state(self) -> dict:
        return {"model": self.embedder.model.state_dict(), "optimizer": self.opt.state_dict()}

    def load(self, state: dict) -> None:
        from ..train.restore import check_groups

        self.embedder.model.load_state_dict(state["model"])
        check_groups(state["optimizer"], self.opt, "the image model's checkpoint")
        self.opt.load_state_dict(state["optimizer"])

    def stats(self) -> dict:
        return {**self.source.stats(), **self.embedder.stats()}


class PixelChannel:
    """store-in-server: pixels or frozen-backbone features go to the workers."""

    trained_model = None  # the image model trains on the workers

    def __init__(self, spec: ChannelSpec, source: ImageSource, embedder: PixelEmbedder | None):
        self.spec, self.source, self.embedder = spec, source, embedder

    def serve(self, keys: np.ndarray, train: bool) -> np.ndarray:
        if self.embedder is not None:  # frozen backbone: features, computed once per key
            feats, valid = self.embedder.features_from(self.source, keys)
            return pack(self.embedder.rt.download(feats, self.spec.dtype), valid)
        with stage("decode"):
            pixels, valid = self.source.load(keys)
        flat = pixels.reshape(len(keys), 3 * self.source.size ** 2)
        return pack(flat.cpu().numpy() if flat.is_cuda else flat.numpy(), valid)

    def update(self, keys, grads, lr_scale) -> None:
        raise RuntimeError("store-in-server image payloads take no gradients")

    def after_update(self, lr_scale: float) -> None:
        pass

    def stats(self) -> dict:
        out = self.source.stats()
        if self.embedder is not None:
            out.update(self.embedder.stats())
        return out
