"""``hvams images ingest``: fill a store from image files or encoded bytes.

Every input row ends in exactly one bucket of the summary, so
``read == stored + unchanged + overwritten + duplicate_skipped + rejected``;
rejected rows go to ``rejects.jsonl`` with their reason.
"""
from __future__ import annotations

import base64
import csv
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from ..keys import image_key_id
from .decode import decode_rgb
from .errors import CorruptImageError
from .lmdb_store import StoreWriter

REJECTS = "rejects.jsonl"


def rows_from_path_csv(csv_path: str | Path, image_root: str | Path | None = None
                       ) -> Iterator[tuple[str, str, bytes | Exception]]:
    """(source, key, bytes-or-error) from a CSV ``image_key,path``.

    Relative paths resolve against ``image_root`` (default: the CSV's folder).
    """
    csv_path = Path(csv_path)
    root = Path(image_root) if image_root else csv_path.parent
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"image_key", "path"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {sorted(missing)}; "
                             "expected a header image_key,path")
        for line, row in enumerate(reader, start=2):
            source = f"{csv_path}:{line}"
            path = Path(row["path"])
            path = path if path.is_absolute() else root / path
            try:
                yield source, row["image_key"], path.read_bytes()
            except OSError as exc:
                yield source, row["image_key"], OSError(f"cannot read {path}: {exc.strerror}")


def rows_from_bytes_table(table_path: str | Path) -> Iterator[tuple[str, str, bytes | Exception]]:
    """(source, key, bytes) from Parquet (``image_key``, binary ``image_bytes``)
    or CSV (``image_key``, base64 ``image_b64``)."""
    table_path = Path(table_path)
    if table_path.suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(table_path)
        names = set(pf.schema_arrow.names)
        if not {"image_key", "image_bytes"} <= names:
            raise ValueError(f"{table_path}: needs columns image_key and image_bytes, has {sorted(names)}")
        row = 0
        for rg in range(pf.num_row_groups):
            t = pf.read_row_group(rg, columns=["image_key", "image_bytes"])
            for key, data in zip(t.column(0).to_pylist(), t.column(1).to_pylist()):
                yield f"{table_path}:row {row}", str(key), data if data is not None else b""
                row += 1
        return
    with open(table_path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not {"image_key", "image_b64"} <= set(reader.fieldnames or []):
            raise ValueError(f"{table_path}: needs a header image_key,image_b64")
        for line, row in enumerate(reader, start=2):
            try:
                data = base64.b64decode(row["image_b64"], validate=True)
            except ValueError as exc:
                data = ValueError(f"image_b64 is not base64: {exc}")
            yield f"{table_path}:{line}", row["image_key"], data


def _check(item):
    source, name, data = item
    if isinstance(data, Exception):
        return source, name, data, str(data)
    try:
        key = image_key_id(name)
    except ValueError as exc:
        return source, name, data, f"bad key: {exc}"
    try:
        decode_rgb(data, key)
    except CorruptImageError as exc:
        return source, name, data, exc.reason
    return source, name, data, None


def _unchecked(item):
    source, name, data = item
    return source, name, data, str(data) if isinstance(data, Exception) else None


def ingest(rows: Iterable[tuple[str, str, bytes | Exception]], store_dir: str | Path,
           num_partitions: int | None = None, on_duplicate: str = "error",
           check: bool = True, threads: int = 4, progress: bool = True) -> dict:
    """Write ``rows`` into the store; return the summary (also in the manifest).

    With ``check`` every image is decoded first, in ``threads`` threads, and
    undecodable ones are rejected instead of stored.
    """
    store_dir = Path(store_dir)
    writer = StoreWriter(store_dir, num_partitions, on_duplicate)
    rejected, read = 0, 0
    rejects_path = store_dir / REJECTS
    with open(rejects_path, "a") as rejects, ThreadPoolExecutor(max(1, threads)) as pool:
        checked = pool.map(_check, rows) if check else map(_unchecked, rows)
        try:
            for source, name, data, reason in tqdm(checked, desc="ingest", unit="img",
                                                   disable=not progress, mininterval=1.0):
                read += 1
                if reason is not None:
                    rejected += 1
                    rejects.write(json.dumps({"source": source, "image_key": name,
                                              "reason": reason}) + "\n")
                    continue
                writer.put(image_key_id(name), name, data)
        except BaseException:
            writer.abort()
            raise
        manifest = writer.close()
    counts = dict(writer.counts)
    summary = {"read": read, "rejected": rejected, "stored": counts.get("stored", 0),
               "unchanged": counts.get("unchanged", 0), "overwritten": counts.get("overwritten", 0),
               "duplicate_skipped": counts.get("duplicate_skipped", 0),
               "store_images": manifest["images"], "partitions": manifest["partitions"],
               "rejects_file": str(rejects_path) if rejected else None}
    accounted = sum(summary[k] for k in ("rejected", "stored", "unchanged", "overwritten",
                                          "duplicate_skipped"))
    assert accounted == read, f"ingest lost rows: read {read}, accounted {accounted}"
    return summary


def format_summary(s: dict) -> str:
    line = (f"read {s['read']} = stored {s['stored']} + unchanged {s['unchanged']} + overwritten "
            f"{s['overwritten']} + duplicate-skipped {s['duplicate_skipped']} + rejected {s['rejected']}")
    tail = f"; the store now holds {s['store_images']} images in {s['partitions']} partitions"
    if s["rejects_file"]:
        tail += f"; rejects listed in {s['rejects_file']}"
    return line + tail
