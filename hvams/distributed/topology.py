"""Assign each MPI rank a role (server or worker) and build its communicators.

An hvams job is one MPI world split in two: S servers (ID embedding shards,
image store partitions, the shared image model) and W = world - S workers
(data reading, the dense CTR model). Servers talk to each other through
``server_comm`` and Horovod's server process set; workers likewise. All
server<->worker traffic goes through ``world`` (Alltoallv).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

PLACEMENTS = ("block", "spread")
SERVER, WORKER = "server", "worker"


class TopologyError(ValueError):
    """A server count or placement that cannot form a valid job."""


def node_name() -> str:
    """This rank's node name; ``HVAMS_NODE`` overrides it (tests fake nodes)."""
    from mpi4py import MPI

    return os.environ.get("HVAMS_NODE") or MPI.Get_processor_name()


def kernel_id() -> str:
    """The running kernel's boot id: ranks with the same one share a machine's cores, also
    when they are different nodes (containers, the network namespaces of cluster/netns)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:  # not Linux: one machine per node
        return node_name()


def choose_servers(nodes: list[str], num_servers: int, placement: str) -> list[int]:
    """Ranks that become servers, given each rank's node name.

    ``block``: ranks 0..S-1. ``spread``: round-robin over nodes (in order of
    their first rank), taking each node's lowest unused rank, so servers share
    machines with workers as in the paper.
    """
    world = len(nodes)
    if placement not in PLACEMENTS:
        raise TopologyError(f"unknown placement {placement!r}; choose one of {PLACEMENTS}")
    if num_servers < 1:
        raise TopologyError(f"--servers must be at least 1, got {num_servers}")
    if num_servers >= world:
        raise TopologyError(
            f"--servers {num_servers} leaves no worker in a world of {world} rank(s); "
            f"start at least {num_servers + 1} ranks or use fewer servers")
    if placement == "block":
        return list(range(num_servers))
    by_node: dict[str, list[int]] = {}
    for rank, name in enumerate(nodes):
        by_node.setdefault(name, []).append(rank)
    queues = list(by_node.values())
    chosen: list[int] = []
    depth = 0
    while len(chosen) < num_servers:
        for ranks in queues:
            if depth < len(ranks) and len(chosen) < num_servers:
                chosen.append(ranks[depth])
        depth += 1
    return sorted(chosen)


@dataclass
class Topology:
    """The role of this rank and the communicators of its job."""

    world: object                      # mpi4py.MPI.Comm
    rank: int
    size: int
    server_ranks: list[int]
    worker_ranks: list[int]
    role: str
    role_comm: object                  # servers among themselves, or workers
    role_rank: int                     # index among its role (server s / worker w)
    node: str
    server_set: object = None          # horovod ProcessSet
    worker_set: object = None
    thread_level: int = 0
    local_rank: int = 0                # among the ranks of this node (picks the GPU)
    local_size: int = 1
    nodes: list[str] = field(default_factory=list)  # every rank's node name
    machine_size: int = 1              # ranks sharing this rank's kernel, hence its cores
    gradient_path: str = "device"      # where this role sums gradients (runtime.layout)
    extra: dict = field(default_factory=dict)

    @property
    def is_server(self) -> bool:
        return self.role == SERVER

    @property
    def is_worker(self) -> bool:
        return self.role == WORKER

    @property
    def num_servers(self) -> int:
        return len(self.server_ranks)

    @property
    def num_workers(self) -> int:
        return len(self.worker_ranks)

    @property
    def role_set(self):
        """Horovod process set of this rank's role."""
        return self.server_set if self.is_server else self.worker_set

    def describe(self) -> str:
        return f"rank {self.rank}/{self.size} {self.role} {self.role_rank} on {self.node}"


def fail_all(world, message: str, code: int = 2) -> None:
    """Print one message (from rank 0) and exit non-zero on every rank.

    Every rank computed the same verdict from the same inputs, so no rank
    waits on another: nothing can hang.
    """
    if world.Get_rank() == 0:
        print(f"hvams: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def build_topology(num_servers: int | None = None, placement: str = "block",
                   init_horovod: bool = True) -> Topology:
    """Split MPI.COMM_WORLD into servers and workers and start Horovod once.

    ``num_servers`` defaults to ``$HVAMS_SERVERS`` (else 1). A bad topology
    exits every rank with status 2 and one message.
    """
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    if num_servers is None:
        num_servers = int(os.environ.get("HVAMS_SERVERS", "1"))
    nodes = world.allgather(node_name())
    kernels = world.allgather(kernel_id())
    try:
        servers = choose_servers(nodes, num_servers, placement)
    except TopologyError as exc:
        fail_all(world, str(exc))
    rank, size = world.Get_rank(), world.Get_size()
    server_set_ = set(servers)
    workers = [r for r in range(size) if r not in server_set_]
    role = SERVER if rank in server_set_ else WORKER
    role_comm = world.Split(color=0 if role == SERVER else 1, key=rank)
    from ..runtime.device import local_rank

    on_node, node_size = local_rank(world)
    topo = Topology(
        world=world, rank=rank, size=size, server_ranks=servers, worker_ranks=workers,
        role=role, role_comm=role_comm, role_rank=role_comm.Get_rank(), node=nodes[rank],
        thread_level=MPI.Query_thread(), local_rank=on_node, local_size=node_size,
        nodes=nodes, machine_size=kernels.count(kernels[rank]))
    if init_horovod:
        start_horovod(topo)
    return topo


def start_horovod(topo: Topology) -> None:
    """Horovod on the world, with a process set per role. A CUDA rank sets its device
    first (``Runtime.activate``): NCCL binds to the current GPU."""
    import horovod.torch as hvd

    topo.server_set = hvd.ProcessSet(topo.server_ranks)
    topo.worker_set = hvd.ProcessSet(topo.worker_ranks)
    hvd.init(comm=topo.world, process_sets=[topo.server_set, topo.worker_set])


def finish(topo: Topology | None = None) -> None:
    """World barrier, then Horovod shutdown: every hvams entry point ends here.

    Horovod stops on every rank as soon as one rank exits, so a rank still in
    a collective would fail; meeting here first makes exits safe.
    """
    from mpi4py import MPI

    MPI.COMM_WORLD.Barrier()
    if topo is not None and topo.server_set is not None:
        import horovod.torch as hvd

        hvd.shutdown()
