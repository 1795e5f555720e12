"""What the row policies did each training day: one world collective at every day's end.

Every rank adds its shards' counters (workers add zeros) in one Allreduce, so
the first worker knows the totals over all servers: it prints the day's line,
writes the TensorBoard points and keeps the record for ``summary.json``
(``days``): per table, the rows admitted, keys filtered (not yet admitted),
rows evicted by TTL and by capacity during the day, and the live rows at its end.
"""
from __future__ import annotations

import numpy as np

COUNTS = ("admitted", "filtered", "evicted_ttl", "evicted_capacity", "live")


class DayLog:
    def __init__(self, job):
        self.job, self.tables = job, list(job.schema.tables)
        self.last = np.zeros((len(self.tables), len(COUNTS)), np.int64)
        self.days: list[dict] = []

    def end_day(self, step: int, shards: dict | None = None, day: str = "") -> dict | None:
        """Join the day-end reduction (servers pass their shards, workers the day's name);
        the first worker's record."""
        from mpi4py import MPI

        mine = np.zeros_like(self.last)
        for t, table in enumerate(self.tables):
            if shards and table in shards:
                counts = shards[table].live_counts()
                mine[t] = [counts[c] for c in COUNTS]
        total = np.empty_like(mine)
        self.job.topo.world.Allreduce(mine, total, op=MPI.SUM)
        delta = total - self.last
        delta[:, -1] = total[:, -1]  # live rows: a level, not a flow
        self.last = total
        record = {"day": day, "step": step,
                  "tables": {table: dict(zip(COUNTS, map(int, delta[t])))
                             for t, table in enumerate(self.tables)}}
        self.days.append(record)
        topo = self.job.topo
        if topo.is_worker and topo.role_rank == 0:
            print(format_day(record), flush=True)
            self.job.tb.day(record, step)
            return record
        return None


def format_day(record: dict) -> str:
    parts = []
    for table, c in record["tables"].items():
        changes = [f"+{c['admitted']:,}"]
        if c["filtered"]:
            changes.append(f"{c['filtered']:,} filtered")
        if c["evicted_ttl"]:
            changes.append(f"-{c['evicted_ttl']:,} ttl")
        if c["evicted_capacity"]:
            changes.append(f"-{c['evicted_capacity']:,} capacity")
        parts.append(f"{table} {c['live']:,} ({', '.join(changes)})")
    return (f"hvams: {record['day']} ended at step {record['step']}: live rows "
            + "; ".join(parts))
