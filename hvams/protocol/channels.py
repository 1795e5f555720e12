"""Channel specs: what both sides of the step protocol agree on per channel.

Every step moves keys worker->server, rows server->worker and (when
training) gradients worker->server, for each channel in a fixed order. An
ID embedding table is one channel; the image channel plugs into the same
flow (its rows are embeddings, pixels or features, as the strategy says).
The server-side channels that answer them are in ``hvams.server``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..data.schema import IMAGE_CHANNEL
from ..keys import name_salt, owner


@dataclass
class ChannelSpec:
    """The worker's view of a channel: its width, dtype and key router."""

    name: str
    dim: int
    dtype: np.dtype
    route: Callable[[np.ndarray, int], np.ndarray]   # keys, num_servers -> server index
    kind: str = "id"                                 # 'id' or 'image' (byte categories)
    trainable: bool = True                           # gradients flow back
    wire: np.dtype | None = None                     # dtype on the wire (protocol.wire); default dtype

    @property
    def wire_dtype(self) -> np.dtype:
        return np.dtype(self.dtype if self.wire is None else self.wire)

    @property
    def key_category(self) -> str:
        return "image_keys" if self.kind == "image" else "id_keys"

    @property
    def row_category(self) -> str:
        return "image_payload" if self.kind == "image" else "id_rows"

    @property
    def grad_category(self) -> str:
        return "image_grads" if self.kind == "image" else "id_grads"


def dtype_groups(specs: list[ChannelSpec]) -> list[list[int]]:
    """Channel indices grouped by wire and host dtype, in channel order: one buffer each."""
    groups: dict = {}
    for c, spec in enumerate(specs):
        groups.setdefault((spec.wire_dtype.str, np.dtype(spec.dtype).str), []).append(c)
    return list(groups.values())


def id_route(table: str):
    salt = name_salt(table)
    return lambda keys, num_servers: owner(keys, num_servers, salt)


def id_channel(table: str, dim: int, dtype=np.float32, wire=None) -> ChannelSpec:
    return ChannelSpec(table, dim, np.dtype(dtype), id_route(table), wire=wire)


def image_channel(num_partitions: int, dim: int, dtype=np.float32, trainable: bool = True,
                  wire=None) -> ChannelSpec:
    """The image channel: keys go to the server owning their store partition."""
    from ..store.partition import server_of_image

    return ChannelSpec(IMAGE_CHANNEL, dim, np.dtype(dtype),
                       lambda keys, S: server_of_image(keys, num_partitions, S), "image", trainable,
                       wire)
