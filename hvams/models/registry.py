"""Build the worker model named in the config."""
from __future__ import annotations

from torch import nn

from ..config import TrainConfig
from ..data.schema import Schema


def build_model(cfg: TrainConfig, schema: Schema) -> nn.Module:
    """The dense worker model for ``cfg.model`` (same seed -> same weights)."""
    import torch

    from .ctr import DIN, IdOnly

    torch.manual_seed(cfg.seed)
    if cfg.model == "idonly":
        return IdOnly(schema, cfg.emb_dim, cfg.mlp)
    if cfg.model == "din":
        return DIN(schema, cfg.emb_dim, cfg.mlp, cfg.attention)
    from .dicm import DICM

    id_part = "din" if cfg.model == "din+img" else "idonly"
    return DICM(schema, cfg.emb_dim, cfg.mlp, cfg.attention, cfg.aggregator, cfg.concat_behaviors,
                id_part, cfg.image_products)
