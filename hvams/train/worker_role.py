"""A worker rank's run: the training loop over days and epochs, evaluation, checkpoints."""
from __future__ import annotations

import json

import numpy as np

from ..data.reader import DayReader, reader_totals
from ..models import build_model
from ..protocol.messages import Phase
from ..protocol.timing import stage
from ..roles.worker_client import StepClient
from . import checkpoint as ckpt
from . import warm_start
from .assemble import local_images
from .report import format_metrics_table
from .summary import state_digest
from .worker import Position, WorkerTrainer, epoch_batches, resplit


def run_worker(cfg, schema, topo, specs, counter, resume_dir, run_dir, train_days, test_day, tb,
               rt):
    model = rt.module(build_model(cfg, schema))
    client = StepClient(topo, specs, counter)
    local = local_images(cfg, rt)
    warm = {}
    if cfg.warm_start and resume_dir is None:
        warm = warm_start.warm_worker(warm_start.warm_start_source(cfg.warm_start), model, local)
    warm_start.gather_report(topo, cfg, run_dir, resume_dir, warm if topo.role_rank == 0 else {})
    trainer = WorkerTrainer(cfg, schema, model, client, topo, local, rt)
    pos = Position(workers=topo.num_workers, batch_size=cfg.batch_size)
    if resume_dir is not None:
        state = ckpt.load_torch(resume_dir / "dense.pt", rt.device)
        model.load_state_dict(state["model"])
        if local is not None:
            local.model.load_state_dict(state["image_model"])
        trainer.opt.load_state_dict(state["optimizer"])
        saved = Position(**state["position"])
        pos = resplit(saved, cfg, topo.num_workers, train_days[min(saved.day, len(train_days) - 1)])
        if topo.role_rank == 0:
            print(f"hvams: resuming from {resume_dir} at step {pos.step}", flush=True)
            if pos.day_ranges is not None and saved.day_ranges != pos.day_ranges:
                left = sum(b - a for a, b in pos.day_ranges)
                print(f"hvams: --resume: {saved.workers} -> {topo.num_workers} workers mid-day: "
                      f"the day's {left} untrained rows are split among the {topo.num_workers}",
                      flush=True)
    metrics_path = run_dir / "metrics.jsonl"

    def checkpoint():
        client.command(Phase.CHECKPOINT, pos.step)
        d = ckpt.ckpt_dir(run_dir, pos.step)
        files, meta = {}, None
        if topo.role_rank == 0:
            files = ckpt.save_torch(d, "dense.pt", {
                "model": model.state_dict(), "optimizer": trainer.opt.state_dict(),
                "position": vars(pos).copy(),
                "image_model": local.model.state_dict() if local else None})
            meta = {"step": pos.step, "position": vars(pos).copy(), "servers": topo.num_servers,
                    "workers": topo.num_workers, "model": cfg.model, "config": cfg.to_dict()}
        ckpt.collect_manifest(topo, d, files, meta)
        return d

    def run_eval(epoch):
        if not cfg.evaluate:
            return None
        res = trainer.evaluate_day(test_day, pos.step)
        if res is not None:
            record = {"epoch": epoch, "step": pos.step, "split": "test", "day": test_day.name, **res}
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            print(format_metrics_table([record], cfg.model), flush=True)
            tb.metrics(record, pos.step)
        return res

    last_ckpt = (pos.step, resume_dir) if resume_dir is not None else None
    stopped = False
    start_epoch, start_day, start_skip = pos.epoch, pos.day, pos.steps_in_day
    start_ranges = pos.day_ranges
    readers = []
    for epoch in range(start_epoch, cfg.epochs):
        first_day = start_day if epoch == start_epoch else 0
        for d in range(first_day, len(train_days)):
            first = epoch == start_epoch and d == start_day
            skip = start_skip if first else 0
            ranges = start_ranges if first else None
            reader = trainer_reader(cfg, schema, topo, train_days[d], ranges)
            readers.append(reader)
            it = epoch_batches(reader, skip)
            pos.epoch, pos.day, pos.steps_in_day, pos.day_ranges = epoch, d, skip, ranges
            while True:
                if cfg.max_steps is not None and pos.step >= cfg.max_steps:
                    stopped = True
                    break
                with stage("read"):  # waiting on the reader's prefetch thread
                    batch = next(it, None)
                if not trainer.train_step(batch, pos):
                    break
                tb.add_step(trainer.losses[-1], trainer.last_n)
                tb.after_step(pos.step - 1)
                if cfg.checkpoint_every and pos.step % cfg.checkpoint_every == 0:
                    last_ckpt = (pos.step, checkpoint())
                if cfg.eval_every and pos.step % cfg.eval_every == 0:
                    run_eval(epoch)
            if stopped:
                break
        if stopped:
            break
        pos.epoch, pos.day, pos.steps_in_day, pos.day_ranges = epoch + 1, 0, 0, None
        run_eval(epoch)
    if stopped:
        run_eval(pos.epoch)
    if last_ckpt is None or last_ckpt[0] != pos.step:
        checkpoint()
    client.command(Phase.STOP, pos.step)
    losses = np.array(trainer.losses, np.float64)
    total = np.zeros_like(losses)
    topo.role_comm.Allreduce(losses, total)
    out = {"worker": {"samples": trainer.samples, "steps": len(losses), **reader_totals(readers)},
           "losses": total.tolist(), "final_step": pos.step, "step_s": trainer.step_s}
    if local is not None:
        out["images"] = local.stats()
        out["image_model_sha256"] = state_digest(local.model.state_dict())
    return out


def trainer_reader(cfg, schema, topo, day, ranges=None):
    return DayReader(day, schema, cfg.batch_size, topo.role_rank, topo.num_workers, cfg.prefetch,
                     cfg.on_bad_row, ranges=ranges)
