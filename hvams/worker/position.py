"""Where training stands, and the days left to train from there."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import ConfigError, TrainConfig
from ..data.reader import day_files, day_rows, split_ranges


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
    run_start: int = 0                     # the step this run began at (--init-from: the model's)

    def next_epoch(self) -> None:
        self.epoch, self.day, self.steps_in_day, self.day_ranges = self.epoch + 1, 0, 0, None


def days_left(pos: Position, num_days: int):
    """The days still to train in ``pos``'s epoch: ``pos`` is moved to the start of each
    before it is yielded (the first stays where it is, mid-day after a resume)."""
    first = pos.day
    for day in range(first, num_days):
        if day != first:
            pos.day, pos.steps_in_day, pos.day_ranges = day, 0, None
        yield day


def resplit(pos: Position, cfg: TrainConfig, num_workers: int, day_dir) -> Position:
    """``pos`` for ``num_workers`` workers of ``cfg.batch_size``: mid-day, the rows the
    old workers had not taken yet, split exactly among the new ones (no row twice,
    none skipped). With ``on_bad_row: skip`` the rows a worker took are not known
    from its step count, so a mid-day change is an error naming both counts."""
    same = pos.workers in (0, num_workers) and pos.batch_size in (0, cfg.batch_size)
    if pos.steps_in_day == 0 or same:
        return Position(pos.step, pos.epoch, pos.day, pos.steps_in_day, num_workers,
                        cfg.batch_size, None if pos.steps_in_day == 0 else pos.day_ranges,
                        pos.run_start)
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
    return Position(pos.step, pos.epoch, pos.day, 0, num_workers, cfg.batch_size, left,
                    pos.run_start)
