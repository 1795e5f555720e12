"""Stream one worker's share of a Parquet day as Batches, in bounded memory.

The rows of a day (files sorted by name, row groups in order) form one
sequence of N rows; worker ``w`` of ``W`` owns rows ``[w*N//W, (w+1)*N//W)``.
So the split is by file and row group first (a worker opens only the row
groups overlapping its range) and then by row, every row is read exactly
once per epoch, and shares differ by at most one row. A background thread
reads ahead ``prefetch`` batches.
"""
from __future__ import annotations

import queue
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .batch import Batch, cap_lists, index_keys
from .schema import Schema


class MalformedDataError(ValueError):
    """A Parquet row that breaks the schema; the message names file/row group/row/field."""

    user_error = True  # bad input: reported without a traceback


def _type_ok(f, t: pa.DataType) -> bool:
    if f.is_list:
        return (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_integer(t.value_type)
    if f.is_id or f.is_image:
        return pa.types.is_integer(t)
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def check_column_types(path: str, arrow_schema: pa.Schema, schema: Schema) -> None:
    """Each schema field's column has a type its kind can read; else an error naming them."""
    for f in schema.fields:
        t = arrow_schema.field(f.name).type
        if _type_ok(f, t):
            continue
        want = {"id": "an integer", "image": "an integer", "id_list": "a list of integers",
                "image_list": "a list of integers"}.get(f.kind, "a number")
        hint = (" (string image keys: map them to int64 ids with `hvams images keys`, "
                "see docs/data.md)" if f.is_image else "")
        raise MalformedDataError(f"{path}: column {f.name!r} has type {t}, but schema field "
                                 f"{f.name!r} (kind {f.kind}) needs {want}{hint}")


@dataclass(frozen=True)
class Chunk:
    """Rows [lo, hi) of row group ``rg`` of ``path``; ``first_row`` = file row of lo."""

    path: str
    rg: int
    lo: int
    hi: int
    first_row: int


def day_files(day_dir: str | Path) -> list[Path]:
    files = sorted(Path(day_dir).glob("part-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{day_dir}: no part-*.parquet files")
    return files


def list_days(data_dir: str | Path) -> list[Path]:
    return sorted(p for p in Path(data_dir).glob("day=*") if p.is_dir())


Ranges = list[tuple[int, int]]  # [lo, hi) intervals of a day's global row numbers


def day_rows(files: list[Path]) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in files)


def split_ranges(ranges: Ranges, worker: int, num_workers: int) -> Ranges:
    """Worker ``worker``'s share of the rows in ``ranges``: the same equal split as for
    a whole day, over the rows of ``ranges`` taken in order."""
    total = sum(b - a for a, b in ranges)
    lo, hi = worker * total // num_workers, (worker + 1) * total // num_workers
    out, pos = [], 0
    for a, b in ranges:
        x, y = max(lo, pos), min(hi, pos + b - a)
        if x < y:
            out.append((a + x - pos, a + y - pos))
        pos += b - a
    return out


def worker_chunks(files: list[Path], worker: int, num_workers: int,
                  ranges: Ranges | None = None) -> list[Chunk]:
    """The row-group slices that make up worker ``worker``'s share of the day (or of the
    day's rows in ``ranges``, after a resume on another worker count)."""
    groups = []  # (path, rg, rows, file_row_start)
    for path in files:
        md = pq.ParquetFile(path).metadata
        start = 0
        for rg in range(md.num_row_groups):
            rows = md.row_group(rg).num_rows
            groups.append((str(path), rg, rows, start))
            start += rows
    total = sum(g[2] for g in groups)
    mine = split_ranges(ranges if ranges is not None else [(0, total)], worker, num_workers)
    chunks, pos = [], 0
    for path, rg, rows, file_start in groups:
        for lo, hi in mine:
            a, b = max(lo, pos), min(hi, pos + rows)
            if a < b:
                chunks.append(Chunk(path, rg, a - pos, b - pos, file_start + a - pos))
        pos += rows
    return chunks


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


class DayReader:
    """Batches of one worker's share of one day directory.

    ``on_bad_row='error'`` raises MalformedDataError on the first bad row;
    ``'skip'`` drops bad rows and counts them in ``stats`` by reason.
    """

    def __init__(self, day_dir: str | Path, schema: Schema, batch_size: int, worker: int = 0,
                 num_workers: int = 1, prefetch: int = 2, on_bad_row: str = "error",
                 shuffle_seed: int | None = None, ranges: Ranges | None = None):
        if on_bad_row not in ("error", "skip"):
            raise ValueError(f"on_bad_row must be error or skip, not {on_bad_row!r}")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.day_dir, self.schema, self.batch_size = Path(day_dir), schema, batch_size
        self.worker, self.num_workers = worker, num_workers
        self.prefetch, self.on_bad_row, self.shuffle_seed = prefetch, on_bad_row, shuffle_seed
        self.files = day_files(day_dir)
        self.chunks = worker_chunks(self.files, worker, num_workers, ranges)
        self.stats = Counter()
        self.rejects: list[str] = []

    @property
    def num_rows(self) -> int:
        return sum(c.hi - c.lo for c in self.chunks)

    # -- validation -------------------------------------------------------
    def _validate(self, table: pa.Table, chunk: Chunk) -> np.ndarray:
        """Boolean mask of good rows; raises on the first bad one in 'error' mode."""
        n = table.num_rows
        good = np.ones(n, bool)
        where = f"{chunk.path}, row group {chunk.rg}"
        first_error: list = []  # (row, message): 'error' mode reports the earliest bad row

        def bad(mask: np.ndarray, field: str, reason: str):
            if not mask.any():
                return
            row = _first_bad(mask)
            msg = f"{where}, row {chunk.first_row + row}, field {field!r}: {reason}"
            if self.on_bad_row == "error":
                if not first_error or row < first_error[0][0]:
                    first_error[:] = [(row, msg)]
                return
            newly = mask & good
            self.stats[f"rejected:{reason}"] += int(newly.sum())
            if len(self.rejects) < 100:
                self.rejects.append(msg)
            good[mask] = False

        lists = self.schema.list_fields
        ref_len = None
        for f in self.schema.fields:
            col = table.column(f.name)
            if col.null_count:
                bad(col.is_null().to_numpy(zero_copy_only=False), f.name, "null value")
            if f.is_list:
                length = pc.fill_null(pc.list_value_length(col), 0).to_numpy()
                if ref_len is None:
                    ref_len = (lists[0].name, length)
                elif not np.array_equal(length, ref_len[1]):
                    bad(length != ref_len[1], f.name,
                        f"list length differs from {ref_len[0]!r}")
                flat = pc.list_flatten(col).to_numpy(zero_copy_only=False)
                if len(flat) and flat.min() < 0:
                    owners = np.repeat(np.arange(n), length)
                    mask = np.zeros(n, bool)
                    mask[owners[flat < 0]] = True
                    bad(mask, f.name, "negative id")
            elif f.is_id or f.is_image:
                vals = pc.fill_null(col, 0).to_numpy(zero_copy_only=False)
                bad(vals < 0, f.name, "negative id")
            elif f.kind == "label":
                vals = pc.fill_null(col, 0).to_numpy(zero_copy_only=False)
                bad((vals != 0) & (vals != 1), f.name, "label outside {0, 1}")
        if first_error:
            raise MalformedDataError(first_error[0][1])
        return good

    # -- reading ----------------------------------------------------------
    def _read_chunk(self, chunk: Chunk) -> pa.Table:
        pf = pq.ParquetFile(chunk.path)
        have = set(pf.schema_arrow.names)
        missing = [c for c in self.schema.columns() if c not in have]
        if missing:
            raise MalformedDataError(f"{chunk.path}: missing column(s) {missing} required by the schema")
        check_column_types(chunk.path, pf.schema_arrow, self.schema)
        table = pf.read_row_group(chunk.rg, columns=self.schema.columns())
        return table.slice(chunk.lo, chunk.hi - chunk.lo)

    def _to_batch(self, table: pa.Table) -> Batch:
        values, lists, offsets = {}, {}, None
        for f in self.schema.fields:
            col = table.column(f.name).combine_chunks() if table.num_rows else table.column(f.name)
            if f.is_list:
                if offsets is None:
                    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
                    offsets = np.zeros(table.num_rows + 1, np.int64)
                    np.cumsum(lengths, out=offsets[1:])
                lists[f.name] = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.int64)
            else:
                dtype = np.float32 if f.kind in ("float", "label") else np.int64
                values[f.name] = col.to_numpy(zero_copy_only=False).astype(dtype)
        if offsets is None:
            offsets = np.zeros(table.num_rows + 1, np.int64)
        batch = Batch(table.num_rows, values, lists, offsets)
        return index_keys(cap_lists(batch, self.schema.max_behaviors), self.schema)

    def _tables(self) -> Iterator[pa.Table]:
        chunks = list(self.chunks)
        rng = np.random.default_rng(self.shuffle_seed) if self.shuffle_seed is not None else None
        if rng is not None:
            rng.shuffle(chunks)
        for chunk in chunks:
            table = self._read_chunk(chunk)
            self.stats["rows_read"] += table.num_rows
            good = self._validate(table, chunk)
            if not good.all():
                table = table.filter(pa.array(good))
            if rng is not None and table.num_rows:
                table = table.take(pa.array(rng.permutation(table.num_rows)))
            yield table

    def _batches(self) -> Iterator[Batch]:
        pending: list[pa.Table] = []
        have = 0
        for table in self._tables():
            pending.append(table)
            have += table.num_rows
            while have >= self.batch_size:
                merged = pa.concat_tables(pending)
                yield self._to_batch(merged.slice(0, self.batch_size))
                rest = merged.slice(self.batch_size)
                pending, have = [rest], rest.num_rows
        if have:
            yield self._to_batch(pa.concat_tables(pending))

    def __iter__(self) -> Iterator[Batch]:
        """Batches in order, read ahead by a background thread."""
        if self.prefetch <= 0:
            yield from self._count(self._batches())
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        done = object()

        def produce():
            try:
                for b in self._batches():
                    while not stop.is_set():
                        try:
                            q.put(b, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                q.put(done)
            except BaseException as exc:  # re-raised in the consumer
                q.put(exc)

        thread = threading.Thread(target=produce, name="hvams-reader", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield from self._count([item])
        finally:
            stop.set()

    def _count(self, batches):
        for b in batches:
            self.stats["rows_yielded"] += b.n
            self.stats["batches"] += 1
            yield b


def reader_totals(readers: list[DayReader]) -> dict:
    """Rows read, yielded, skipped on a resume (trained by an earlier run) and rejected
    (by reason) over several readers."""
    rejected: dict[str, int] = {}
    for r in readers:
        for k, v in r.stats.items():
            if k.startswith("rejected:"):
                rejected[k[len("rejected:"):]] = rejected.get(k[len("rejected:"):], 0) + v
    return {"rows_read": sum(r.stats["rows_read"] for r in readers),
            "rows_yielded": sum(r.stats["rows_yielded"] for r in readers),
            "rows_resumed": sum(r.stats["rows_resumed"] for r in readers),
            "rows_rejected": rejected,
            "reject_examples": [m for r in readers for m in r.rejects][:10]}
