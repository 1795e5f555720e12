"""A count-min sketch of int64 keys: how often each was seen, in fixed memory.

``depth`` rows of ``width`` uint32 counters; a key has one counter per row
(its own hash per row) and its estimate is the smallest of them. Adding a
sighting raises only the key's counters that are below its new estimate
(conservative update, Estan and Varghese 2002), which keeps every estimate at
or above the true count and overcounts less than plain count-min. An
estimate exceeds the true count by more than ``e / width * total`` (``total``:
all additions so far) with probability at most ``exp(-depth)`` (Cormode and
Muthukrishnan, 2005). The sum of two sketches of the same shape and seed is
an upper bound of both streams' counts: that is how a checkpoint written by S
servers loads on S' (``merge``).
"""
from __future__ import annotations

import math

import numpy as np

from ..keys import mix64


class CountMinSketch:
    def __init__(self, width: int = 1 << 20, depth: int = 4, seed: int = 0):
        if width < 1 or width & (width - 1):
            raise ValueError(f"sketch width must be a power of two (got {width})")
        self.width, self.depth, self.seed = width, depth, seed
        self.table = np.zeros((depth, width), np.uint32)
        self._salts = [(seed * 1_000_003 + row + 1) * 0x5851F42D for row in range(depth)]
        self.total = 0

    @property
    def nbytes(self) -> int:
        return self.table.nbytes

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        """(depth, len(keys)) counter of each key in each row (salts apart from the owner
        hash, so one server's keys spread over every counter)."""
        mask = np.uint64(self.width - 1)
        return np.stack([(mix64(keys, salt) & mask).astype(np.int64) for salt in self._salts])

    def add(self, keys: np.ndarray) -> np.ndarray:
        """Count one sighting of each of ``keys`` (distinct); their estimates after it."""
        if len(keys) == 0:
            return np.zeros(0, np.int64)
        slots = self._slots(keys)
        new = np.minimum(self.estimate_slots(slots) + 1, np.iinfo(np.uint32).max
                         ).astype(np.uint32)
        for row in range(self.depth):
            np.maximum.at(self.table[row], slots[row], new)
        self.total += len(keys)
        return new.astype(np.int64)

    def estimate(self, keys: np.ndarray) -> np.ndarray:
        if len(keys) == 0:
            return np.zeros(0, np.int64)
        return self.estimate_slots(self._slots(keys))

    def estimate_slots(self, slots: np.ndarray) -> np.ndarray:
        return self.table[np.arange(self.depth)[:, None], slots].min(0).astype(np.int64)

    def error_bound(self) -> tuple[float, float]:
        """(overcount, probability): an estimate exceeds its key's true count by more than
        ``overcount`` with at most this probability."""
        return math.e / self.width * self.total, math.exp(-self.depth)

    def state(self) -> np.ndarray:
        return self.table

    def merge(self, table: np.ndarray, total: int = 0) -> None:
        """Add another sketch's counters (the same shape and seed); an empty sketch adopts
        them as they are."""
        if table.shape != self.table.shape:
            raise ValueError(f"sketch of shape {table.shape} cannot merge into {self.table.shape}")
        if self.total == 0 and not self.table.any():
            self.table = np.array(table, np.uint32)  # a copy: never alias the argument
        else:
            cur = self.table.astype(np.uint64) + table
            self.table = np.minimum(cur, np.iinfo(np.uint32).max).astype(np.uint32)
        self.total += int(total)
