"""Device selection: ``auto | cpu | cuda`` and the GPU each rank takes.

A rank takes GPU ``local_rank % device_count``. The local rank comes from an
MPI shared-memory split (``COMM_TYPE_SHARED``), so mpirun, horovodrun and srun
all work without reading any one launcher's environment variables.
"""
from __future__ import annotations

import os

import torch

from ..config import ConfigError, choices

DEVICES = choices("device")


class DeviceError(ConfigError):
    """A device asked for that this machine cannot give."""


def local_rank(comm=None) -> tuple[int, int]:
    """(rank among the ranks of this node, ranks on this node).

    Ranks sharing memory form a node. ``HVAMS_NODE`` (fake nodes in tests and
    in the fake-host cluster, whose namespaces share one kernel) splits them
    further by name.
    """
    from mpi4py import MPI

    comm = comm or MPI.COMM_WORLD
    shared = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    names = shared.allgather(os.environ.get("HVAMS_NODE", ""))
    mine = names[shared.Get_rank()]
    color = sorted(set(names)).index(mine)
    node = shared.Split(color=color, key=shared.Get_rank())
    out = node.Get_rank(), node.Get_size()
    node.Free()
    shared.Free()
    return out


def gpu_index(rank_on_node: int, device_count: int) -> int:
    """The GPU a rank takes: ranks on a node share GPUs round-robin."""
    if device_count < 1:
        raise DeviceError("config key 'device': no CUDA GPU is visible on this machine")
    return rank_on_node % device_count


def resolve_device(requested: str, rank_on_node: int = 0, key: str = "device",
                   device_count: int | None = None) -> torch.device:
    """The torch device for ``requested`` (``auto``: CUDA where a GPU is visible)."""
    count = torch.cuda.device_count() if device_count is None else device_count
    if requested not in DEVICES:
        raise DeviceError(f"config key {key!r}: must be one of {DEVICES} (got {requested!r})")
    if requested == "cpu" or (requested == "auto" and count == 0):
        return torch.device("cpu")
    if count == 0:
        raise DeviceError(
            f"config key {key!r}: 'cuda' was asked for, but this machine has no usable CUDA GPU "
            f"(torch {torch.__version__}, torch.cuda.is_available() = {torch.cuda.is_available()}); "
            f"use --device cpu or auto")
    return torch.device("cuda", gpu_index(rank_on_node, count))


def describe(device: torch.device) -> str:
    """'cpu' or 'cuda:0 (NVIDIA H100 80GB HBM3, 79.1 GiB)'."""
    if device.type != "cuda":
        return str(device)
    props = torch.cuda.get_device_properties(device)
    return f"{device} ({props.name}, {props.total_memory / 2**30:.1f} GiB)"
