"""LMDB image store: P partition files plus a manifest.

Layout of a store directory::

    manifest.json          counts, formats, partition checksums
    part-000.lmdb/ ...     key = 8-byte big-endian image id, value = bytes as given
    rejects.jsonl          inputs that ingest refused, with the reason

Each partition has two named databases: ``images`` (id -> encoded bytes,
stored untouched) and ``names`` (id -> the original key string).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import lmdb
import numpy as np

from ..keys import key_bytes, key_from_bytes
from .decode import sniff_format
from .errors import MissingImageError
from .partition import (DEFAULT_PARTITIONS, partition_file, partition_of,
                        partitions_of_server)

MANIFEST = "manifest.json"
INITIAL_MAP_SIZE = 64 << 20


class MissingPartitionError(FileNotFoundError):
    """A partition the store's manifest lists, or a server owns, is not on this host."""

    user_error = True  # a deployment mistake: one line, no traceback


class DuplicateKeyError(ValueError):
    """A key already stored with different bytes (``--on-duplicate error``)."""


def _open_env(path: Path, readonly: bool, map_size: int = INITIAL_MAP_SIZE) -> lmdb.Environment:
    env = lmdb.open(str(path), map_size=map_size, max_dbs=2, readonly=readonly, lock=not readonly,
                    readahead=False, subdir=True, create=not readonly)
    if not readonly:
        # Both named databases exist in every partition, even an empty one,
        # so readers can open them without write access.
        env.open_db(b"images")
        env.open_db(b"names")
    return env


def read_manifest(root: str | os.PathLike) -> dict:
    path = Path(root) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: no image store manifest (run `hvams images ingest`)")
    return json.loads(path.read_text())


class StoreWriter:
    """Batched, idempotent writer of a partitioned store.

    Re-writing a key with the same bytes is a no-op; with other bytes it is
    an error naming the key unless ``on_duplicate`` is 'skip' or 'overwrite'.
    """

    def __init__(self, root: str | os.PathLike, num_partitions: int | None = None,
                 on_duplicate: str = "error", batch_size: int = 2000):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if (self.root / MANIFEST).exists():
            existing = read_manifest(self.root)["partitions"]
            if num_partitions not in (None, existing):
                raise ValueError(f"{self.root} has {existing} partitions; cannot extend it "
                                 f"with {num_partitions}")
            num_partitions = existing
        self.P = num_partitions or DEFAULT_PARTITIONS
        if on_duplicate not in ("error", "skip", "overwrite"):
            raise ValueError(f"on_duplicate must be error, skip or overwrite, not {on_duplicate!r}")
        self.on_duplicate = on_duplicate
        self.batch_size = batch_size
        self._envs: dict[int, lmdb.Environment] = {}
        self._pending: dict[int, list[tuple[int, str, bytes]]] = {}
        self.counts = Counter()

    def _env(self, p: int) -> lmdb.Environment:
        if p not in self._envs:
            self._envs[p] = _open_env(self.root / partition_file(p), readonly=False)
        return self._envs[p]

    def put(self, key_id: int, name: str, data: bytes) -> None:
        p = int(partition_of(np.array([key_id]), self.P)[0])
        self._pending.setdefault(p, []).append((key_id, name, data))
        if len(self._pending[p]) >= self.batch_size:
            self._flush(p)

    def _flush(self, p: int) -> None:
        items = self._pending.pop(p, [])
        if not items:
            return
        env = self._env(p)
        while True:
            try:
                self._write(env, items)
                return
            except lmdb.MapFullError:
                # The transaction was aborted whole: grow the map and redo it.
                env.set_mapsize(env.info()["map_size"] * 2)

    def _write(self, env: lmdb.Environment, items) -> None:
        images, names = env.open_db(b"images"), env.open_db(b"names")
        counts = Counter()
        with env.begin(write=True) as txn:
            for key_id, name, data in items:
                kb = key_bytes(key_id)
                old = txn.get(kb, db=images)
                if old is not None:
                    if bytes(old) == data:
                        counts["unchanged"] += 1
                        continue
                    if self.on_duplicate == "error":
                        raise DuplicateKeyError(
                            f"image key {name!r} (id {key_id}) is already stored with other bytes "
                            f"({len(old)} vs {len(data)} bytes); pass --on-duplicate skip|overwrite")
                    if self.on_duplicate == "skip":
                        counts["duplicate_skipped"] += 1
                        continue
                    counts["overwritten"] += 1
                else:
                    counts["stored"] += 1
                txn.put(kb, data, db=images)
                txn.put(kb, name.encode("utf-8"), db=names)
        self.counts.update(counts)

    def close(self) -> dict:
        """Flush everything, then rewrite the manifest from the partitions."""
        try:
            for p in list(self._pending):
                self._flush(p)
        finally:
            self.abort()
        return write_manifest(self.root, self.P)

    def abort(self) -> None:
        """Close the partitions; what was committed so far stays committed."""
        self._pending.clear()
        for env in self._envs.values():
            env.sync()
            env.close()
        self._envs.clear()


