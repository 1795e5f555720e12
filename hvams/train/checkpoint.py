"""Checkpoints: every rank writes its files, rank 0 writes the manifest last.

``RUN_DIR/ckpt-STEP/`` holds ``server-S.npz`` per server (rows, keys and
optimizer slots of every table it owns), ``dense.pt`` (worker model and
optimizer, identical on all workers) and ``manifest.json`` with the checksum of
every file and the training position. A directory without a valid manifest
is incomplete and never loaded. Servers read every shard file's keys and copy
only the rows they own, in blocks, so a checkpoint loads on any server count
and a server never holds another server's rows.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

MANIFEST = "manifest.json"


def _digest(path: Path, update) -> None:
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            update(view[:n])


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    _digest(path, h.update)
    return h.hexdigest()


def checksum(path: Path) -> str:
    """``crc32:XXXXXXXX`` of a file. A checkpoint guards against torn writes and bit rot, not
    forgery: zlib's crc32 (the zip and gzip check) runs faster than a disk reads, sha256 at
    half a fast disk's rate, and a start checks every file."""
    crc = 0

    def update(block):
        nonlocal crc
        crc = zlib.crc32(block, crc)

    _digest(path, update)
    return f"crc32:{crc:08x}"


def matches(path: Path, recorded: str) -> bool:
    """Whether a file still has its recorded checksum (a bare hex digest: sha256, as
    checkpoints before crc32 recorded)."""
    return (checksum(path) if recorded.startswith("crc32:") else sha256(path)) == recorded


def ckpt_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"ckpt-{step:08d}"


def save_shards(directory: Path, server: int, shards: dict, fault=None) -> dict[str, str]:
    """Write this server's tables (temp file + rename); return {file: checksum}."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for table, shard in shards.items():
        for key, value in shard.state(copy=False).items():
            arrays[f"{table}/{key}"] = value
    path = directory / f"server-{server}.npz"
    tmp = directory / f".server-{server}.npz.tmp"
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        if fault:
            fault()  # tests: die with a half-written checkpoint
    os.replace(tmp, path)
    return {path.name: checksum(path)}


def _to_cpu(obj):
    """Tensors moved to the host, so a checkpoint written on a GPU loads anywhere."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class UnsafeStateError(ValueError):
    """A state file holding objects other than tensors and plain data."""

    user_error = True  # bad input: reported without a traceback


def load_torch(path: str | Path, map_location=None):
    """``torch.load`` with ``weights_only=True``: tensors, numbers, strings, lists and dicts
    only. A pickle that would build any other object (and so could run code) is refused
    before anything in it runs."""
    import pickle

    import torch

    try:
        return torch.load(path, weights_only=True, map_location=map_location)
    except pickle.UnpicklingError as exc:
        why = str(exc).strip().splitlines()
        detail = next((ln for ln in why if "GLOBAL" in ln or "Unsupported" in ln), why[0] if why else "")
        raise UnsafeStateError(f"{path}: refused to load: it holds objects other than tensors and "
                               f"plain data, which could run code when unpickled ({detail.strip()[:200]})"
                               ) from None


