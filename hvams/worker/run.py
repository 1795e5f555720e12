"""A worker rank's run: the plain training loop over the days left, in DLRM's spirit."""
from __future__ import annotations

from ..protocol.timing import stage
from ..train.restore import restore_worker
from .position import Position, days_left
from .trainer import WorkerTrainer


def run_worker(job) -> dict:
    """Train ``job`` on this worker from where its restore step says; its report."""
    trainer = WorkerTrainer(job)
    with stage("restore"):
        pos = restore_worker(job, trainer)
    for epoch in range(pos.epoch, job.cfg.epochs):
        if not train_epoch(trainer, pos, len(job.train_days)):
            trainer.evaluate(pos, epoch)  # out of steps (max_steps): evaluate where it stopped
            break
        pos.next_epoch()
        trainer.evaluate(pos, epoch)
    trainer.final_checkpoint(pos)
    return trainer.finish(pos)


def train_epoch(trainer: WorkerTrainer, pos: Position, num_days: int) -> bool:
    """Train the days left of ``pos``'s epoch; False when the run runs out of steps in it."""
    for _ in days_left(pos, num_days):
        for batch in trainer.batches(pos):
            if not trainer.train_step(batch, pos):  # pull, forward, backward, push, allreduce
                break                                # no worker has data left: the day is over
            trainer.after_step(pos)
        if trainer.out_of_steps(pos):
            return False
        trainer.end_day(pos)
    return True
