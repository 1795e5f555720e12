"""The worker's plain training loop (in the spirit of the DLRM reference).

Per step: read a batch, pull the rows of its unique keys, forward, backward,
push the row gradients, and step the dense optimizer (Horovod allreduce on
the worker set). The loss is the sum over this worker's samples divided by
the *global* batch size, and gradients are summed over workers, so a step
equals one step of a single process on the concatenated global batch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..config import TrainConfig
from ..data.batch import Batch
from ..config import ConfigError
from ..data.reader import DayReader, day_files, day_rows, split_ranges
from ..data.schema import Schema
from ..distributed.failfast import maybe_inject_fault
from ..distributed.compression import horovod_compression, wire_bytes
from ..metrics import Scores, evaluate_parts
from ..models.inputs import build_inputs, labels_of
from ..protocol.messages import Phase
from ..protocol.timing import stage
from ..roles.worker_client import StepClient
from ..runtime import Runtime
from .plan import lr_scale


@dataclass
class Position:
    """Where training stands: resumable from a checkpoint.

    ``steps_in_day`` batches of ``batch_size`` rows were taken by each of
    ``workers`` workers from their share of the day's rows: all rows, or
    ``day_ranges`` after a resume on another worker count (``resplit``).
    """

    step: int = 0
    epoch: int = 0
    day: int = 0
    steps_in_day: int = 0
    workers: int = 0                       # 0: written before hvams recorded it
    batch_size: int = 0
    day_ranges: list | None = None         # [[lo, hi), ...] global rows of the day


def resplit(pos: Position, cfg: TrainConfig, num_workers: int, day_dir) -> Position:
    """``pos`` for ``num_workers`` workers of ``cfg.batch_size``: mid-day, the rows the
    old workers had not taken yet, split exactly among the new ones (no row twice,
    none skipped). With ``on_bad_row: skip`` the rows a worker took are not known
    from its step count, so a mid-day change is an error naming both counts."""
    same = pos.workers in (0, num_workers) and pos.batch_size in (0, cfg.batch_size)
    if pos.steps_in_day == 0 or same:
        return Position(pos.step, pos.epoch, pos.day, pos.steps_in_day, num_workers,
                        cfg.batch_size, None if pos.steps_in_day == 0 else pos.day_ranges)
    if cfg.on_bad_row == "skip":
        raise ConfigError(
            f"--resume: the checkpoint stopped mid-day with {pos.workers} workers x batch "
            f"{pos.batch_size}, and this run has {num_workers} workers x batch {cfg.batch_size}; "
            f"with on_bad_row=skip the rows each worker took are unknown, so the rest of the day "
            f"cannot be split exactly: resume with {pos.workers} workers and batch "
            f"{pos.batch_size}, or use on_bad_row=error")
    base = pos.day_ranges or [(0, day_rows(day_files(day_dir)))]
    taken = pos.steps_in_day * pos.batch_size
    left = []
    for w in range(pos.workers):
        share, skip = split_ranges(base, w, pos.workers), taken
        for a, b in share:
            cut = min(b - a, skip)
            skip -= cut
            if a + cut < b:
                left.append([a + cut, b])
    return Position(pos.step, pos.epoch, pos.day, 0, num_workers, cfg.batch_size, left)


def batch_keys(batch: Batch | None, channel_names: list[str]) -> list[np.ndarray]:
    """Unique keys per channel (the image channel uses the batch's image keys)."""
    if batch is None:
        return [np.zeros(0, np.int64) for _ in channel_names]
    return [batch.image_keys if c == "image" else batch.table_keys.get(c, np.zeros(0, np.int64))
            for c in channel_names]


class WorkerTrainer:
    """Model, optimizer and step logic of one worker."""

    def __init__(self, cfg: TrainConfig, schema: Schema, model: torch.nn.Module,
                 client: StepClient, topo, local_images=None, runtime: Runtime | None = None):
        self.cfg, self.schema, self.client, self.topo = cfg, schema, client, topo
        self.rt = runtime or Runtime.cpu()
        self.model = model = self.rt.module(model)
        self.names = [c.name for c in client.channels]
        self.with_images = cfg.uses_images
        self.local_images = local_images
        groups = [{"params": list(model.parameters()), "lr": cfg.lr, "base_lr": cfg.lr}]
        named = list(model.named_parameters())
        if local_images is not None:
            # The image model trains here (store-in-server / store-in-worker):
            # same Adam and lr as on the servers under AMS.
            groups.append({"params": local_images.parameters(), "lr": cfg.image_lr,
                           "base_lr": cfg.image_lr})
            named += [(f"image_model.{n}", p) for n, p in local_images.model.named_parameters()
                      if p.requires_grad]
        self.params = [p for g in groups for p in g["params"]]
        opt = torch.optim.Adam(groups)
        import horovod.torch as hvd

        opt = hvd.DistributedOptimizer(opt, named_parameters=named, op=hvd.Sum,
                                       process_set=topo.worker_set,
                                       compression=horovod_compression(cfg.allreduce_compression))
        self.opt = opt
        self.losses: list[float] = []      # this worker's loss sums, one per step
        # Wall time between consecutive step ends (so reading counts too); the
        # first entry times only the first step itself.
        self.step_s: list[float] = []
        self._last_end: float | None = None
        self.samples = 0

    def train_step(self, batch: Batch | None, pos: Position) -> bool:
        """One synchronous step; False when no worker had data (day finished)."""
        n = batch.n if batch is not None else 0
        maybe_inject_fault(self.topo.rank, pos.step)
        t0 = time.perf_counter()
        with stage("pull"):  # communication plus waiting for the servers' answers
            host_rows, global_n = self.client.pull(Phase.TRAIN, pos.step, n,
                                                   batch_keys(batch, self.names))
        if global_n == 0:
            return False
        rows = [self.rt.upload(r) for r in host_rows]
        for c, spec in enumerate(self.client.channels):
            if spec.trainable:
                rows[c].requires_grad_(True)
        for group in self.opt.param_groups:
            group["lr"] = group["base_lr"] * lr_scale(pos.step, self.cfg)
        self.opt.zero_grad()
        with stage("compute"):  # forward + backward (and a local image model's decode)
            if batch is not None and batch.n:
                with self.rt.compute():
                    logits = self.model(self._inputs(batch, rows))
                loss_sum = F.cross_entropy(logits.to(self.rt.dtype),
                                           labels_of(batch, self.schema, self.rt.index),
                                           reduction="sum")
            else:
                # No samples here this step: zero gradients still join the allreduce.
                loss_sum = sum(p.sum() for p in self.params) * 0.0
            (loss_sum / global_n).backward()
        with stage("push"):
            self.client.push([self.rt.download(r.grad, spec.dtype)
                              if r.requires_grad and r.grad is not None else None
                              for r, spec in zip(rows, self.client.channels)])
        if self.topo.num_workers > 1:
            self.client.counter.add("allreduce_workers", wire_bytes(
                [p.grad for p in self.params], self.cfg.allreduce_compression))
        with stage("allreduce_step"):  # Horovod allreduce of dense gradients + Adam
            self.opt.step()
        end = time.perf_counter()
        self.step_s.append(end - (self._last_end if self._last_end is not None else t0))
        self._last_end = end
        self.losses.append(float(loss_sum.detach()))
        self.samples += n
        self.last_n = n
        pos.step += 1
        pos.steps_in_day += 1
        return True

    def _inputs(self, batch: Batch, rows: list[torch.Tensor]):
        row_map = dict(zip(self.names, rows))
        if self.local_images is not None:
            row_map["image"] = self.local_images.embed(batch.image_keys, row_map.get("image"))
        return build_inputs(batch, row_map, self.schema, self.with_images, self.rt.index)

    @torch.no_grad()
    def evaluate_day(self, day, step: int) -> dict | None:
        """Score this worker's share of ``day``; worker 0 returns the metrics."""
        self.model.eval()
        reader = DayReader(day, self.schema, self.cfg.eval_batch_size, self.topo.role_rank,
                           self.topo.num_workers, self.cfg.prefetch, self.cfg.on_bad_row)
        it = iter(reader)
        scores = Scores(self.schema)
        while True:
            batch = next(it, None)
            n = batch.n if batch is not None else 0
            rows, global_n = self.client.pull(Phase.EVAL, step, n, batch_keys(batch, self.names))
            if global_n == 0:
                break
            if batch is None or not n:
                continue
            with self.rt.compute():
                logits = self.model(self._inputs(batch, [self.rt.upload(r) for r in rows]))
            scores.add(batch, self.rt.download(torch.softmax(logits.float(), dim=1)[:, 1]))
        self.model.train()
        self._last_end = None  # evaluation time is not step time
        local = scores.local()
        gathered = self.topo.role_comm.gather(local, root=0)
        if self.topo.role_rank != 0:
            return None
        return evaluate_parts(gathered)


def epoch_batches(reader: DayReader, skip: int):
    """The reader's batches after skipping ``skip`` of them (resume mid-day)."""
    it = iter(reader)
    for _ in range(skip):
        if next(it, None) is None:
            break
    return it
