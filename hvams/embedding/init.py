"""Deterministic initial rows: a function of (seed, table, key) only.

So a key's first value does not depend on which server owns it, on the
server count, or on when the key first arrives.
"""
from __future__ import annotations

import numpy as np

from ..keys import mix64, name_salt


def initial_rows(keys: np.ndarray, dim: int, table: str, seed: int, scale: float) -> np.ndarray:
    """float32 rows uniform in [-scale, scale), one per key."""
    keys = np.asarray(keys, np.int64)
    salt = (name_salt(table) ^ (seed * 0x9E3779B97F4A7C15)) & 0xFFFFFFFFFFFFFFFF
    cols = np.arange(dim, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = mix64(keys.astype(np.uint64)[:, None] * np.uint64(dim + 1) + cols[None, :], salt)
    unit = (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return ((unit * 2.0 - 1.0) * scale).astype(np.float32)
