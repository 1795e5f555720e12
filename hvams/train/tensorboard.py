"""TensorBoard scalars (``--tensorboard DIR``), written by the first worker.

Every ``log_every`` training steps all ranks join one small Allreduce of
[loss sum, samples, bytes per category], so the first worker can write the
*global* loss, samples/s and bytes per step. The metrics of each evaluation
(AUC, GAUC, new-ad AUC, logloss) are written as they are computed.
"""
from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

from ..protocol.accounting import CATEGORIES


class TensorBoardLog:
    def __init__(self, topo, logdir: str | None, every: int, counter):
        self.topo, self.every, self.counter = topo, max(1, every), counter
        self.enabled = bool(logdir)
        self.writer = None
        if self.enabled and topo.is_worker and topo.role_rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(logdir)
        self._last = np.zeros(2 + len(CATEGORIES))
        self._t = time.perf_counter()
        self._loss = 0.0
        self._samples = 0

    def add_step(self, loss_sum: float, samples: int) -> None:
        self._loss += loss_sum
        self._samples += samples

    def after_step(self, step: int) -> None:
        """Called by every rank after training step ``step`` (0-based)."""
        if not self.enabled or (step + 1) % self.every:
            return
        b = self.counter.bytes
        mine = np.array([self._loss, self._samples] + [b.get(c, 0) for c in CATEGORIES], np.float64)
        total = np.empty_like(mine)
        self.topo.world.Allreduce(mine, total, op=MPI.SUM)
        delta = total - self._last
        self._last = total
        now = time.perf_counter()
        if self.writer is not None:
            gstep = step + 1
            self.writer.add_scalar("train/loss", delta[0] / max(delta[1], 1), gstep)
            self.writer.add_scalar("train/samples_per_s", delta[1] / max(now - self._t, 1e-9), gstep)
            for c, v in zip(CATEGORIES, delta[2:]):
                self.writer.add_scalar(f"bytes_per_step/{c}", v / self.every, gstep)
        self._t = now

    def metrics(self, record: dict, step: int) -> None:
        if self.writer is None:
            return
        for key in ("auc", "gauc", "logloss", "new_ad_auc", "oracle_auc"):
            value = record.get(key)
            if value is not None and value == value:
                self.writer.add_scalar(f"test/{key}", value, step)
        self.writer.flush()

    def day(self, record: dict, step: int) -> None:
        """A day's row counts per table (``hvams.train.days``)."""
        if self.writer is None:
            return
        for table, counts in record["tables"].items():
            for name, value in counts.items():
                self.writer.add_scalar(f"rows/{table}/{name}", value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
