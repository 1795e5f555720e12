"""What every image strategy answers; ``NoImages`` is the answer of a model without images.

A strategy object is made from the run's config (``strategy_for``) and asked,
by the run's builders and its restore step, for the parts that differ between
strategies. Builders ask it for fresh objects; the restore step asks it where
the image model's state is.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def load_matching(module: torch.nn.Module, state: dict) -> dict:
    """Load every tensor of ``state`` whose name and shape ``module`` has (a warm start);
    which names were loaded and which were not."""
    own = module.state_dict()
    take = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    module.load_state_dict(take, strict=False)
    return {"loaded": sorted(take), "not_loaded": sorted(k for k in own if k not in take)}


def image_embedder(cfg, rt):
    """The shared image model on ``rt``'s device, with its feature cache."""
    from ..imaging.embed import embedder_for
    from ..models.image import build_image_model

    budget = rt.cache_bytes(cfg.cache_bytes)
    return embedder_for(build_image_model(cfg), cfg.feature_cache, rt,
                        None if budget is None else budget // 2, cfg.backbone_chunk)


def image_source(cfg, rt, server: int | None = None, num_servers: int = 1):
    """Pixels from the store (all of it, or server ``server``'s partitions) onto ``rt``."""
    from ..imaging.source import ImageSource
    from ..store.lmdb_store import ImageStore

    store = ImageStore(cfg.images_dir, server=server, num_servers=num_servers)
    budget = rt.cache_bytes(cfg.cache_bytes)
    return ImageSource(store, cfg.image_size, cfg.pixel_cache, cfg.max_pixels, rt.device,
                       None if budget is None else budget // 2)


class NoImages:
    """A model without images (idonly, din): no image channel, no image model. Every
    strategy starts from these answers and gives its own where it differs."""

    def __init__(self, cfg):
        self.cfg = cfg

    # --- building (fresh objects; nothing is loaded) ---
    def image_spec(self, dtype: np.dtype):
        """The image channel's spec (servers and workers share it), or None."""
        return None

    def server_channel(self, spec, rt, topo, counter):
        """The server's side of the image channel (built only where ``image_spec`` is one)."""
        raise NotImplementedError(f"{type(self).__name__} has no image channel")

    def worker_images(self, rt):
        """The worker's local image model (``LocalImages``), or None."""
        return None

    # --- where the image model's state is kept ---
    def server_state(self, channel) -> dict[str, dict]:
        """Files the first server writes into a checkpoint: {name: state}."""
        return {}

    def worker_state(self, images) -> dict | None:
        """The image model's state inside the workers' ``dense.pt`` (its ``image_model``)."""
        return None

    def restore_server(self, channel, ckpt: Path, device) -> None:
        """Load the server channel's state from checkpoint ``ckpt`` (``--resume``)."""

    def restore_worker(self, images, dense: dict) -> None:
        """Load the worker's image model from a checkpoint's ``dense.pt`` (``--resume``)."""

    def image_weights(self, ckpt: Path) -> dict | None:
        """The image model's tensors as a run of this strategy saved them in ``ckpt``
        (the source of a warm start and of an export), or None."""
        return None

    def warm_server(self, channel, source) -> dict:
        """Warm-start the server's image model from ``source`` (a ``restore.SavedRun``, which
        knows where its own strategy kept the weights); what was loaded ({}: nothing)."""
        return {}

    def warm_worker(self, images, source) -> dict:
        """The same for the worker's image model."""
        return {}
