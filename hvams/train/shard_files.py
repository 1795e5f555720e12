"""Reading the servers' table files of a checkpoint: full ones, and chains of deltas.

A full checkpoint's ``server-S.npz`` holds, per table, the rows in the server's
row order with their keys, optimizer slots and bookkeeping. A delta's holds the
row places (``positions``) written since the checkpoint before, what they hold
now, the row count (``count``) and the keys deleted (``deleted``). ``ServerFile``
reads server S's state at the newest link of a chain (base, delta, delta, ...):
a place takes its value from the newest link that wrote it, else from the base,
so the state read is the one a full checkpoint of that step holds, row order
included. Arrays are read straight from the uncompressed ``.npz`` members, in
blocks, so a server never holds rows it does not keep.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import checkpoint as ckpt


class _Member:
    """One array of an uncompressed .npz, read in row blocks straight from the file."""

    def __init__(self, path: Path, info):
        import zipfile

        self.path = path
        with open(path, "rb") as fh:
            fh.seek(info.header_offset)
            local = fh.read(30)
            name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
            fh.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(fh)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            self.shape, fortran, self.dtype = read(fh)
            self.offset = fh.tell()
        if info.compress_type != zipfile.ZIP_STORED or fortran or self.dtype.hasobject:
            raise ValueError(f"{path}: {info.filename} is not a plain stored array")
        self.row = int(np.prod(self.shape[1:], dtype=np.int64))

    def rows(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        hi = self.shape[0] if hi is None else hi
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + lo * self.row * self.dtype.itemsize)
            flat = np.fromfile(fh, self.dtype, (hi - lo) * self.row)
        if len(flat) != (hi - lo) * self.row:
            raise ValueError(f"{self.path}: an array ends early")
        return flat.reshape((hi - lo, *self.shape[1:]))

    def read_into(self, out: np.ndarray) -> None:
        """The first ``len(out)`` rows into ``out`` (C-contiguous): one sequential read, no
        copy."""
        if (out.shape[1:] != self.shape[1:] or len(out) > self.shape[0]
                or out.dtype != self.dtype or not out.flags.c_contiguous):
            raise ValueError(f"{self.path}: an array of {self.shape} {self.dtype} cannot be read "
                             f"into {out.shape} {out.dtype}")
        view = memoryview(out.reshape(-1).view(np.uint8))
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            if fh.readinto(view) != len(view):
                raise ValueError(f"{self.path}: an array ends early")

    def take(self, positions: np.ndarray, out: np.ndarray, block: int = 1 << 16) -> None:
        """Rows ``positions`` (sorted) into ``out``, read in blocks of ``block`` rows."""
        if len(positions) == self.shape[0]:  # every row (e.g. as many servers as wrote it)
            self.read_into(out)
            return
        for lo in range(0, self.shape[0], block):
            a, b = np.searchsorted(positions, (lo, lo + block))
            if b > a:
                chunk = self.rows(lo, min(lo + block, self.shape[0]))
                out[a:b] = chunk[positions[a:b] - lo]


@functools.lru_cache(maxsize=64)
def _members_of(path: Path, size: int, mtime: int, inode: int, ctime: int
                ) -> dict[str, _Member]:
    import zipfile

    with zipfile.ZipFile(path) as z:
        return {i.filename[:-4]: _Member(path, i) for i in z.infolist() if i.filename.endswith(".npy")}


def members(path: Path) -> dict[str, _Member]:
    """The arrays of a server file by name (read once per file: a restore asks per table)."""
    st = Path(path).stat()
    return _members_of(Path(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


class ServerFile:
    """Server S's tables at the newest link of a chain: ``paths`` are its files, base first."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self.base = members(paths[0])
        self.deltas = [members(p) for p in paths[1:]]
        self._plans: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._positions: dict[tuple[int, str], np.ndarray] = {}
        if any(n.endswith("/positions") for n in self.base):
            raise ValueError(f"{paths[0]}: is a delta, but its chain reads it as the full base")

    def _link(self, j: int, table: str, name: str) -> _Member:
        """Array ``name`` of ``table`` in delta ``j`` (1: the first after the base)."""
        try:
            return self.deltas[j - 1][f"{table}/{name}"]
        except KeyError:
            raise ValueError(f"{self.paths[j]}: holds no {table}/{name}: not a delta of this "
                             f"chain's tables") from None

    @property
    def newest(self) -> dict[str, _Member]:
        return (self.deltas or [self.base])[-1]

    def has(self, table: str) -> bool:
        return f"{table}/keys" in self.base

    def _places(self, j: int, table: str) -> np.ndarray:
        """The row places delta ``j`` wrote in ``table`` (read once, for every array)."""
        if (j, table) not in self._positions:
            self._positions[j, table] = self._link(j, table, "positions").rows()
        return self._positions[j, table]

    def count(self, table: str) -> int:
        if self.deltas:
            return int(self._link(len(self.deltas), table, "count").rows(0, 1)[0])
        return self.base[f"{table}/keys"].shape[0]

    def step(self, table: str) -> int:
        return int(self.newest[f"{table}/step"].rows(0, 1)[0])

    def names(self, table: str) -> list[str]:
        """The per-row arrays besides keys: rows, then slots and bookkeeping by name."""
        return ["rows"] + sorted(n.split("/", 1)[1] for n in self.base
                                 if n.startswith((f"{table}/slot_", f"{table}/meta_")))

    def like(self, table: str, name: str) -> _Member:
        return self.base[f"{table}/{name}"]

    def _sources(self, table: str) -> tuple[np.ndarray, np.ndarray]:
        """Per row place: the link it is read from (0: the base) and its index there (kept
        for the file's other arrays)."""
        if table in self._plans:
            return self._plans[table]
        n, n0 = self.count(table), self.base[f"{table}/keys"].shape[0]
        src, at = np.zeros(n, np.int32), np.arange(n, dtype=np.int64)
        for j in range(1, len(self.deltas) + 1):
            pos = self._places(j, table)
            live = pos < n
            src[pos[live]], at[pos[live]] = j, np.flatnonzero(live)
        if (at[src == 0] >= n0).any():
            raise ValueError(f"{self.paths[-1]}: table {table!r}: the chain leaves row places "
                             f"past its base's {n0} rows unwritten")
        self._plans[table] = src, at
        return src, at

    def read(self, table: str, name: str, picked: np.ndarray, out: np.ndarray,
             block: int = 1 << 16) -> None:
        """Array ``name`` of ``table`` at row places ``picked`` (sorted) into ``out``, the
        base read in blocks of ``block`` rows."""
        base = self.base[f"{table}/{name}"]
        n = self.count(table)
        if not self.deltas:
            base.take(picked, out, block)
            return
        if len(picked) == n:  # every place: the base, then each link written over it
            n0 = min(n, base.shape[0])
            base.read_into(out[:n0])
            past = np.zeros(n - n0, bool)   # places past the base: each must come from a link
            for j in range(1, len(self.deltas) + 1):
                pos = self._places(j, table)
                values = self._link(j, table, name).rows()
                live = pos < n
                out[pos[live]] = values[live]
                past[pos[live & (pos >= n0)] - n0] = True
            if not past.all():
                raise ValueError(f"{self.paths[-1]}: table {table!r}: the chain leaves row "
                                 f"places past its base's {n0} rows unwritten")
            return
        src, at = self._sources(table)
        mine = src[picked]
        for j in range(len(self.deltas) + 1):
            sel = np.flatnonzero(mine == j)
            if not len(sel):
                continue
            if j == 0:
                part = np.empty((len(sel), *base.shape[1:]), base.dtype)
                base.take(picked[sel], part, block)
            else:
                part = self._link(j, table, name).rows()[at[picked[sel]]]
            out[sel] = part

    def keys(self, table: str) -> np.ndarray:
        out = np.empty(self.count(table), np.int64)
        self.read(table, "keys", np.arange(len(out)), out)
        return out


