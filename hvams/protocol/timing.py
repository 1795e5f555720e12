"""Where a rank's time goes: seconds per stage (read, pull, compute, wait, ...).

One table per process (every rank is a process), so stages deep inside the
image channels need no plumbing. ``hvams bench speed`` reports the table per
role to explain a step's cost: compute, decode, communication and wait.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

_SECONDS: dict[str, float] = defaultdict(float)
_SYNC = None  # on CUDA, kernels run asynchronously: a sync at each boundary charges
              # a stage with its own kernels (``set_sync``; benchmarks turn it on)


def set_sync(fn) -> None:
    global _SYNC
    _SYNC = fn


@contextmanager
def stage(name: str):
    """Add the time spent in the ``with`` block to stage ``name``."""
    if _SYNC:
        _SYNC()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if _SYNC:
            _SYNC()
        _SECONDS[name] += time.perf_counter() - t0


def snapshot() -> dict[str, float]:
    return dict(_SECONDS)
