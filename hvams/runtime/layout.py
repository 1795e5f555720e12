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
    device: str     # "cpu", or "cuda:" and the GPU's UUID (its index differs between ranks
                    # that see different CUDA_VISIBLE_DEVICES, as under Slurm's GPU binding)


def ranks_on_gpu(table: list[Placed], rank: int) -> int:
    """Ranks of any role on rank ``rank``'s GPU, itself included (they split its memory);
    1 for a rank on the CPU."""
    me = table[rank]
    if not me.device.startswith("cuda"):
        return 1
    return sum(1 for p in table if (p.node, p.device) == (me.node, me.device))


def roles_sharing_a_gpu(table: list[Placed]) -> set[str]:
    """Roles NCCL cannot sum among: two ranks on one GPU of one node, or CUDA and CPU ranks
    in one role (one collective cannot take both kinds of tensor)."""
    seen: set[tuple[str, str, str]] = set()
    out: set[str] = set()
    for p in table:
        if not p.device.startswith("cuda"):
            continue
        k = (p.role, p.node, p.device)
        if k in seen:
            out.add(p.role)
        seen.add(k)
    for role in {p.role for p in table}:
        kinds = {p.device.startswith("cuda") for p in table if p.role == role}
        if len(kinds) > 1:
            out.add(role)
    return out


def gradient_paths(table: list[Placed], requested: str) -> dict[str, str]:
    """``device`` or ``host`` for each role under config key ``allreduce_path``; DeviceError
    when ``device`` is asked for where a role shares a GPU."""
    shared = roles_sharing_a_gpu(table)
    if requested == "device" and shared:
        role = sorted(shared)[0]
        raise DeviceError(
            f"config key 'allreduce_path': 'device' (NCCL) cannot sum the {role}s' gradients: "
            f"two {role}s are on one GPU, which NCCL refuses, or some are on the CPU; use auto "
            f"or host, or give each {role} its own GPU")
    roles = {p.role for p in table}
    return {r: "host" if requested == "host" or (requested == "auto" and r in shared) else "device"
            for r in roles}


def device_id(device: torch.device) -> str:
    """"cpu", or "cuda:" and the GPU's UUID: the same for every rank on that GPU."""
    if device.type != "cuda":
        return str(device)
    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    return f"cuda:{uuid if uuid is not None else device.index}"


def place(world, node: str, role: str, device: torch.device) -> list[Placed]:
    """Every rank's (node, role, device), the same list on every rank."""
    return [Placed(*x) for x in world.allgather((node, role, device_id(device)))]
