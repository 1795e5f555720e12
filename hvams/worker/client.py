"""The worker's side of the step protocol: pull rows, push gradients."""
from __future__ import annotations

import numpy as np

from ..distributed.topology import Topology
from ..protocol.accounting import ByteCounter
from ..protocol.exchange import Exchange
from ..protocol.waiting import policy_for
from ..protocol.messages import HEADER_FIXED, Phase, header_width
from ..protocol.wire import from_wire, grad_scale, to_wire
from ..protocol.channels import ChannelSpec, dtype_groups


class StepClient:
    """Routes a batch's unique keys to their servers and reassembles the rows."""

    def __init__(self, topo: Topology, channels: list[ChannelSpec], counter: ByteCounter):
        self.topo, self.channels, self.counter = topo, channels, counter
        self.ex = Exchange(topo.world, counter, policy_for(topo.machine_size))
        self.width = header_width(len(channels))
        self.S = topo.num_servers
        self._pending = None

    def command(self, phase: Phase, step: int, arg: int = 0) -> None:
        """A step without payload (checkpoint, day end, stop); ``arg`` in the samples column
        (STOP: 1 when the run stopped early on a checkpoint signal)."""
        hdr = np.zeros((self.topo.size, self.width), np.int64)
        hdr[:, 0], hdr[:, 1], hdr[:, 2] = int(phase), step, arg
        self.ex.headers(hdr)

    def pull(self, phase: Phase, step: int, n: int, keys: list[np.ndarray]
             ) -> tuple[list[np.ndarray], int]:
        """Host rows for ``keys[c]`` (unique keys of channel c) and the global batch size."""
        orders, counts = [], np.zeros((self.S, len(self.channels)), np.int64)
        for c, (spec, k) in enumerate(zip(self.channels, keys)):
            owner = spec.route(k, self.S)
            order = np.argsort(owner, kind="stable")
            orders.append(order)
            counts[:, c] = np.bincount(owner, minlength=self.S)
        hdr = np.zeros((self.topo.size, self.width), np.int64)
        hdr[:, 0], hdr[:, 1], hdr[:, 2] = int(phase), step, n
        hdr[self.topo.server_ranks, HEADER_FIXED:] = counts
        got = self.ex.headers(hdr)
        global_n = int(got[self.topo.worker_ranks, 2].sum())
        # Per-server key segments, channel by channel.
        starts = np.zeros((self.S + 1, len(self.channels)), np.int64)
        np.cumsum(counts, axis=0, out=starts[1:])
        sorted_keys = [k[o] for k, o in zip(keys, orders)]
        parts = [np.zeros(0, np.int64)] * self.topo.size
        for s, rank in enumerate(self.topo.server_ranks):
            segs = [sorted_keys[c][starts[s, c]:starts[s + 1, c]] for c in range(len(self.channels))]
            for spec, seg in zip(self.channels, segs):
                self.counter.add(spec.key_category, seg.nbytes)
            parts[rank] = np.concatenate(segs)
        self.ex.alltoallv(parts, np.zeros(self.topo.size, np.int64), np.int64)
        rows: list = [None] * len(self.channels)
        for group in dtype_groups(self.channels):
            widths = np.array([self.channels[c].dim for c in group], np.int64)
            recv = np.zeros(self.topo.size, np.int64)
            recv[self.topo.server_ranks] = counts[:, group] @ widths
            wire = self.channels[group[0]].wire_dtype
            flat = self.ex.alltoallv([np.zeros(0, wire)] * self.topo.size, recv, wire)
            per_channel = {c: [] for c in group}
            for s, rank in enumerate(self.topo.server_ranks):
                off = 0
                for c, w in zip(group, widths):
                    k = counts[s, c]
                    per_channel[c].append(flat[rank][off:off + k * w].reshape(k, w))
                    off += k * w
            for c in group:
                host = self.channels[c].dtype
                sorted_rows = from_wire(np.concatenate(per_channel[c]), host) if per_channel[c] \
                    else np.zeros((0, self.channels[c].dim), host)
                out = np.empty_like(sorted_rows)
                out[orders[c]] = sorted_rows
                rows[c] = out
        self._pending = (orders, counts, starts, global_n)
        return rows, global_n

    def push(self, grads: list[np.ndarray | None]) -> None:
        """Host gradients of the rows of the last pull (trainable channels), same order."""
        orders, counts, starts, global_n = self._pending
        trainable = [c for c, spec in enumerate(self.channels) if spec.trainable]
        first = self.channels[trainable[0]] if trainable else None
        dtype = first.wire_dtype if first else np.dtype(np.float32)
        scale = grad_scale(dtype, first.dtype, global_n) if first else 1.0
        parts = [np.zeros(0, dtype)] * self.topo.size
        sorted_grads = {}
        for c in trainable:
            spec, g = self.channels[c], grads[c]
            g = np.zeros((len(orders[c]), spec.dim), spec.dtype) if g is None else \
                np.asarray(g, spec.dtype)
            sorted_grads[c] = to_wire(g[orders[c]], dtype, "gradients", spec.name, scale)
        for s, rank in enumerate(self.topo.server_ranks):
            segs = []
            for c in trainable:
                seg = sorted_grads[c][starts[s, c]:starts[s + 1, c]]
                self.counter.add(self.channels[c].grad_category, seg.nbytes)
                segs.append(seg.reshape(-1))
            parts[rank] = np.concatenate(segs) if segs else np.zeros(0, dtype)
        self.ex.alltoallv(parts, np.zeros(self.topo.size, np.int64), dtype)
        self._pending = None
