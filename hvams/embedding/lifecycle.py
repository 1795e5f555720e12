"""Which ID rows a shard keeps: admission by frequency, and eviction by age and capacity.

``RowPolicy`` is one table's rules (``TrainConfig`` holds them per run with
per-table overrides: ``policy_for``):

* **admission** (``min_count`` K > 1): a key gets a stored row only once it
  has been requested in K training steps. Its sightings are counted in a
  count-min sketch of fixed size; until then it is served its deterministic
  initial row and its gradients are dropped. A sketch never undercounts, so
  a key with K sightings is always admitted; an overcount can admit a key
  early (the rate is measured in ``tests/test_lifecycle.py``).
* **time to live** (``ttl_days`` D): at the end of each training day, rows
  not requested in the last D training days are evicted.
* **capacity** (``max_rows`` N): a shard that would pass N rows evicts the
  least recently (``lru``) or least frequently (``lfu``) used rows first,
  never one the current step asked for; a step asking for more distinct new
  and present keys than N fit is an error (``CapacityError``).

An evicted row goes with its optimizer slots; a key that comes back starts
again from its initial row, and is admitted at once (its sketch count stays).
"""
from __future__ import annotations

from dataclasses import dataclass

EVICTION_ORDERS = ("lru", "lfu")


class CapacityError(RuntimeError):
    """A step needs more rows on one shard than its capacity."""

    user_error = True  # a setting to change, reported without a traceback


@dataclass(frozen=True)
class RowPolicy:
    min_count: int = 0          # sightings before a key gets a row (0 or 1: at once)
    ttl_days: int = 0           # evict rows unseen for this many training days (0: never)
    max_rows: int = 0           # rows a shard may hold (0: no bound)
    evict: str = "lru"          # lru | lfu: which rows a full shard drops first
    sketch_width: int = 1 << 20
    sketch_depth: int = 4

    @property
    def admits_all(self) -> bool:
        return self.min_count <= 1

    @property
    def tracks_rows(self) -> bool:
        """Whether rows carry their last use (for TTL and capacity)."""
        return self.ttl_days > 0 or self.max_rows > 0


def policy_for(cfg, table: str) -> RowPolicy:
    """Table ``table``'s rules under ``cfg`` (its per-table overrides first)."""
    return RowPolicy(
        min_count=cfg.id_admission_by_table.get(table, cfg.id_admission_min_count),
        ttl_days=cfg.id_ttl_days,
        max_rows=cfg.max_rows_by_table.get(table, cfg.max_rows_per_shard),
        evict=cfg.eviction, sketch_width=cfg.admission_sketch_width,
        sketch_depth=cfg.admission_sketch_depth)