def save_torch(directory: Path, name: str, obj) -> dict[str, str]:
    """torch.save atomically; return {file: checksum}."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{name}.tmp"
    torch.save(_to_cpu(obj), tmp)
    os.replace(tmp, directory / name)
    return {name: checksum(directory / name)}


def write_manifest(directory: Path, files: dict[str, str], meta: dict) -> Path:
    manifest = {"format": "hvams-checkpoint/1", "files": files, **meta}
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, directory / MANIFEST)
    return directory / MANIFEST


def is_complete(directory: Path) -> bool:
    """Manifest present and every file matches its checksum (the files checked side by
    side: zlib and hashlib let go of the GIL)."""
    try:
        files = json.loads((directory / MANIFEST).read_text())["files"]
        with ThreadPoolExecutor(max(1, min(len(files), os.cpu_count() or 1))) as pool:
            return all(pool.map(lambda item: matches(directory / item[0], item[1]),
                                files.items()))
    except (OSError, ValueError, KeyError, AttributeError):
        return False


def latest_complete(run_dir: str | Path) -> Path | None:
    """The newest checkpoint directory with a valid manifest."""
    for d in sorted(Path(run_dir).glob("ckpt-*"), reverse=True):
        if d.is_dir() and is_complete(d):
            return d
    return None


def load_manifest(directory: Path) -> dict:
    return json.loads((directory / MANIFEST).read_text())


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

    def rows(self, lo: int, hi: int) -> np.ndarray:
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + lo * self.row * self.dtype.itemsize)
            flat = np.fromfile(fh, self.dtype, (hi - lo) * self.row)
        return flat.reshape((hi - lo, *self.shape[1:]))

    def read_into(self, out: np.ndarray) -> None:
        """The whole array into ``out`` (C-contiguous, same shape): one sequential read,
        no copy."""
        if out.shape != self.shape or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise ValueError(f"{self.path}: an array of {self.shape} {self.dtype} cannot be read "
                             f"into {out.shape} {out.dtype}")
        view = memoryview(out.reshape(-1).view(np.uint8))
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            if fh.readinto(view) != len(view):
                raise ValueError(f"{self.path}: an array ends early")


@functools.lru_cache(maxsize=64)
def _members_of(path: Path, size: int, mtime: int, inode: int, ctime: int
                ) -> dict[str, _Member]:
    import zipfile

    with zipfile.ZipFile(path) as z:
        return {i.filename[:-4]: _Member(path, i) for i in z.infolist() if i.filename.endswith(".npy")}


def _members(path: Path) -> dict[str, _Member]:
    """The arrays of a server file by name (read once per file: a restore asks per table)."""
    st = Path(path).stat()
    return _members_of(Path(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


class OwnedRows(NamedTuple):
    keys: np.ndarray
    rows: np.ndarray | None
    slots: dict          # optimizer slots by name
    step: int            # the table's optimizer step
    meta: dict           # per-row bookkeeping of the row policy (last use), by name


def load_owned_rows(directory: Path, table: str, keep, block: int = 1 << 16,
                    on_keys=None) -> OwnedRows:
    """Rows of ``table`` from every shard file of the manifest whose key ``keep(keys)`` selects.

    Shards are filtered by the *current* owner, so a checkpoint written by S
    servers loads on any S' (re-sharding). A server holds only what it keeps:
    it reads every file's keys, sizes its arrays once, and copies its rows and
    optimizer slots in blocks of ``block`` rows straight from the files (a file it keeps
    whole, in one read per array). ``on_keys(keys)`` is called with the kept keys before
    the arrays are read (a restore starts its key index there, beside the reads).
    """
    files = load_manifest(directory)["files"]
    parts, step = [], 0
    for path in sorted(directory / f for f in files if f.startswith("server-")):
        members = _members(path)
        if f"{table}/keys" not in members:
            continue
        k = members[f"{table}/keys"].rows(0, members[f"{table}/keys"].shape[0])
        picked = np.flatnonzero(keep(k))
        step = max(step, int(members[f"{table}/step"].rows(0, 1)[0]))
        parts.append((members, k[picked], picked))
    if not parts:
        return OwnedRows(np.zeros(0, np.int64), None, {}, 0, {})
    names = ["rows"] + sorted(n.split("/", 1)[1] for n in parts[0][0]
                              if n.startswith((f"{table}/slot_", f"{table}/meta_")))
    n = sum(len(p[1]) for p in parts)
    first = parts[0][0]
    out = {name: np.empty((n, *first[f"{table}/{name}"].shape[1:]), first[f"{table}/{name}"].dtype)
           for name in names}
    keys = np.concatenate([p[1] for p in parts])
    if on_keys is not None:
        on_keys(keys)
    at = 0
    for members, _, picked in parts:
        whole = len(picked) == members[f"{table}/keys"].shape[0]
        for name in names:
            m, dest = members[f"{table}/{name}"], out[name][at:at + len(picked)]
            if whole:  # this server keeps all of the file's rows (e.g. as many servers)
                m.read_into(dest)
                continue
            for lo in range(0, m.shape[0], block):
                a, b = np.searchsorted(picked, (lo, lo + block))
                if b > a:
                    chunk = m.rows(lo, min(lo + block, m.shape[0]))
                    dest[a:b] = chunk[picked[a:b] - lo]
        at += len(picked)
    def prefixed(prefix):
        return {name[len(prefix):]: out[name] for name in names if name.startswith(prefix)}
    return OwnedRows(keys, out["rows"], prefixed("slot_"), step, prefixed("meta_"))


def load_clock(directory: Path, table: str, server: int, num_servers: int
               ) -> tuple[int, int, np.ndarray | None, int]:
    """(day, tick, admission sketch or None, its total) of ``table`` for server ``server`` of
    ``num_servers`` (0, 0, None, 0 when the checkpoint has none). Written by as many
    servers, the sketch is the server's own; else the sum of all of them, which over-counts
    no key less than its own server did."""
    manifest = load_manifest(directory)
    files = sorted(f for f in manifest["files"] if f.startswith("server-"))
    if manifest.get("servers") == num_servers:
        files = [f"server-{server}.npz"]
    day = tick = total = 0
    sketch = None
    for f in files:
        members = _members(directory / f)
        if f"{table}/clock" in members:
            d, t = members[f"{table}/clock"].rows(0, 2)
            day, tick = max(day, int(d)), max(tick, int(t))
        if f"{table}/sketch" in members:
            m = members[f"{table}/sketch"]
            part = m.rows(0, m.shape[0])
            sketch = part if sketch is None else np.minimum(
                sketch.astype(np.uint64) + part, np.iinfo(np.uint32).max).astype(np.uint32)
            total += int(members[f"{table}/sketch_total"].rows(0, 1)[0])
    return day, tick, sketch, total


def collect_manifest(topo, directory: Path, files: dict, meta: dict | None) -> None:
    """Every rank hands in its files (and worker 0 the position); rank 0 writes the manifest last."""
    gathered = topo.world.gather((files, meta), root=0)
    if topo.rank == 0:
        all_files, all_meta = {}, {}
        for f, m in gathered:
            all_files.update(f)
            all_meta.update(m or {})
        write_manifest(directory, all_files, all_meta)
