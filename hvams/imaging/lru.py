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
