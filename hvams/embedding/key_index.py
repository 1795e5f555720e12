"""A vectorised open-addressing hash map from int64 keys to row numbers.

A Python dict costs an object per key and a Python call per lookup; here a
lookup or insert of k keys is a few numpy passes (one per probe step), and
memory is two int64 arrays at a load factor of at most 1/2. A deleted key
leaves a tombstone (lookups probe past it, inserts reuse it); when live keys
and tombstones together pass half the slots the table is rebuilt without
them, and a table that has become mostly empty is rebuilt smaller
(``shrink``), so deletions return memory.
"""
from __future__ import annotations

import numpy as np

from ..keys import mix64

EMPTY = np.int64(-1)
TOMB = np.int64(-2)   # a deleted key's slot
CHUNK = 1 << 22       # keys placed per pass when building a large index


class KeyIndex:
    """Maps non-negative int64 keys to row numbers (0..n-1 in insertion order, as long as the
    owner relabels rows after deletions: ``EmbeddingShard`` keeps them dense)."""

    def __init__(self, capacity: int = 1024):
        cap = 1
        while cap < 2 * capacity:
            cap *= 2
        self._alloc(cap)
        self.size = 0
        self.tombs = 0

    @classmethod
    def of(cls, keys: np.ndarray) -> KeyIndex:
        """An index of distinct ``keys``, numbered 0..n-1 in their order."""
        index = cls(max(len(keys), 1))
        for lo in range(0, len(keys), CHUNK):  # sized once; chunks bound the temporaries
            index.insert(keys[lo:lo + CHUNK])
        return index

    def __len__(self) -> int:
        return self.size

    def _alloc(self, cap: int) -> None:
        # A slot's key and row number side by side: a lookup's row is in the cache line
        # its key brought in.
        table = np.empty((cap, 2), np.int64)
        table[:, 0], table[:, 1] = EMPTY, -1
        self._table, self._keys, self._rows = table, table[:, 0], table[:, 1]

    @property
    def nbytes(self) -> int:
        return self._table.nbytes

    @property
    def _mask(self) -> np.uint64:
        return np.uint64(len(self._keys) - 1)

    def _home(self, keys: np.ndarray) -> np.ndarray:
        return (mix64(keys) & self._mask).astype(np.int64)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key, or -1 where absent."""
        return self._find(np.asarray(keys, np.int64))[1]

    def insert(self, keys: np.ndarray) -> np.ndarray:
        """Insert distinct keys that are not present; return their new rows."""
        keys = np.asarray(keys, np.int64)
        if len(keys) == 0:
            return np.zeros(0, np.int64)
        if (self.size + self.tombs + len(keys)) * 2 > len(self._keys):
            self._grow(self.size + len(keys))
        rows = np.arange(self.size, self.size + len(keys), dtype=np.int64)
        self._place(keys, rows)
        self.size += len(keys)
        return rows

    def _slots_of(self, keys: np.ndarray) -> np.ndarray:
        """The slot of each key, or -1 where absent."""
        return self._find(keys)[0]

    def _find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(slot, row) of each key, -1 where absent: one gather of whole slots per probe
        (``take`` on the contiguous table: fancy indexing is slower, and ``take`` on a
        strided view copies the whole table first)."""
        mask = len(self._keys) - 1
        pos = self._home(keys)
        got = self._table.take(pos, axis=0)
        hit = got[:, 0] == keys
        slots, rows = np.where(hit, pos, -1), np.where(hit, got[:, 1], -1)
        todo = np.flatnonzero(~hit & (got[:, 0] != EMPTY))   # most keys sit in their home slot
        pos = (pos[todo] + 1) & mask
        while len(todo):
            got = self._table.take(pos, axis=0)
            hit = got[:, 0] == keys[todo]
            slots[todo[hit]], rows[todo[hit]] = pos[hit], got[hit, 1]
            go_on = ~hit & (got[:, 0] != EMPTY)
            todo, pos = todo[go_on], (pos[go_on] + 1) & mask
        return slots, rows

    def delete(self, keys: np.ndarray) -> np.ndarray:
        """Remove present keys; return the rows they had (the owner reuses or moves them)."""
        slots = self._slots_of(np.asarray(keys, np.int64))
        if (slots < 0).any():
            raise KeyError(f"{int((slots < 0).sum())} key(s) to delete are not in the index")
        rows = self._rows[slots].copy()
        self._keys[slots], self._rows[slots] = TOMB, -1
        self.size -= len(slots)
        self.tombs += len(slots)
        return rows

    def relabel(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Give present ``keys`` new row numbers ``rows``."""
        slots = self._slots_of(np.asarray(keys, np.int64))
        if (slots < 0).any():
            raise KeyError(f"{int((slots < 0).sum())} key(s) to relabel are not in the index")
        self._rows[slots] = rows

    def shrink(self) -> None:
        """Rebuild without tombstones at the smallest capacity for the live keys, when that
        is at most a quarter of the present one (memory goes back)."""
        cap = 1
        while cap < 2 * max(self.size, 512):
            cap *= 2
        if cap * 4 <= len(self._keys):
            self._rebuild(cap)

    def _place(self, keys: np.ndarray, rows: np.ndarray) -> None:
        mask = len(self._keys) - 1
        pos = self._home(keys)
        todo = np.arange(len(keys))
        while len(todo):
            # Among keys aiming at the same free slot (empty, or a tombstone to reuse) one
            # wins it: each writes its number into the free slot's row field and the one
            # whose number stays wins (a scatter, not a sort; which one does not matter, rows
            # are numbered by insertion order, and the winner's row overwrites the field).
            cand = np.flatnonzero(self._table.take(pos, axis=0)[:, 0] < 0)
            aim = pos[cand]
            self._rows[aim] = cand
            first = cand[self._rows[aim] == cand]
            slots, who = pos[first], todo[first]
            if self.tombs:
                self.tombs -= int((self._keys[slots] == TOMB).sum())
            self._keys[slots], self._rows[slots] = keys[who], rows[who]
            lost = np.ones(len(todo), bool)
            lost[first] = False
            todo, pos = todo[lost], (pos[lost] + 1) & mask

    def _grow(self, need: int) -> None:
        cap = len(self._keys)
        while cap < 2 * need:
            cap *= 2
        if self.tombs and need * 8 > cap * 3:
            # Tombstones forced this rebuild and the live keys alone fill most of the half
            # the table may use: a shard held at its row cap evicts a little every step, so
            # without headroom every eviction round would rebuild the table again.
            cap *= 2
        self._rebuild(cap)

    def _rebuild(self, cap: int) -> None:
        old_keys, old_rows = self._keys, self._rows
        self._alloc(cap)
        self.tombs = 0
        used = old_keys >= 0
        self._place(old_keys[used], old_rows[used])

    def keys_in_row_order(self) -> np.ndarray:
        """All keys, ordered by their row (the tensor cache compacts with it)."""
        out = np.empty(self.size, np.int64)
        used = self._keys >= 0
        out[self._rows[used]] = self._keys[used]
        return out