def chain_paths(directory: Path, name: str) -> list[Path]:
    """The files ``name`` of a checkpoint's chain, base first (just its own for a full one)."""
    chain = ckpt.load_manifest(directory).get("chain") or [directory.name]
    return [directory.parent / link / name for link in chain]


def server_files(directory: Path) -> list[ServerFile]:
    files = ckpt.load_manifest(directory)["files"]
    return [ServerFile(chain_paths(directory, f))
            for f in sorted(f for f in files if f.startswith("server-"))]


class OwnedRows(NamedTuple):
    keys: np.ndarray
    rows: np.ndarray | None
    slots: dict          # optimizer slots by name
    step: int            # the table's optimizer step
    meta: dict           # per-row bookkeeping of the row policy (last use), by name


def load_owned_rows(directory: Path, table: str, keep, block: int = 1 << 16,
                    on_keys=None) -> OwnedRows:
    """Rows of ``table`` from every server file of the checkpoint whose key ``keep(keys)``
    selects.

    Files are filtered by the *current* owner, so a checkpoint written by S
    servers loads on any S' (re-sharding). A server holds only what it keeps: it
    reads every file's keys, sizes its arrays once, and copies its rows and
    optimizer slots in blocks of ``block`` rows straight from the files (a file it
    keeps whole, in one read per array). ``on_keys(keys)`` is called with the kept keys before the
    arrays are read (a restore starts its key index there, beside the reads).
    """
    parts, step = [], 0
    for f in server_files(directory):
        if not f.has(table):
            continue
        k = f.keys(table)
        picked = np.flatnonzero(keep(k))
        step = max(step, f.step(table))
        parts.append((f, k[picked], picked))
    if not parts:
        return OwnedRows(np.zeros(0, np.int64), None, {}, 0, {})
    first = parts[0][0]
    names = first.names(table)
    n = sum(len(p[1]) for p in parts)
    out = {name: np.empty((n, *first.like(table, name).shape[1:]), first.like(table, name).dtype)
           for name in names}
    keys = np.concatenate([p[1] for p in parts])
    if on_keys is not None:
        on_keys(keys)
    at = 0
    for f, _, picked in parts:
        for name in names:
            f.read(table, name, picked, out[name][at:at + len(picked)], block)
        at += len(picked)

    def prefixed(prefix):
        return {name[len(prefix):]: out[name] for name in names if name.startswith(prefix)}
    return OwnedRows(keys, out["rows"], prefixed("slot_"), step, prefixed("meta_"))


