"""A bounded LRU cache of per-key tensors with hit/miss counters."""
from __future__ import annotations

from collections import OrderedDict


class LRU:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._d: OrderedDict = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key):
        if key in self._d:
            self._d.move_to_end(key)
            self.hits += 1
            return self._d[key]
        self.misses += 1
        return None

    def gather(self, keys, rows, out) -> list:
        """Copy the cached values of ``keys[rows]`` into ``out`` (one copy for all hits).

        Returns the rows that missed, in order; the rows that hit are filled.
        """
        import torch

        misses, hit_rows, hits = [], [], []
        for i in rows:
            hit = self.get(int(keys[i]))
            if hit is None:
                misses.append(i)
            else:
                hit_rows.append(i)
                hits.append(hit)
        if hits:
            out.index_copy_(0, torch.as_tensor(hit_rows), torch.stack(hits))
        return misses

    def put(self, key, value) -> None:
        if self.capacity <= 0:
            return
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.capacity:
            self._d.popitem(last=False)

    def __len__(self) -> int:
        return len(self._d)

    def stats(self) -> dict:
        total = self.hits + self.misses
        return {"size": len(self._d), "capacity": self.capacity, "hits": self.hits,
                "misses": self.misses, "hit_rate": self.hits / total if total else 0.0}
