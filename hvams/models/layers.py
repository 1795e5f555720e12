"""Building blocks: PReLU MLPs, segment pooling, attentive pooling."""
from __future__ import annotations

import torch
from torch import nn


def mlp(in_dim: int, hidden: list[int], out_dim: int) -> nn.Sequential:
    """Linear+PReLU per hidden size, then a final Linear (the paper's tower)."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.PReLU()]
        in_dim = h
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def segment_sum(values: torch.Tensor, segment: torch.Tensor, n: int) -> torch.Tensor:
    """Sum of the rows of each segment: (m, d) -> (n, d)."""
    out = values.new_zeros((n, values.shape[1]))
    return out.index_add(0, segment, values)


def segment_max(values: torch.Tensor, segment: torch.Tensor, n: int) -> torch.Tensor:
    """Max of each segment; an empty segment gives zeros."""
    out = values.new_full((n, values.shape[1]), float("-inf"))
    out = out.scatter_reduce(0, segment[:, None].expand_as(values), values, reduce="amax",
                             include_self=True)
    return torch.where(torch.isinf(out), torch.zeros_like(out), out)


class AttentivePooling(nn.Module):
    """DIN-style attention: w_i = MLP([q, k_i, q - k_i, q * k_i]); out = sum_i w_i v_i.

    The attention unit (FC 64 -> FC 16 -> FC 1 by default) is shared over
    behaviors; weights are not normalised, as in DIN.
    """

    def __init__(self, dim: int, hidden: list[int]):
        super().__init__()
        self.unit = mlp(4 * dim, hidden, 1)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                segment: torch.Tensor) -> torch.Tensor:
        q = query.index_select(0, segment)
        w = self.unit(torch.cat([q, keys, q - keys, q * keys], dim=1))
        return segment_sum(w * values, segment, query.shape[0])
