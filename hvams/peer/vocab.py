"""Dense row ids for TorchRec's fixed-size tables.

hvams keys its hash tables by the raw int64 ids; TorchRec tables are
``num_embeddings`` rows indexed 0..n-1. The exact map (no hashing, so no
collisions that would make it another model) is each table's sorted distinct
ids over the training and test days; ``rows`` is a binary search.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..data.reader import day_files
from ..data.schema import Schema


def id_fields(schema: Schema):
    return [f for f in schema.fields if f.is_id]


def build_vocab(schema: Schema, days: list[Path]) -> dict[str, np.ndarray]:
    """Sorted distinct ids of every table over ``days``."""
    fields = id_fields(schema)
    seen: dict[str, list[np.ndarray]] = {t: [] for t in dict.fromkeys(f.table for f in fields)}
    for day in days:
        for path in day_files(day):
            table = pq.ParquetFile(path).read(columns=[f.name for f in fields])
            for f in fields:
                col = table.column(f.name)
                if f.is_list:
                    col = pc.list_flatten(col)
                seen[f.table].append(np.unique(col.to_numpy()))
    return {t: np.unique(np.concatenate(v)) if v else np.zeros(0, np.int64) for t, v in seen.items()}


def save_vocab(path: Path, vocab: dict[str, np.ndarray]) -> None:
    np.savez(path, **vocab)


def load_vocab(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def rows(keys: np.ndarray, ids: np.ndarray, table: str) -> np.ndarray:
    """Row of each id in the sorted ``keys``; an id outside the vocabulary is an error."""
    idx = np.searchsorted(keys, ids)
    idx[idx == len(keys)] = 0
    bad = keys[idx] != ids if len(keys) else np.ones(len(ids), bool)
    if bad.any():
        raise KeyError(f"table {table!r}: id {int(ids[bad][0])} is not in the peer's vocabulary "
                       f"(built from other days than those read)")
    return idx


def run_vocab(cfg, schema: Schema) -> dict[str, np.ndarray]:
    """The vocabulary of a run's training days and test day."""
    from ..train.plan import resolve_days

    train, test = resolve_days(cfg)
    return build_vocab(schema, [*dict.fromkeys([*train, test])])
