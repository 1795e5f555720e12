"""Bytes sent per category, counted from the buffers actually handed to MPI."""
from __future__ import annotations

from collections import Counter

CATEGORIES = ("control", "id_keys", "id_rows", "id_grads", "image_keys", "image_payload",
              "image_grads", "allreduce_servers", "allreduce_workers", "eval")


class ByteCounter:
    """Per-category byte totals of this rank."""

    def __init__(self):
        self.bytes = Counter()
        self.watchdog = None  # beats at every exchange: progress proof for fail-fast

    def beat(self, where: str) -> None:
        if self.watchdog is not None:
            self.watchdog.beat(where)

    def running(self, where: str) -> None:
        """A beat after an exchange that every peer completed (start-up is over)."""
        if self.watchdog is not None:
            self.watchdog.running(where)

    def add(self, category: str, nbytes: int) -> None:
        self.bytes[category] += int(nbytes)

    def snapshot(self) -> dict[str, int]:
        return dict(self.bytes)
