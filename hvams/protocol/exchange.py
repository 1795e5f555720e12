"""Typed all-to-all exchanges on numpy buffers (no pickling on the hot path)."""
from __future__ import annotations

import numpy as np
from mpi4py import MPI

from ..distributed.preemption import STOP
from .accounting import ByteCounter
from .messages import STOP_COLUMN
from .waiting import WaitPolicy

_MPI_TYPES = {np.dtype(np.int64): MPI.INT64_T, np.dtype(np.float32): MPI.FLOAT,
              np.dtype(np.uint8): MPI.UINT8_T, np.dtype(np.float64): MPI.DOUBLE,
              np.dtype(np.float16): MPI.UINT16_T}  # fp16: moved as bits, never reduced


def _displs(counts: np.ndarray) -> np.ndarray:
    d = np.zeros(len(counts), np.int64)
    np.cumsum(counts[:-1], out=d[1:])
    return d


class Exchange:
    """All-to-all of per-destination numpy parts over one communicator.

    Nonblocking collectives completed by ``wait`` (``protocol.waiting``), so a
    waiting rank does not hold a core that another rank on its host needs.
    """

    def __init__(self, comm, counter: ByteCounter, wait: WaitPolicy | None = None):
        self.comm, self.counter = comm, counter
        self.wait = wait or WaitPolicy()
        self.size, self.rank = comm.Get_size(), comm.Get_rank()

    def headers(self, rows: np.ndarray) -> np.ndarray:
        """Alltoall of one int64 header row per destination: (size, H) -> (size, H)."""
        rows = np.array(rows, np.int64)
        rows[:, STOP_COLUMN] = STOP.signum  # every rank learns every rank's checkpoint signal
        out = np.empty_like(rows)
        self.counter.beat("the step header exchange")
        self.wait.wait(self.comm.Ialltoall(rows, out))
        step = int(out[:, 1].max())
        self.counter.running(f"step {step}")
        STOP.observe(out[:, STOP_COLUMN], step)
        self.counter.add("control", rows.nbytes - rows[self.rank].nbytes)
        return out

    def alltoallv(self, parts: list[np.ndarray], recv_counts: np.ndarray, dtype) -> list[np.ndarray]:
        """Send ``parts[d]`` (flattened) to rank d; receive ``recv_counts[s]`` elements from rank s.

        Returns one flat array per source. Callers count the bytes of each
        segment under its own category while they pack the parts.
        """
        dtype = np.dtype(dtype)
        flat = [np.ascontiguousarray(p, dtype).reshape(-1) for p in parts]
        send_counts = np.array([len(p) for p in flat], np.int64)
        send = np.concatenate(flat) if flat else np.zeros(0, dtype)
        recv_counts = np.asarray(recv_counts, np.int64)
        recv = np.empty(int(recv_counts.sum()), dtype)
        mpi_t = _MPI_TYPES[dtype]
        self.counter.beat("an Alltoallv")
        self.wait.wait(self.comm.Ialltoallv([send, (send_counts, _displs(send_counts)), mpi_t],
                                            [recv, (recv_counts, _displs(recv_counts)), mpi_t]))
        out, start = [], 0
        for c in recv_counts:
            out.append(recv[start:start + c])
            start += c
        return out
