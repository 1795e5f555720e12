"""The server loop: answer every worker's keys each step, apply summed gradients.

Servers are passive: each step begins with the header Alltoall, and the phase
the workers sent decides what follows (train / eval / checkpoint / day end / stop).
Keys of one channel from all workers are deduplicated, so a key requested by
several workers is served (and, for images, computed) once, and its
gradients are summed before the update.
"""
from __future__ import annotations

import time

import numpy as np

from ..protocol.accounting import ByteCounter
from ..protocol.exchange import Exchange
from ..protocol.waiting import policy_for
from ..protocol.messages import HEADER_FIXED, Phase, header_width
from ..protocol.timing import stage
from ..protocol.wire import from_wire, grad_scale, to_wire
from ..distributed.failfast import maybe_inject_fault
from ..distributed.topology import Topology
from ..protocol.channels import dtype_groups


def _split(flat: np.ndarray, counts: np.ndarray, widths: list[int]) -> list[np.ndarray]:
    out, start = [], 0
    for c, w in zip(counts, widths):
        out.append(flat[start:start + c * w])
        start += c * w
    return out


class ServerLoop:
    """One server rank's side of the step protocol."""

    def __init__(self, topo: Topology, channels: list, counter: ByteCounter, lr_scale_fn,
                 on_checkpoint=None, on_step=None, on_day_end=None):
        self.topo, self.channels, self.counter = topo, channels, counter
        self.ex = Exchange(topo.world, counter, policy_for(topo.machine_size))
        self.width = header_width(len(channels))
        self.lr_scale_fn = lr_scale_fn
        self.on_checkpoint, self.on_step, self.on_day_end = on_checkpoint, on_step, on_day_end
        self.workers = np.array(topo.worker_ranks)
        self.stopped_early = False
        self.stats = {"steps": 0, "eval_steps": 0, "samples": 0, "serve_s": 0.0, "update_s": 0.0,
                      "requested": {ch.spec.name: 0 for ch in channels},
                      "unique": {ch.spec.name: 0 for ch in channels}}

    def run(self) -> None:
        while self.step():
            pass

    def step(self) -> bool:
        with stage("wait"):  # blocked until every worker has sent its header
            hdr = self.ex.headers(np.zeros((self.topo.size, self.width), np.int64))
        wh = hdr[self.workers]
        phase, step = int(wh[0, 0]), int(wh[0, 1])
        if not (wh[:, 0] == phase).all() or not (wh[:, 1] == step).all():
            raise RuntimeError(f"server {self.topo.role_rank}: workers disagree on the step: "
                               f"phases {wh[:, 0].tolist()}, steps {wh[:, 1].tolist()}")
        maybe_inject_fault(self.topo.rank, step)
        if phase == Phase.STOP:
            self.stopped_early = bool(wh[:, 2].any())  # on a checkpoint signal (preemption)
            return False
        if phase == Phase.CHECKPOINT:
            self.on_checkpoint(step)
            return True
        if phase == Phase.DAY_END:
            self.on_day_end(step)
            return True
        global_n = int(wh[:, 2].sum())
        counts = hdr[:, HEADER_FIXED:]                       # (sources, channels)
        train = phase == Phase.TRAIN
        t0 = time.perf_counter()
        with stage("comm"):
            keys = self._recv_keys(counts)
        uniq, inverse, reply = [], [], [[] for _ in range(self.topo.size)]
        for c, ch in enumerate(self.channels):
            per_src = [keys[s][c] for s in range(self.topo.size)]
            u, inv = np.unique(np.concatenate(per_src), return_inverse=True)
            self.stats["requested"][ch.spec.name] += len(inv)
            self.stats["unique"][ch.spec.name] += len(u)
            rows = ch.serve(u, train).reshape(len(u), ch.spec.dim)  # channels time themselves
            uniq.append(u)
            inverse.append(inv)
            start = 0
            for s in range(self.topo.size):
                k = len(per_src[s])
                reply[s].append(rows[inv[start:start + k]])
                start += k
        with stage("comm"):
            self._send_rows(reply)
        self.stats["serve_s"] += time.perf_counter() - t0
        if train and global_n > 0:
            t1 = time.perf_counter()
            self._update(counts, uniq, inverse, step, global_n)
            self.stats["update_s"] += time.perf_counter() - t1
            self.stats["steps"] += 1
            self.stats["samples"] += global_n
            if self.on_step:
                self.on_step(step, global_n)
        elif not train:
            self.stats["eval_steps"] += 1
        return True

    def _recv_keys(self, counts: np.ndarray) -> list[list[np.ndarray]]:
        empty = [np.zeros(0, np.int64)] * self.topo.size
        recv_rows = counts.sum(1)
        # Keys of all channels travel in one buffer; categories by channel kind.
        flat = self.ex.alltoallv(empty, recv_rows, np.int64)
        return [_split(flat[s], counts[s], [1] * len(self.channels)) for s in range(self.topo.size)]

    def _send_rows(self, reply: list[list[np.ndarray]]) -> None:
        for group in dtype_groups([ch.spec for ch in self.channels]):
            wire = self.channels[group[0]].spec.wire_dtype
            parts = []
            for s in range(self.topo.size):
                segs = [to_wire(reply[s][c], wire, "rows", self.channels[c].spec.name)
                        for c in group]
                if s != self.topo.rank:
                    for c, seg in zip(group, segs):
                        self.counter.add(self.channels[c].spec.row_category, seg.nbytes)
                parts.append(np.concatenate([x.reshape(-1) for x in segs]) if segs else
                             np.zeros(0, wire))
            self.ex.alltoallv(parts, np.zeros(self.topo.size, np.int64), wire)

    def _update(self, counts, uniq, inverse, step, global_n) -> None:
        trainable = [c for c, ch in enumerate(self.channels) if ch.spec.trainable]
        widths = [self.channels[c].spec.dim for c in trainable]
        recv = counts[:, trainable] @ np.array(widths, np.int64) if trainable else \
            np.zeros(self.topo.size, np.int64)
        first = self.channels[trainable[0]].spec if trainable else None
        wire = first.wire_dtype if first else np.dtype(np.float32)
        empty = [np.zeros(0, wire)] * self.topo.size
        with stage("comm"):
            flat = self.ex.alltoallv(empty, recv, wire)
        unscale = grad_scale(wire, first.dtype, global_n) if first else 1.0
        per_src = [_split(flat[s], counts[s, trainable], widths) for s in range(self.topo.size)]
        scale = self.lr_scale_fn(step)
        for j, c in enumerate(trainable):
            ch = self.channels[c]
            g = np.concatenate([per_src[s][j] for s in range(self.topo.size)]).reshape(-1, ch.spec.dim)
            summed = np.zeros((len(uniq[c]), ch.spec.dim), ch.spec.dtype)
            _index_add(summed, inverse[c], from_wire(g, ch.spec.dtype))
            if unscale != 1.0:  # summed in the host dtype, then back to the mean loss's gradient
                summed /= unscale
            ch.update(uniq[c], summed, scale)
        for ch in self.channels:
            ch.after_update(scale)


def _index_add(out: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
    import torch

    torch.from_numpy(out).index_add_(0, torch.from_numpy(index), torch.from_numpy(values))
