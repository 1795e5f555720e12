"""A worker rank's run: the plain training loop over the days left, in DLRM's spirit."""
from __future__ import annotations

from ..distributed.preemption import STOP
from ..protocol.timing import stage
from ..train.restore import restore_worker
from .position import Position, days_left
from .trainer import STOPPED, WorkerTrainer

DONE, OUT_OF_STEPS = "done", "out of steps"


def run_worker(job) -> dict:
    """Train ``job`` on this worker from where its restore step says; its report."""
    trainer = WorkerTrainer(job)
    with stage("restore"):
        pos = restore_worker(job, trainer)
    ended = DONE
    for epoch in range(pos.epoch, job.cfg.epochs):
        ended = train_epoch(trainer, pos, len(job.train_days))
        if ended == STOPPED:   # no evaluation: the scheduler's grace time is short
            break
        if ended == OUT_OF_STEPS:
            trainer.evaluate(pos, epoch)  # evaluate where it stopped
            break
        pos.next_epoch()
        # a signal seen in the day end or the evaluation stops the next epoch's first step:
        # a checkpoint here would share its step number with the day's last one
        trainer.evaluate(pos, epoch)
    trainer.final_checkpoint(pos)
    return trainer.finish(pos, stopped=ended == STOPPED)


def train_epoch(trainer: WorkerTrainer, pos: Position, num_days: int) -> str:
    """Train the days left of ``pos``'s epoch: DONE, OUT_OF_STEPS (``max_steps``), or
    STOPPED (a checkpoint signal came back in a step header: stop after that step, or
    before the day's end when it came in the day's last, empty exchange)."""
    for _ in days_left(pos, num_days):
        for batch in trainer.batches(pos):
            trainer.checkpoint_if_due(pos, batch)    # the step before's, unless the day ends
            if not trainer.train_step(batch, pos):  # pull, forward, backward, push, allreduce
                break                                # no worker has data left: the day is over
            trainer.after_step(pos)
            if STOP.agreed:  # every rank saw the same header: every worker stops here
                return trainer.stop_here(pos)
        if STOP.agreed:  # before DAY_END: the resumed run takes the empty step and ends the day
            return trainer.stop_here(pos)
        if trainer.out_of_steps(pos):
            return OUT_OF_STEPS
        trainer.end_day(pos)
    return DONE
