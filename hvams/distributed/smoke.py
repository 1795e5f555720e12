"""Role smoke job: proves the split, both Horovod sets and mpi4py traffic.

Each rank prints one JSON line (prefix ``HVAMS-SMOKE``) with its role, the
results of a server-set and a worker-set allreduce, and of an ``Alltoallv``
among all ranks done while Horovod's background thread is running.
"""
from __future__ import annotations

import json

import numpy as np

from .reports import write_report
from .topology import build_topology, finish


def run_smoke(num_servers: int | None = None, placement: str = "block") -> dict:
    """Run the smoke checks on this rank and return its report."""
    import horovod.torch as hvd
    import torch
    from mpi4py import MPI

    topo = build_topology(num_servers, placement)
    # Servers add (rank + 1), workers add 10 * (rank + 1): the two sums differ,
    # and each tells exactly which ranks took part in which set.
    value = float(topo.rank + 1) * (1.0 if topo.is_server else 10.0)
    total = hvd.allreduce(torch.tensor([value], dtype=torch.float64), op=hvd.Sum,
                          process_set=topo.role_set, name="smoke.role_sum")
    # Alltoallv: rank r sends (r + 1) int64 values to each peer p, each equal
    # to r * 1000 + p. Variable counts exercise the v in Alltoallv.
    size, rank = topo.size, topo.rank
    send = np.concatenate([np.full(rank + 1, rank * 1000 + p, dtype=np.int64) for p in range(size)])
    scounts = np.full(size, rank + 1, dtype=np.int64)
    rcounts = np.arange(1, size + 1, dtype=np.int64)
    recv = np.empty(int(rcounts.sum()), dtype=np.int64)
    sdispl = np.concatenate([[0], np.cumsum(scounts)[:-1]])
    rdispl = np.concatenate([[0], np.cumsum(rcounts)[:-1]])
    topo.world.Alltoallv([send, scounts, sdispl, MPI.INT64_T], [recv, rcounts, rdispl, MPI.INT64_T])
    expected = np.concatenate([np.full(r + 1, r * 1000 + rank, dtype=np.int64) for r in range(size)])
    report = {
        "rank": rank, "size": size, "role": topo.role, "role_rank": topo.role_rank,
        "node": topo.node, "servers": topo.server_ranks, "workers": topo.worker_ranks,
        "role_sum": float(total.item()), "alltoallv_ok": bool(np.array_equal(recv, expected)),
        "thread_level": topo.thread_level, "thread_multiple": topo.thread_level == MPI.THREAD_MULTIPLE,
        "hvd_size": hvd.size(), "hvd_rank": hvd.rank(),
        "local_rank": topo.local_rank, "local_size": topo.local_size,
        "machine_size": topo.machine_size,
    }
    write_report("smoke", rank, report)
    print("HVAMS-SMOKE " + json.dumps(report, sort_keys=True), flush=True)
    finish(topo)
    return report


if __name__ == "__main__":
    import sys

    run_smoke(int(sys.argv[1]) if len(sys.argv) > 1 else None,
              sys.argv[2] if len(sys.argv) > 2 else "block")
