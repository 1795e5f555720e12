"""Numerical precision of a role: ``fp32 | bf16 | fp64`` (``auto``: bf16 on CUDA, else fp32).

``dtype`` is the dtype of parameters, embedding rows and the rows and gradients
on the wire; ``autocast`` is the dtype of the matrix and convolution kernels
(bf16 under ``torch.autocast``). fp64 exists for verification: float32 noise
can flip an arg-max (the ``max`` aggregator) between near-tied behaviors and
move a whole gradient, while float64 noise is 10^9 times smaller.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from ..config import choices

PRECISIONS = choices("precision")


@dataclass(frozen=True)
class Precision:
    name: str
    dtype: torch.dtype                 # parameters, rows, gradients on the wire
    autocast: torch.dtype | None       # compute dtype of matmuls/convolutions

    @property
    def np_dtype(self) -> np.dtype:
        return wire_dtype(self.name)

    def compute(self, device: torch.device):
        """Context of a forward pass: autocast where this precision asks for it."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast)


_TABLE = {"fp32": (torch.float32, None), "bf16": (torch.float32, torch.bfloat16),
          "fp64": (torch.float64, None)}


def resolve_precision(name: str, device: torch.device) -> Precision:
    if name == "auto":
        name = "bf16" if device.type == "cuda" else "fp32"
    dtype, autocast = _TABLE[name]
    return Precision(name, dtype, autocast)


def wire_dtype(name: str) -> np.dtype:
    """Host dtype of rows and gradients between servers and workers: the same on
    both sides whatever device each is on (bf16 computes, but sends float32);
    ``row_compression: fp16`` narrows them on the wire only (protocol.wire)."""
    return np.dtype(np.float64 if name == "fp64" else np.float32)
