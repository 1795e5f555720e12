"""One worker's trainer: its model and optimizer, the step, checkpoints and evaluation.

Per step: pull the rows of the batch's unique keys, forward, backward, push
the row gradients, and step the dense optimizer (Horovod allreduce on the
worker set). The loss is the sum over this worker's samples divided by the
*global* batch size, and gradients are summed over workers, so a step equals
one step of a single process on the concatenated global batch.
"""
from __future__ import annotations

import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..data.batch import Batch
from ..data.reader import DayReader, reader_totals
from ..data.schema import IMAGE_CHANNEL
from ..distributed.failfast import maybe_inject_fault
from ..distributed.gradients import role_reducer
from ..distributed.preemption import REQUEUE_EXIT, STOP
from ..metrics import Scores, evaluate_parts
from ..models import build_model
from ..models.inputs import build_inputs, labels_of
from ..protocol.compression import Compression
from ..protocol.messages import Phase
from ..protocol.timing import stage
from ..train import checkpoint as ckpt
from ..train.days import DayLog
from ..train.evaluation import record_evaluation
from ..train.plan import lr_scale
from ..train.summary import state_digest
from .client import StepClient
from .position import Position


STOPPED = "stopped"  # how a run that stopped on a checkpoint signal ended (worker.run)


def batch_keys(batch: Batch | None, channel_names: list[str]) -> list[np.ndarray]:
    """Unique keys per channel (the image channel uses the batch's image keys)."""
    if batch is None:
        return [np.zeros(0, np.int64) for _ in channel_names]
    return [batch.image_keys if c == IMAGE_CHANNEL else
            batch.table_keys.get(c, np.zeros(0, np.int64)) for c in channel_names]