def load_clock(directory: Path, table: str, server: int, num_servers: int
               ) -> tuple[int, int, np.ndarray | None, int]:
    """(day, tick, admission sketch or None, its total) of ``table`` for server ``server`` of
    ``num_servers`` (0, 0, None, 0 when the checkpoint has none). Written by as many
    servers, the sketch is the server's own; else the sum of all of them, which over-counts
    no key less than its own server did. Every link of a chain holds them whole."""
    manifest = ckpt.load_manifest(directory)
    files = sorted(f for f in manifest["files"] if f.startswith("server-"))
    if manifest.get("servers") == num_servers:
        files = [f"server-{server}.npz"]
    day = tick = total = 0
    sketch = None
    for f in files:
        arrays = members(directory / f)
        if f"{table}/clock" in arrays:
            d, t = arrays[f"{table}/clock"].rows(0, 2)
            day, tick = max(day, int(d)), max(tick, int(t))
        if f"{table}/sketch" in arrays:
            part = arrays[f"{table}/sketch"].rows()
            sketch = part if sketch is None else np.minimum(
                sketch.astype(np.uint64) + part, np.iinfo(np.uint32).max).astype(np.uint32)
            total += int(arrays[f"{table}/sketch_total"].rows(0, 1)[0])
    return day, tick, sketch, total

