"""What every world generator writes the same way: a fresh output directory and the
behavior list columns (one offsets array shared by all of a row's lists)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa


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
