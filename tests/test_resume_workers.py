"""Resume mid-day on another worker count: the day's untrained rows are split exactly among
the new workers (no row trained twice, none skipped), counted row by row."""
from collections import Counter

import pytest

from hvams.config import ConfigError, TrainConfig
from hvams.data.reader import DayReader
from hvams.data.schema import Schema
from hvams.train.plan import resolve_days
from hvams.worker.position import Position, resplit
from mpi_harness import train_ok


def _rows(batches):
    """Every row of ``batches`` as a hashable tuple of all its columns."""
    out = []
    for b in batches:
        for i in range(b.n):
            single = tuple(float(v[i]) for _, v in sorted(b.values.items()))
            lists = tuple(tuple(v[b.offsets[i]:b.offsets[i + 1]].tolist())
                          for _, v in sorted(b.lists.items()))
            out.append(single + lists)
    return Counter(out)


def _take(day, schema, batch, workers, steps, ranges=None):
    got = Counter()
    for w in range(workers):
        r = DayReader(day, schema, batch, w, workers, prefetch=0, ranges=ranges)
        got += _rows(b for i, b in zip(range(steps), r))
    return got


@pytest.mark.parametrize("w0,b0,steps0,w1,b1,steps1,w2", [
    (2, 16, 3, 3, 16, 2, 1),       # 2 -> 3 -> 1 workers
    (3, 16, 2, 2, 24, 1, 4),       # and a new batch size
    (1, 32, 4, 4, 8, 3, 2),
])
def test_rows_are_split_exactly(tiny_world, w0, b0, steps0, w1, b1, steps1, w2):
    schema = Schema.load(tiny_world)
    cfg = TrainConfig(data=str(tiny_world))
    day = resolve_days(cfg)[0][0]
    everything = _rows(DayReader(day, schema, 64, prefetch=0))
    seen = _take(day, schema, b0, w0, steps0)
    pos = resplit(Position(step=steps0, steps_in_day=steps0, workers=w0, batch_size=b0),
                  TrainConfig(data=str(tiny_world), batch_size=b1), w1, day)
    assert pos.steps_in_day == 0 and pos.workers == w1 and pos.day_ranges
    assert sum(b - a for a, b in pos.day_ranges) == sum(everything.values()) - sum(seen.values())
    seen += _take(day, schema, b1, w1, steps1, pos.day_ranges)
    # a second resume, from the re-split position, on yet another worker count
    pos = resplit(Position(step=steps0 + steps1, steps_in_day=steps1, workers=w1, batch_size=b1,
                           day_ranges=pos.day_ranges),
                  TrainConfig(data=str(tiny_world), batch_size=b1), w2, day)
    seen += _take(day, schema, b1, w2, 10 ** 6, pos.day_ranges)
    assert seen == everything      # each row exactly once


def test_same_count_or_day_boundary_keeps_the_position(tiny_world):
    day = resolve_days(TrainConfig(data=str(tiny_world)))[0][0]
    cfg = TrainConfig(data=str(tiny_world), batch_size=16)
    same = resplit(Position(5, 0, 0, 5, 2, 16), cfg, 2, day)
    assert (same.steps_in_day, same.day_ranges) == (5, None)
    boundary = resplit(Position(5, 0, 1, 0, 2, 16), cfg, 3, day)
    assert (boundary.steps_in_day, boundary.workers, boundary.day_ranges) == (0, 3, None)


def test_skip_mode_mid_day_change_is_a_clear_error(tiny_world):
    day = resolve_days(TrainConfig(data=str(tiny_world)))[0][0]
    cfg = TrainConfig(data=str(tiny_world), batch_size=16, on_bad_row="skip")
    with pytest.raises(ConfigError, match=r"stopped mid-day with 2 workers x batch 16, and this "
                                          r"run has 3 workers x batch 16"):
        resplit(Position(5, 0, 0, 5, 2, 16), cfg, 3, day)


def test_resume_on_another_worker_count_trains_every_row_once(tiny_world, tmp_path):
    out = tmp_path / "run"
    keys = dict(timeout=240, servers=1, model="idonly", batch_size=32)
    first, _ = train_ok(3, tiny_world, out, max_steps=3, **keys)            # 2 workers
    second, res = train_ok(4, tiny_world, out, resume=True, **keys)         # 3 workers
    assert "2 -> 3 workers mid-day" in res.output
    schema = Schema.load(tiny_world)
    total = sum(b.n for d in resolve_days(TrainConfig(data=str(tiny_world)))[0]
                for b in DayReader(d, schema, 4096, prefetch=0))
    assert first["samples"] == 3 * 2 * 32
    assert first["samples"] + second["samples"] == total
