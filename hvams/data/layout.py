"""What every world generator writes the same way: a fresh output directory, the behavior
list columns (one offsets array shared by all of a row's lists), and the days of a world
that fits one Parquet file a day."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def fresh_dir(out: str | Path, overwrite: bool) -> Path:
    """``out``, created empty; a non-empty one is replaced only with ``overwrite``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass --overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


class Lists:
    """Ragged rows of ``lengths``: where each element sits, and list columns over them."""

    def __init__(self, lengths: np.ndarray):
        n = len(lengths)
        self.offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
        self.row = np.repeat(np.arange(n), lengths)             # the row of each element
        self.pos = np.arange(self.offsets[-1]) - self.offsets[self.row]  # its place in the row
        self._off32 = pa.array(self.offsets.astype(np.int32))

    def column(self, values: np.ndarray) -> pa.ListArray:
        return pa.ListArray.from_arrays(self._off32, pa.array(values))


def write_days(out: Path, impressions, train_days: int, n: int, label: str
               ) -> tuple[dict, pa.Table]:
    """``day=00`` .. ``day=<train_days>`` under ``out``, one Parquet file each, from
    ``impressions(day, n, test)`` (the last day is the test day); the samples and clicks
    (column ``label``) written, and the test day's table."""
    stats = {"samples": 0, "clicks": 0}
    for day in range(train_days + 1):
        table = impressions(day, n, day == train_days)
        (out / f"day={day:02d}").mkdir()
        pq.write_table(table, out / f"day={day:02d}" / "part-00000.parquet", row_group_size=4096)
        stats["samples"] += table.num_rows
        stats["clicks"] += int(np.asarray(table[label]).sum())
    return stats, table
