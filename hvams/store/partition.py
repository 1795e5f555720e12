"""Which partition holds an image, and which server owns a partition.

Image id ``k`` lives in partition ``p = mix64(k) % P``; server ``s`` of ``S``
opens the partitions with ``p % S == s``. P is fixed when the store is built
(default 64) and S is chosen per job, so one store serves any S <= P, each
server owning P // S or P // S + 1 partitions.
"""
from __future__ import annotations

import numpy as np

from ..keys import owner

DEFAULT_PARTITIONS = 64
IMAGE_SALT = 0x1A6E  # fixed forever: changing it would re-home every stored image


def partition_of(key_ids, num_partitions: int) -> np.ndarray:
    """Partition index of each image id."""
    return owner(key_ids, num_partitions, IMAGE_SALT)


def server_of_partition(partitions, num_servers: int) -> np.ndarray:
    return np.asarray(partitions, dtype=np.int64) % num_servers


def server_of_image(key_ids, num_partitions: int, num_servers: int) -> np.ndarray:
    """Server that owns each image id: ``partition_of(k) % S``."""
    return server_of_partition(partition_of(key_ids, num_partitions), num_servers)


def partitions_of_server(server: int, num_servers: int, num_partitions: int) -> list[int]:
    """The partitions server ``server`` of ``num_servers`` opens."""
    if not 0 <= server < num_servers:
        raise ValueError(f"server {server} is outside [0, {num_servers})")
    if num_servers > num_partitions:
        raise ValueError(f"{num_servers} servers but the store has only {num_partitions} "
                         "partitions: some servers would own no image; re-ingest with more")
    return [p for p in range(num_partitions) if p % num_servers == server]


def partition_file(p: int) -> str:
    return f"part-{p:03d}.lmdb"
