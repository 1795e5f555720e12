"""A vectorised open-addressing hash map from int64 keys to row numbers.

A Python dict costs an object per key and a Python call per lookup; here a
lookup or insert of k keys is a few numpy passes (one per probe step), and
memory is two int64 arrays at a load factor of at most 1/2.
"""
from __future__ import annotations

import numpy as np

from ..keys import mix64

EMPTY = np.int64(-1)


class KeyIndex:
    """Maps non-negative int64 keys to rows 0..n-1 in insertion order."""

    def __init__(self, capacity: int = 1024):
        cap = 1
        while cap < 2 * capacity:
            cap *= 2
        self._keys = np.full(cap, EMPTY, np.int64)
        self._rows = np.full(cap, -1, np.int64)
        self.size = 0

    def __len__(self) -> int:
        return self.size

    @property
    def _mask(self) -> np.uint64:
        return np.uint64(len(self._keys) - 1)

    def _home(self, keys: np.ndarray) -> np.ndarray:
        return (mix64(keys) & self._mask).astype(np.int64)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key, or -1 where absent."""
        keys = np.asarray(keys, np.int64)
        out = np.full(len(keys), -1, np.int64)
        pos = self._home(keys)
        todo = np.arange(len(keys))
        mask = len(self._keys) - 1
        while len(todo):
            slot_keys = self._keys[pos]
            hit = slot_keys == keys[todo]
            out[todo[hit]] = self._rows[pos[hit]]
            go_on = ~hit & (slot_keys != EMPTY)
            todo, pos = todo[go_on], (pos[go_on] + 1) & mask
        return out

    def insert(self, keys: np.ndarray) -> np.ndarray:
        """Insert distinct keys that are not present; return their new rows."""
        keys = np.asarray(keys, np.int64)
        if len(keys) == 0:
            return np.zeros(0, np.int64)
        if (self.size + len(keys)) * 2 > len(self._keys):
            self._grow(self.size + len(keys))
        rows = np.arange(self.size, self.size + len(keys), dtype=np.int64)
        self._place(keys, rows)
        self.size += len(keys)
        return rows

    def _place(self, keys: np.ndarray, rows: np.ndarray) -> None:
        mask = len(self._keys) - 1
        pos = self._home(keys)
        todo = np.arange(len(keys))
        while len(todo):
            free = self._keys[pos] == EMPTY
            # Among keys aiming at the same free slot, the first one wins it.
            cand = np.flatnonzero(free)
            _, first = np.unique(pos[cand], return_index=True)
            won = np.zeros(len(todo), bool)
            won[cand[first]] = True
            self._keys[pos[won]] = keys[todo[won]]
            self._rows[pos[won]] = rows[todo[won]]
            todo, pos = todo[~won], (pos[~won] + 1) & mask

    def _grow(self, need: int) -> None:
        old_keys, old_rows = self._keys, self._rows
        cap = len(old_keys)
        while cap < 2 * need:
            cap *= 2
        self._keys = np.full(cap, EMPTY, np.int64)
        self._rows = np.full(cap, -1, np.int64)
        used = old_keys != EMPTY
        self._place(old_keys[used], old_rows[used])

    def keys_in_row_order(self) -> np.ndarray:
        """All keys, ordered by their row."""
        out = np.empty(self.size, np.int64)
        used = self._keys != EMPTY
        out[self._rows[used]] = self._keys[used]
        return out