class WorkerTrainer:
    """Model, optimizer, step, checkpoints and evaluation of one worker of ``job``."""

    def __init__(self, job):
        cfg, rt = job.cfg, job.rt
        self.job, self.cfg, self.schema, self.topo, self.rt = job, cfg, job.schema, job.topo, rt
        self.model = model = rt.module(build_model(cfg, job.schema))
        self.client = StepClient(job.topo, job.specs, job.counter)
        self.images = job.strategy.worker_images(rt)   # the image model, where it trains here
        self.names = [c.name for c in self.client.channels]
        self.with_images = cfg.uses_images
        groups = [{"params": list(model.parameters()), "lr": cfg.lr, "base_lr": cfg.lr}]
        if self.images is not None:
            # Same Adam and lr as the servers' image model under AMS.
            groups += self.images.model.param_groups(cfg.image_lr, cfg.backbone_lr_scale)
        self.params = [p for g in groups for p in g["params"]]
        self.base_lrs = [g["base_lr"] for g in groups]  # this run's, also after --init-from
        self.compression = Compression(cfg.allreduce_compression)
        self.opt = torch.optim.Adam(groups)
        # One grouped allreduce after backward, not Horovod's per-gradient hooks: it makes
        # every gradient contiguous and can stage it through host memory (runtime.layout).
        self.reducer = role_reducer(job.topo, self.compression, "worker_grads")
        self.losses: list[float] = []      # this worker's loss sums, one per step
        # Wall time between consecutive step ends (so reading counts too); the
        # first entry times only the first step itself.
        self.step_s: list[float] = []
        self._last_end: float | None = None
        self.samples = 0
        self.readers: list[DayReader] = []
        self.checkpointed_at: int | None = None  # the step whose state is on disk
        self.due: int | None = None              # the step whose checkpoint is due
        self.days = DayLog(job)

    # --- the data ---
    def out_of_steps(self, pos: Position) -> bool:
        """Whether this run has taken its ``max_steps`` (counted from where it began)."""
        return self.cfg.max_steps is not None and pos.step - pos.run_start >= self.cfg.max_steps

    def batches(self, pos: Position):
        """This worker's batches of the day at ``pos`` (after the ones it already took), then
        None while other workers still have some; stops when the run is out of steps."""
        reader = DayReader(self.job.train_days[pos.day], self.schema, self.cfg.batch_size,
                           self.topo.role_rank, self.topo.num_workers, self.cfg.prefetch,
                           self.cfg.on_bad_row, ranges=pos.day_ranges)
        self.readers.append(reader)
        it = iter(reader)
        for _ in range(pos.steps_in_day):  # an earlier run trained these
            skipped = next(it, None)
            if skipped is None:
                break
            reader.stats["rows_resumed"] += skipped.n
        while not self.out_of_steps(pos):
            with stage("read"):  # waiting on the reader's prefetch thread
                batch = next(it, None)
            yield batch

    # --- the step ---
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
            self.client.counter.add("allreduce_workers",
                                    self.compression.allreduce_bytes(self.params))
        with stage("allreduce_step"):  # Horovod allreduce of dense gradients + Adam
            self.reducer.reduce(self.params)
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
        if self.images is not None:
            row_map[IMAGE_CHANNEL] = self.images.embed(batch.image_keys,
                                                       row_map.get(IMAGE_CHANNEL))
        return build_inputs(batch, row_map, self.schema, self.with_images, self.rt.index)

    # --- around the steps ---
    def after_step(self, pos: Position) -> None:
        """Log the step; evaluate when the schedule says so. A checkpoint due here waits for
        the next batch (``checkpoint_if_due``)."""
        self.job.tb.add_step(self.losses[-1], self.last_n)
        self.job.tb.after_step(pos.step - 1)
        if self.cfg.checkpoint_every and pos.step % self.cfg.checkpoint_every == 0:
            self.due = pos.step
        if self.cfg.eval_every and pos.step % self.cfg.eval_every == 0:
            self.evaluate(pos, pos.epoch)

    def checkpoint_if_due(self, pos: Position, batch: Batch | None) -> None:
        """Write the checkpoint due at this step, unless no worker has a next ``batch``: then
        the day's end comes next and changes the servers' rows (TTL) at this same step, so
        the state to keep is the one after it, which the next checkpoint (or the final one)
        holds. A run that stops here instead (max_steps, a signal) writes it as its final."""
        if self.due != pos.step:
            return
        self.due = None
        more = int(batch is not None and batch.n > 0)  # the next step's global_n > 0
        if self.topo.num_workers > 1:
            more = self.topo.role_comm.allreduce(more)
        if more:
            self.checkpoint(pos)

    def checkpoint(self, pos: Position) -> None:
        """Every rank writes its part of ``ckpt-STEP``; the first worker the dense state."""
        self.client.command(Phase.CHECKPOINT, pos.step)
        d = ckpt.ckpt_dir(self.job.run_dir, pos.step)
        files, meta = {}, None
        if self.topo.role_rank == 0:
            files = ckpt.save_torch(d, "dense.pt", {
                "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "position": vars(pos).copy(),
                "image_model": self.job.strategy.worker_state(self.images)})
            meta = {"step": pos.step, "position": vars(pos).copy(),
                    "servers": self.topo.num_servers, "workers": self.topo.num_workers,
                    "model": self.cfg.model, "config": self.cfg.to_dict(),
                    "schema": json.loads(self.schema.to_json())}
        ckpt.collect_manifest(self.topo, d, files, meta, keep=self.cfg.keep_checkpoints)
        self.checkpointed_at = pos.step

    def end_day(self, pos: Position) -> None:
        """The day is over on every worker: servers age their rows; all ranks report it."""
        self.client.command(Phase.DAY_END, pos.step)
        self.days.end_day(pos.step, day=self.job.train_days[pos.day].name)

    def stop_here(self, pos: Position) -> str:
        """The job agreed to stop on a checkpoint signal: say so once (first worker)."""
        if self.topo.role_rank == 0:
            print(f"hvams: {STOP.describe()} (in the header of step {STOP.agreed_step}): "
                  f"every rank stops after {pos.step} steps, checkpoints them and exits "
                  f"{REQUEUE_EXIT}", flush=True)
        return STOPPED

    def final_checkpoint(self, pos: Position) -> None:
        if self.checkpointed_at != pos.step:
            self.checkpoint(pos)

    def evaluate(self, pos: Position, epoch: int) -> dict | None:
        """Score the test day; the first worker records and prints the metrics."""
        if not self.cfg.evaluate:
            return None
        res = self.evaluate_day(self.job.test_day, pos.step)
        if res is not None:
            record_evaluation(self.job, epoch, pos.step, res)
        return res

    @torch.no_grad()
    def evaluate_day(self, day, step: int) -> dict | None:
        """Score this worker's share of ``day``; worker 0 returns the metrics."""
        self.model.eval()
        reader = DayReader(day, self.schema, self.cfg.eval_batch_size, self.topo.role_rank,
                           self.topo.num_workers, self.cfg.prefetch, self.cfg.on_bad_row)
        it = iter(reader)
        scores = Scores(self.schema)
        maybe_inject_fault(self.topo.rank, step, "eval")
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

    def finish(self, pos: Position, stopped: bool = False) -> dict:
        """Stop the servers (saying whether the run ``stopped`` early on a checkpoint
        signal); this worker's report (with every worker's summed losses)."""
        self.client.command(Phase.STOP, pos.step, int(stopped))
        losses = np.array(self.losses, np.float64)
        total = np.zeros_like(losses)
        self.topo.role_comm.Allreduce(losses, total)
        out = {"worker": {"samples": self.samples, "steps": len(losses),
                          **reader_totals(self.readers)},
               "losses": total.tolist(), "final_step": pos.step, "step_s": self.step_s,
               "days": self.days.days, "stopped_early": stopped}
        if self.images is not None:
            out["images"] = self.images.stats()
            out["image_model_sha256"] = state_digest(self.images.model.state_dict())
        return out
