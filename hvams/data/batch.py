"""A mini-batch as workers use it: flat behaviors with offsets, unique keys."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .schema import Schema


@dataclass
class Batch:
    """``n`` impressions, columnar.

    Behavior lists are flat arrays sharing ``offsets`` (row i owns
    ``flat[offsets[i]:offsets[i+1]]``): no padding. ``table_keys[t]`` holds the
    unique ids of embedding table ``t`` in this batch, and ``index[f]`` maps
    every value of id field ``f`` into it; ``image_keys``/``index`` do the same
    for image fields.
    """

    n: int
    values: dict[str, np.ndarray]            # single-valued columns, shape (n,)
    lists: dict[str, np.ndarray]             # behavior list columns, flat
    offsets: np.ndarray                      # (n + 1,) int64
    table_keys: dict[str, np.ndarray] = field(default_factory=dict)
    image_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    index: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def column(self, name: str) -> np.ndarray:
        return self.values[name] if name in self.values else self.lists[name]

    def select(self, rows: np.ndarray, schema: Schema) -> "Batch":
        """The sub-batch of ``rows`` (sorted ints), with keys recomputed."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths[rows]
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat_idx = _ranges(self.offsets[rows], lengths)
        sub = Batch(len(rows), {k: v[rows] for k, v in self.values.items()},
                    {k: v[flat_idx] for k, v in self.lists.items()}, offsets)
        return index_keys(sub, schema)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + l) for each (s, l), vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    new_starts = np.zeros(len(lengths), np.int64)
    np.cumsum(lengths[:-1], out=new_starts[1:])
    return np.arange(total, dtype=np.int64) - np.repeat(new_starts - starts, lengths)


def cap_lists(batch: Batch, max_len: int) -> Batch:
    """Keep the first ``max_len`` behaviors of each row (newest first)."""
    lengths = batch.lengths
    if len(lengths) == 0 or lengths.max(initial=0) <= max_len:
        return batch
    kept = np.minimum(lengths, max_len)
    idx = _ranges(batch.offsets[:-1], kept)
    batch.lists = {k: v[idx] for k, v in batch.lists.items()}
    batch.offsets = np.zeros(batch.n + 1, np.int64)
    np.cumsum(kept, out=batch.offsets[1:])
    return batch


def index_keys(batch: Batch, schema: Schema, fields=None) -> Batch:
    """Fill ``table_keys``, ``image_keys`` and ``index`` (np.unique per table), over the
    schema's fields or only ``fields`` (a served request carries the model's fields)."""
    groups: dict[str, list[str]] = {}
    for f in (schema.fields if fields is None else fields):
        if f.is_id:
            groups.setdefault(f.table, []).append(f.name)
        elif f.is_image:
            groups.setdefault("\0image", []).append(f.name)
    for table, names in groups.items():
        cols = [batch.column(n) for n in names]
        keys, inverse = np.unique(np.concatenate(cols), return_inverse=True)
        inverse = inverse.astype(np.int64, copy=False)
        if table == "\0image":
            batch.image_keys = keys
        else:
            batch.table_keys[table] = keys
        start = 0
        for name, col in zip(names, cols):
            batch.index[name] = inverse[start:start + len(col)]
            start += len(col)
    return batch