def partition_summary(path: Path) -> dict:
    """Count, bytes, formats and a checksum of one partition's contents."""
    env = _open_env(path, readonly=True)
    h = hashlib.blake2b(digest_size=16)
    formats, count, total = Counter(), 0, 0
    with env.begin() as txn:
        for kb, value in txn.cursor(db=env.open_db(b"images", txn=txn, create=False)):
            value = bytes(value)
            h.update(kb)
            h.update(len(value).to_bytes(8, "little"))
            h.update(value)
            formats[sniff_format(value)] += 1
            count += 1
            total += len(value)
    env.close()
    return {"images": count, "bytes": total, "formats": dict(formats), "checksum": h.hexdigest()}


def write_manifest(root: Path, num_partitions: int) -> dict:
    """Scan all partitions and write ``manifest.json`` atomically."""
    parts, formats, count, total = {}, Counter(), 0, 0
    for p in range(num_partitions):
        path = root / partition_file(p)
        if not path.exists():
            _open_env(path, readonly=False).close()  # an empty partition is still a partition
        s = partition_summary(path)
        parts[partition_file(p)] = s
        formats.update(s["formats"])
        count += s["images"]
        total += s["bytes"]
    manifest = {"format": "hvams-image-store/1", "partitions": num_partitions, "images": count,
                "bytes": total, "formats": dict(formats), "partition_files": parts}
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, root / MANIFEST)
    return manifest


class ImageStore:
    """Read side for one server: only the partitions that server owns.

    ``server=None`` opens every partition (export, verify, single process).
    """

    def __init__(self, root: str | os.PathLike, server: int | None = None, num_servers: int = 1):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.P = int(self.manifest["partitions"])
        self.server, self.num_servers = server, num_servers
        owned = range(self.P) if server is None else partitions_of_server(server, num_servers, self.P)
        self.partitions = list(owned)
        for p in owned:
            if not (self.root / partition_file(p)).is_dir():
                raise MissingPartitionError(
                    f"image store {self.root}: partition {p} ({partition_file(p)}) is missing"
                    + (f"; server {server} of {num_servers} owns it, so its host needs it "
                       f"(hvams images place)" if server is not None else ""))
        self._envs = {p: _open_env(self.root / partition_file(p), readonly=True) for p in owned}
        self._dbs = {p: (env.open_db(b"images", create=False), env.open_db(b"names", create=False))
                     for p, env in self._envs.items()}

    def __len__(self) -> int:
        total = 0
        for p in self.partitions:
            with self._envs[p].begin() as txn:
                total += txn.stat(self._dbs[p][0])["entries"]
        return total

    def get_many(self, key_ids) -> list[bytes | MissingImageError]:
        """Encoded bytes of each id, or a MissingImageError in its place."""
        key_ids = np.asarray(key_ids, dtype=np.int64)
        parts = partition_of(key_ids, self.P)
        out: list = [None] * len(key_ids)
        order = np.argsort(parts, kind="stable")
        txns = {}
        try:
            for i in order:
                p, k = int(parts[i]), int(key_ids[i])
                if p not in self._envs:
                    raise ValueError(f"image id {k} lives in partition {p}, which server "
                                     f"{self.server} of {self.num_servers} does not own")
                if p not in txns:
                    txns[p] = self._envs[p].begin(buffers=False)
                value = txns[p].get(key_bytes(k), db=self._dbs[p][0])
                out[i] = value if value is not None else MissingImageError(k, "not in the store")
        finally:
            for txn in txns.values():
                txn.abort()
        return out

    def get(self, key_id: int) -> bytes:
        value = self.get_many([key_id])[0]
        if isinstance(value, MissingImageError):
            raise value
        return value

    def name(self, key_id: int) -> str | None:
        p = int(partition_of(np.array([key_id]), self.P)[0])
        with self._envs[p].begin() as txn:
            raw = txn.get(key_bytes(key_id), db=self._dbs[p][1])
        return raw.decode("utf-8") if raw is not None else None

    def iter_partition(self, p: int):
        """(id, bytes) pairs of partition ``p`` in id order."""
        with self._envs[p].begin() as txn:
            for kb, value in txn.cursor(db=self._dbs[p][0]):
                yield key_from_bytes(kb), bytes(value)

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()
