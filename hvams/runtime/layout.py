"""Which ranks share a GPU, from every rank's device: each rank's memory share and the
path each role's gradients take.

NCCL refuses a communicator with two ranks on one GPU ("Duplicate GPU detected"), and
Horovod built with NCCL sends CUDA tensors nowhere else. The paper runs servers and
workers on the same machines, so ranks sharing a GPU are the normal layout: a role with
two ranks on one GPU sums its gradients through host memory instead (``distributed.
gradients``). Every rank allgathers the same table over the world, so every rank reaches
the same verdict and a refusal stops them all alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .device import DeviceError


@dataclass(frozen=True)
class Placed:
    node: str
    role: str
    device: str     # "cpu" or "cuda:i"


def ranks_on_gpu(table: list[Placed], rank: int) -> int:
    """Ranks of any role on rank ``rank``'s GPU, itself included (they split its memory);
    1 for a rank on the CPU."""
    me = table[rank]
    if not me.device.startswith("cuda"):
        return 1
    return sum(1 for p in table if (p.node, p.device) == (me.node, me.device))


def roles_sharing_a_gpu(table: list[Placed]) -> set[str]:
    """Roles with two ranks on one GPU of one node: NCCL cannot sum among them."""
    seen: set[tuple[str, str, str]] = set()
    out: set[str] = set()
    for p in table:
        if not p.device.startswith("cuda"):
            continue
        k = (p.role, p.node, p.device)
        if k in seen:
            out.add(p.role)
        seen.add(k)
    return out


def gradient_paths(table: list[Placed], requested: str) -> dict[str, str]:
    """``device`` or ``host`` for each role under config key ``allreduce_path``; DeviceError
    when ``device`` is asked for where a role shares a GPU."""
    shared = roles_sharing_a_gpu(table)
    if requested == "device" and shared:
        role = sorted(shared)[0]
        raise DeviceError(
            f"config key 'allreduce_path': 'device' (NCCL) cannot sum the {role}s' gradients: "
            f"two {role}s are on one GPU, which NCCL refuses; use auto or host, or give each "
            f"{role} its own GPU")
    roles = {p.role for p in table}
    return {r: "host" if requested == "host" or (requested == "auto" and r in shared) else "device"
            for r in roles}


def place(world, node: str, role: str, device: torch.device) -> list[Placed]:
    """Every rank's (node, role, device), the same list on every rank."""
    return [Placed(*x) for x in world.allgather((node, role, str(device)))]
