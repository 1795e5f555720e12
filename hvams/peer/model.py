"""hvams's idonly model with its ID half on TorchRec.

The tower (the MLP, its seed and its feature order) is the very ``IdOnly``
tower hvams trains; only the lookup and the sum-pooling of behavior lists
move to an ``EmbeddingBagCollection`` (a single id is a bag of one), with one
table per schema table, shared where fields share one (ad_id and beh_item).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.modules.embedding_configs import PoolingType

from ..config import ConfigError, TrainConfig
from ..data.batch import Batch
from ..data.schema import Schema
from ..models import build_model
from .vocab import id_fields, rows


def table_configs(cfg: TrainConfig, schema: Schema, vocab: dict[str, np.ndarray]):
    fields = id_fields(schema)
    return [EmbeddingBagConfig(name=t, embedding_dim=cfg.emb_dim,
                               num_embeddings=max(len(vocab[t]), 1),
                               feature_names=[f.name for f in fields if f.table == t],
                               pooling=PoolingType.SUM)
            for t in dict.fromkeys(f.table for f in fields)]


class TorchRecIdOnly(nn.Module):
    """logits = IdOnly.tower(concat(EBC features in IdOnly's order))."""

    def __init__(self, cfg: TrainConfig, schema: Schema, vocab: dict[str, np.ndarray],
                 table_device: torch.device = torch.device("meta")):
        super().__init__()
        if cfg.model != "idonly":
            raise ConfigError(f"config key 'model': the TorchRec peer trains idonly only "
                              f"(got {cfg.model!r})")
        ref = build_model(replace(cfg, model="idonly"), schema)  # seeded: hvams's own tower
        self.order = ref.single + ref.pooled
        self.tower = ref.tower
        self.ebc = EmbeddingBagCollection(table_configs(cfg, schema, vocab), device=table_device)

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.ebc(features).to_dict()
        return self.tower(torch.cat([pooled[f] for f in self.order], dim=1))


@dataclass
class PeerBatch:
    """A batch as TorchRec takes it: padded to ``size`` rows, with a 0/1 weight per row."""

    features: KeyedJaggedTensor
    labels: torch.Tensor
    weights: torch.Tensor
    n: int


def feature_order(cfg: TrainConfig, schema: Schema, vocab) -> list[str]:
    return [f for t in table_configs(cfg, schema, vocab) for f in t.feature_names]


def to_peer_batch(batch: Batch | None, schema: Schema, vocab: dict[str, np.ndarray],
                  keys: list[str], size: int) -> PeerBatch:
    """KJT of ``batch`` padded with zero-weight rows to ``size``.

    Collectives need every rank in every step with the same batch size, also a
    rank whose share of the day is done; padding rows look up row 0 (lists:
    no behaviors) and weigh 0, so they add no gradient.
    """
    n = batch.n if batch is not None else 0
    pad = size - n
    values, lengths = [], []
    for name in keys:
        f = schema[name]
        if f.is_list:
            ids = batch.lists[name] if n else np.zeros(0, np.int64)
            ln = np.concatenate([batch.lengths if n else np.zeros(0, np.int64),
                                 np.zeros(pad, np.int64)])
        else:
            ids = batch.values[name] if n else np.zeros(0, np.int64)
            ln = np.ones(size, np.int64)
        idx = rows(vocab[f.table], np.asarray(ids, np.int64), f.table)
        if not f.is_list:
            idx = np.concatenate([idx, np.zeros(pad, np.int64)])
        values.append(idx)
        lengths.append(ln)
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=keys, values=torch.from_numpy(np.concatenate(values)),
        lengths=torch.from_numpy(np.concatenate(lengths)))
    labels = np.zeros(size, np.int64)
    if n:
        labels[:n] = batch.values[schema.label]
    weights = torch.zeros(size)
    weights[:n] = 1.0
    return PeerBatch(kjt, torch.from_numpy(labels), weights, n)
