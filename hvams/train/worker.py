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
from ..data.reader import DayReader
from ..data.schema import Schema
from ..distributed.failfast import maybe_inject_fault
from ..metrics import evaluate
from ..models.inputs import build_inputs, labels_of
from ..protocol.messages import Phase
from ..protocol.timing import stage
from ..roles.worker_client import StepClient
from .plan import lr_scale


@dataclass
class Position:
    """Where training stands: resumable from a checkpoint."""

    step: int = 0
    epoch: int = 0
    day: int = 0
    steps_in_day: int = 0


def batch_keys(batch: Batch | None, channel_names: list[str]) -> list[np.ndarray]:
    """Unique keys per channel (the image channel uses the batch's image keys)."""
    if batch is None:
        return [np.zeros(0, np.int64) for _ in channel_names]
    return [batch.image_keys if c == "image" else batch.table_keys.get(c, np.zeros(0, np.int64))
            for c in channel_names]


class WorkerTrainer:
    """Model, optimizer and step logic of one worker."""

    def __init__(self, cfg: TrainConfig, schema: Schema, model: torch.nn.Module,
                 client: StepClient, topo, local_images=None):
        self.cfg, self.schema, self.model, self.client, self.topo = cfg, schema, model, client, topo
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
                                       process_set=topo.worker_set)
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
            rows, global_n = self.client.pull(Phase.TRAIN, pos.step, n, batch_keys(batch, self.names))
        if global_n == 0:
            return False
        for c, spec in enumerate(self.client.channels):
            if spec.trainable:
                rows[c].requires_grad_(True)
        for group in self.opt.param_groups:
            group["lr"] = group["base_lr"] * lr_scale(pos.step, self.cfg)
        self.opt.zero_grad()
        with stage("compute"):  # forward + backward (and a local image model's decode)
            if batch is not None and batch.n:
                logits = self.model(self._inputs(batch, rows))
                loss_sum = F.cross_entropy(logits, labels_of(batch, self.schema), reduction="sum")
            else:
                # No samples here this step: zero gradients still join the allreduce.
                loss_sum = sum(p.sum() for p in self.params) * 0.0
            (loss_sum / global_n).backward()
        with stage("push"):
            self.client.push([r.grad if r.requires_grad else None for r in rows])
        if self.topo.num_workers > 1:
            self.client.counter.add("allreduce_workers", sum(
                p.grad.numel() * p.grad.element_size() for p in self.params))
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
        return build_inputs(batch, row_map, self.schema, self.with_images)

    @torch.no_grad()
    def evaluate_day(self, day, step: int) -> dict | None:
        """Score this worker's share of ``day``; worker 0 returns the metrics."""
        self.model.eval()
        reader = DayReader(day, self.schema, self.cfg.eval_batch_size, self.topo.role_rank,
                           self.topo.num_workers, self.cfg.prefetch, self.cfg.on_bad_row)
        it = iter(reader)
        cols = {k: [] for k in ("label", "prob", "user", "new", "p_true")}
        s = self.schema
        while True:
            batch = next(it, None)
            n = batch.n if batch is not None else 0
            rows, global_n = self.client.pull(Phase.EVAL, step, n, batch_keys(batch, self.names))
            if global_n == 0:
                break
            if batch is None or not n:
                continue
            prob = torch.softmax(self.model(self._inputs(batch, rows)), dim=1)[:, 1].numpy()
            cols["label"].append(batch.values[s.label])
            cols["prob"].append(prob)
            cols["user"].append(batch.values[s.user])
            if s.new_ad and s.new_ad in batch.values:
                cols["new"].append(batch.values[s.new_ad])
            if s.p_true and s.p_true in batch.values:
                cols["p_true"].append(batch.values[s.p_true])
        self.model.train()
        self._last_end = None  # evaluation time is not step time
        local = {k: np.concatenate(v) if v else None for k, v in cols.items()}
        gathered = self.topo.role_comm.gather(local, root=0)
        if self.topo.role_rank != 0:
            return None
        merged = {k: (np.concatenate([g[k] for g in gathered if g[k] is not None])
                      if any(g[k] is not None for g in gathered) else None) for k in cols}
        if merged["label"] is None:
            return {"n": 0}
        return evaluate(merged["label"], merged["prob"], merged["user"], merged["new"],
                        merged["p_true"])


def epoch_batches(reader: DayReader, skip: int):
    """The reader's batches after skipping ``skip`` of them (resume mid-day)."""
    it = iter(reader)
    for _ in range(skip):
        if next(it, None) is None:
            break
    return it
