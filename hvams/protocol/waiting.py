"""How a rank waits for its collectives: spin on the request, then nap between tests.

A rank blocked in an MPI collective busy-polls. Where a host has more ranks than
cores (the servers and workers of a small cluster, or every test and ``--local``
run), the waiting ranks then take the cores that the ranks with work need: on 2
cores with 2 servers + 4 workers, idonly on the ``bench`` world ran 27-28k
samples/s with blocking collectives and 34-40k with this wait
(docs/benchmarks.md, section 6). With a core per rank the wait spins for a
millisecond first, so a collective that completes quickly costs what MPI's
own does.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class WaitPolicy:
    spin_s: float = 1e-3   # test continuously this long before napping
    nap_s: float = 1e-4    # sleep between tests after that

    def wait(self, request) -> None:
        """Until the nonblocking MPI ``request`` completes."""
        if request.Test():
            return
        end = time.perf_counter() + self.spin_s
        while time.perf_counter() < end:
            if request.Test():
                return
        while not request.Test():
            time.sleep(self.nap_s)


def host_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def policy_for(ranks_on_machine: int, cores: int | None = None) -> WaitPolicy:
    """Nap at once when the ranks sharing this machine's cores outnumber them (the fake
    hosts of cluster/netns share one machine); spin a millisecond first otherwise."""
    cores = host_cores() if cores is None else cores
    return WaitPolicy(spin_s=0.0 if ranks_on_machine > cores else 1e-3)
