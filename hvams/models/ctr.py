"""The ID models of the paper: Embedding&MLP (``idonly``) and ``din``."""
from __future__ import annotations

import torch
from torch import nn

from ..data.schema import Schema
from .inputs import Inputs
from .layers import AttentivePooling, mlp, segment_sum


class IdOnly(nn.Module):
    """Embedding&MLP: single-field embeddings plus sum-pooled behavior lists."""

    def __init__(self, schema: Schema, dim: int, hidden: list[int]):
        super().__init__()
        self.single = [f.name for f in schema.id_fields]
        self.pooled = [f.name for f in schema.fields if f.is_id and f.is_list]
        self.dim = dim
        self.tower = mlp(dim * (len(self.single) + len(self.pooled)), hidden, 2)

    @property
    def feature_dim(self) -> int:
        return self.dim * (len(self.single) + len(self.pooled))

    def features(self, inp: Inputs) -> list[torch.Tensor]:
        return [inp.single[f] for f in self.single] + [
            segment_sum(inp.lists[f], inp.segment, inp.n) for f in self.pooled]

    def forward(self, inp: Inputs) -> torch.Tensor:
        return self.tower(torch.cat(self.features(inp), dim=1))


class DIN(IdOnly):
    """Attention over behavior ID embeddings with the ad as query.

    Query = the ad fields that share a table with a behavior list (ad_id,
    category), key = the matching behavior fields (beh_item, beh_category).
    """

    def __init__(self, schema: Schema, dim: int, hidden: list[int], attention: list[int]):
        pairs = schema.paired_behavior_fields()
        if not pairs:
            raise ValueError("din needs an ad field and a behavior list that share a table")
        super().__init__(schema, dim, hidden)
        self.query_fields = [a.name for a, _ in pairs]
        self.key_fields = [b.name for _, b in pairs]
        self.pooled = [f for f in self.pooled if f not in self.key_fields]
        self.attn = AttentivePooling(dim * len(pairs), attention)
        self.tower = mlp(self.feature_dim, hidden, 2)

    @property
    def feature_dim(self) -> int:
        return self.dim * (len(self.single) + len(self.pooled) + len(self.query_fields))

    def features(self, inp: Inputs) -> list[torch.Tensor]:
        q = torch.cat([inp.single[f] for f in self.query_fields], dim=1)
        k = torch.cat([inp.lists[f] for f in self.key_fields], dim=1)
        return super().features(inp) + [self.attn(q, k, k, inp.segment)]
