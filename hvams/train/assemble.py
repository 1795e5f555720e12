"""Assemble a run's parts for each role: channels, shards, image pipelines.

Servers and workers must agree on the channels (order, width, dtype,
router); ``channel_specs`` is the one place that decides them.
"""
from __future__ import annotations


from ..config import TrainConfig
from ..data.schema import Schema
from ..embedding.shard import EmbeddingShard
from ..imaging.embed import PixelEmbedder, embedder_for
from ..imaging.local import LocalImages
from ..imaging.payload import payload_spec
from ..imaging.source import ImageSource
from ..models.image import build_image_model, feature_dim_of
from ..protocol.wire import on_wire
from ..roles.channels import EmbeddingChannel, id_channel, image_channel
from ..roles.image_channels import AmsImageChannel, PixelChannel
from ..runtime import Runtime, wire_dtype
from ..store.lmdb_store import ImageStore, read_manifest
from . import checkpoint as ckpt


def channel_specs(cfg: TrainConfig, schema: Schema) -> list:
    """The channels of this run, in the fixed order servers and workers share."""
    dtype = wire_dtype(cfg.precision)
    wire = on_wire(dtype, cfg.row_compression)
    specs = [id_channel(t, cfg.emb_dim, dtype, wire) for t in schema.tables]
    if cfg.uses_images and cfg.strategy != "store-in-worker":
        P = read_manifest(cfg.images_dir)["partitions"]
        if cfg.strategy == "ams":
            specs.append(image_channel(P, cfg.emb_dim, dtype, wire=wire))
        else:  # store-in-server: pixels or frozen-backbone features, plus validity
            width, payload = payload_spec(feature_dim_of(cfg), cfg.freeze_backbone, cfg.image_size, dtype)
            specs.append(image_channel(P, width, payload, trainable=False,
                                       wire=on_wire(payload, cfg.row_compression)))
    return specs


def image_embedder(cfg: TrainConfig, rt: Runtime) -> PixelEmbedder:
    """The shared image model on ``rt``'s device, with its feature cache."""
    budget = rt.cache_bytes(cfg.cache_bytes)
    return embedder_for(build_image_model(cfg), cfg.feature_cache, rt,
                         None if budget is None else budget // 2)


def image_source(cfg: TrainConfig, rt: Runtime, server: int | None = None,
                 num_servers: int = 1) -> ImageSource:
    """Pixels from the store (all of it, or server ``server``'s partitions) onto ``rt``."""
    store = ImageStore(cfg.images_dir, server=server, num_servers=num_servers)
    budget = rt.cache_bytes(cfg.cache_bytes)
    return ImageSource(store, cfg.image_size, cfg.pixel_cache, cfg.max_pixels, rt.device,
                       None if budget is None else budget // 2)


def server_channels(cfg, schema, topo, specs, resume_dir, counter, rt: Runtime):
    shards, channels = {}, []
    for spec in specs:
        if spec.name == "image":
            source = image_source(cfg, rt, topo.role_rank, topo.num_servers)
            if cfg.strategy == "ams":
                ch = AmsImageChannel(spec, source, image_embedder(cfg, rt), topo, counter,
                                     cfg.image_lr, cfg.allreduce_compression)
                if resume_dir is not None and (resume_dir / "image.pt").exists():
                    ch.load(ckpt.load_torch(resume_dir / "image.pt", rt.device))
            else:
                embedder = image_embedder(cfg, rt) if cfg.freeze_backbone else None
                ch = PixelChannel(spec, source, embedder)
            channels.append(ch)
            continue
        shard = EmbeddingShard(spec.name, spec.dim, cfg.sparse_optimizer, cfg.sparse_lr,
                               cfg.seed, cfg.init_scale, dtype=spec.dtype)
        if resume_dir is not None:
            me, S = topo.role_rank, topo.num_servers
            keys, rows, slots, step = ckpt.load_owned_rows(
                resume_dir, spec.name, lambda k: spec.route(k, S) == me)
            if len(keys):
                shard.load(keys, rows, slots, step)
            shard.step = step
        shards[spec.name] = shard
        channels.append(EmbeddingChannel(spec, shard))
    return shards, channels


def local_images(cfg: TrainConfig, rt: Runtime) -> LocalImages | None:
    if not cfg.uses_images or cfg.strategy == "ams":
        return None
    source = image_source(cfg, rt) if cfg.strategy == "store-in-worker" else None
    return LocalImages(image_embedder(cfg, rt), cfg.image_size, source)
