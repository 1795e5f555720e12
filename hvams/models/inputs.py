"""Embedded inputs of a batch, the one interface between lookup and model.

Whatever produced the rows (server pull, or a local ``nn.Embedding`` in the
reference), the model sees per-field tensors: ``single[f]`` of shape (n, d)
and behavior lists ``lists[f]`` of shape (m, d) with ``segment`` mapping each
of the m flat behaviors to its sample.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.batch import Batch
from ..data.schema import IMAGE_CHANNEL, Schema


@dataclass
class Inputs:
    n: int
    single: dict[str, torch.Tensor]
    lists: dict[str, torch.Tensor]
    segment: torch.Tensor          # (m,) int64 sample of each flat behavior
    lengths: torch.Tensor          # (n,) behaviors per sample


def channel_of(field) -> str:
    """Channel (embedding table, or the image channel) that serves a field."""
    return IMAGE_CHANNEL if field.is_image else field.table


def model_fields(schema: Schema, with_images: bool):
    """Fields a model embeds, in schema order."""
    out = [f for f in schema.fields if f.is_id]
    if with_images:
        out += schema.image_fields
    return out


def build_inputs(batch: Batch, rows: dict[str, torch.Tensor], schema: Schema,
                 with_images: bool, upload=torch.from_numpy) -> Inputs:
    """Gather each field's rows from its channel's unique-key rows.

    ``upload`` puts a host index array on the rows' device (``Runtime.index``).
    """
    single, lists = {}, {}
    for f in model_fields(schema, with_images):
        idx = upload(np.asarray(batch.index[f.name], np.int64))
        (lists if f.is_list else single)[f.name] = rows[channel_of(f)].index_select(0, idx)
    lengths = upload(np.asarray(batch.lengths, np.int64))
    segment = torch.repeat_interleave(torch.arange(batch.n, device=lengths.device), lengths)
    return Inputs(batch.n, single, lists, segment, lengths)


def labels_of(batch: Batch, schema: Schema, upload=torch.from_numpy) -> torch.Tensor:
    return upload(np.asarray(batch.values[schema.label], np.int64))
