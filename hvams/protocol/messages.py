"""Step header: what every rank tells every other rank at the start of a step.

One int64 row per (source, destination)::

    [phase, step, n_samples, stop signal, key counts of channel 0 .. C-1]

``n_samples`` is the source worker's batch size (0 for servers and for
workers whose share is exhausted); the stop signal is the checkpoint signal the source got (0: none,
``distributed.preemption``), the same in every row it sends; the counts say how many keys of each
channel the source sends to that destination. Every receiver therefore knows
the global batch size and the exact buffer sizes before any payload moves.
"""
from __future__ import annotations

from enum import IntEnum

HEADER_FIXED = 4
STOP_COLUMN = 3


class Phase(IntEnum):
    TRAIN = 1          # keys -> rows -> gradients -> update
    EVAL = 2           # keys -> rows, no update, unknown keys not stored
    CHECKPOINT = 3     # servers write their shards
    STOP = 4           # leave the loop
    DAY_END = 5        # a training day is over: servers age their ID rows (TTL), all report


def header_width(num_channels: int) -> int:
    return HEADER_FIXED + num_channels
