"""The worker model as TorchScript, with a flat tensor signature.

``forward(single_0, ..., list_0, ..., segment, lengths) -> p(click)``: one
(n, d) tensor per single-valued field and one (m, d) tensor per behavior
list field, in the order of ``fields`` (saved in the export manifest).
"""
from __future__ import annotations

import torch
from torch import nn

from ..models.inputs import Inputs


class ServingModel(nn.Module):
    def __init__(self, model: nn.Module, single: list[str], lists: list[str]):
        super().__init__()
        self.model, self.single_names, self.list_names = model, single, lists

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        ns, nl = len(self.single_names), len(self.list_names)
        single = dict(zip(self.single_names, tensors[:ns]))
        lists = dict(zip(self.list_names, tensors[ns:ns + nl]))
        segment, lengths = tensors[ns + nl], tensors[ns + nl + 1]
        inp = Inputs(lengths.shape[0], single, lists, segment, lengths)
        return torch.softmax(self.model(inp), dim=1)[:, 1]


def flat_inputs(inp: Inputs, single: list[str], lists: list[str]) -> tuple[torch.Tensor, ...]:
    return (*[inp.single[f] for f in single], *[inp.lists[f] for f in lists], inp.segment,
            inp.lengths)
