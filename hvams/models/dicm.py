"""DICM: the ID features plus the ad image and the behavior images.

The ad image embedding is both an MLP input and the query of the image
channel. Behavior image embeddings are aggregated by one of:

``mqap``       MultiQueryAttentivePooling: two attentive channels, queries =
               ad image embedding and ad ID embedding; outputs concatenated
``attentive``  one attentive channel, query = ad image embedding
``sum``/``max`` pooling
``concat``     the newest L behaviors side by side, zero-padded

With ``products`` the tower also gets ``ad_image * channel`` for each pooled
channel of ``dim`` floats: how well the candidate's image matches what the user
looked at, as a product the tower's first layer weighs directly.
"""
from __future__ import annotations

import torch
from torch import nn

from ..data.schema import Schema
from .ctr import DIN, IdOnly
from .inputs import Inputs
from .layers import AttentivePooling, mlp, segment_max, segment_sum


class BehaviorImageAggregator(nn.Module):
    def __init__(self, kind: str, dim: int, attention: list[int], concat_len: int):
        super().__init__()
        self.kind, self.dim, self.concat_len = kind, dim, concat_len
        if kind == "mqap":
            self.by_image = AttentivePooling(dim, attention)
            self.by_id = AttentivePooling(dim, attention)
        elif kind == "attentive":
            self.by_image = AttentivePooling(dim, attention)
        elif kind not in ("sum", "max", "concat"):
            raise ValueError(f"unknown aggregator {kind!r}")

    @property
    def out_dim(self) -> int:
        return {"mqap": 2 * self.dim, "concat": self.concat_len * self.dim}.get(self.kind, self.dim)

    def forward(self, ad_image, ad_id, beh, segment, lengths, n) -> torch.Tensor:
        if self.kind == "mqap":
            return torch.cat([self.by_image(ad_image, beh, beh, segment),
                              self.by_id(ad_id, beh, beh, segment)], dim=1)
        if self.kind == "attentive":
            return self.by_image(ad_image, beh, beh, segment)
        if self.kind == "sum":
            return segment_sum(beh, segment, n)
        if self.kind == "max":
            return segment_max(beh, segment, n)
        starts = torch.cumsum(lengths, 0) - lengths
        pos = torch.arange(len(segment), device=segment.device) - starts.index_select(0, segment)
        keep = pos < self.concat_len
        out = beh.new_zeros((n, self.concat_len, self.dim))
        out = out.index_put((segment[keep], pos[keep]), beh[keep])
        return out.reshape(n, -1)


class DICM(nn.Module):
    """ID part (``idonly`` or ``din``) + ad image + aggregated behavior images -> MLP."""

    def __init__(self, schema: Schema, dim: int, hidden: list[int], attention: list[int],
                 aggregator: str = "mqap", concat_len: int = 10, id_part: str = "idonly",
                 products: bool = False):
        super().__init__()
        self.ids = (DIN(schema, dim, hidden, attention) if id_part == "din"
                    else IdOnly(schema, dim, hidden))
        del self.ids.tower  # the ID part only supplies features
        self.ad_image, self.beh_image, self.ad_id = schema.ad_image, schema.behavior_image, schema.ad_id
        self.agg = BehaviorImageAggregator(aggregator, dim, attention, concat_len)
        self.products = products
        self.tower = mlp(self.ids.feature_dim + dim + self.agg.out_dim, hidden, 2)
        if products:  # the paper's tower, widened by zero columns: at init it is the paper's
            first, extra = self.tower[0], self.agg.out_dim
            wide = nn.Linear(first.in_features + extra, first.out_features)
            with torch.no_grad():
                wide.weight.zero_()
                wide.weight[:, :first.in_features] = first.weight
                wide.bias.copy_(first.bias)
            self.tower[0] = wide

    def forward(self, inp: Inputs) -> torch.Tensor:
        ad_img = inp.single[self.ad_image]
        pooled = self.agg(ad_img, inp.single[self.ad_id], inp.lists[self.beh_image], inp.segment,
                          inp.lengths, inp.n)
        feats = self.ids.features(inp) + [ad_img, pooled]
        if self.products:
            feats.append(pooled * ad_img.repeat(1, pooled.shape[1] // ad_img.shape[1]))
        return self.tower(torch.cat(feats, dim=1))
