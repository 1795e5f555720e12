"""Checkpoints: every rank writes its files, rank 0 writes the manifest last.

``RUN_DIR/ckpt-STEP/`` holds ``server-S.npz`` per server (rows, keys and
optimizer slots of every table it owns), ``dense.pt`` (worker model and
optimizer, identical on all workers) and ``manifest.json`` with the sha256 of
every file and the training position. A directory without a valid manifest
is incomplete and never loaded. Servers read every shard file's keys and copy
only the rows they own, in blocks, so a checkpoint loads on any server count
and a server never holds another server's rows.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def ckpt_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"ckpt-{step:08d}"


def save_shards(directory: Path, server: int, shards: dict, fault=None) -> dict[str, str]:
    """Write this server's tables (temp file + rename); return {file: sha256}."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for table, shard in shards.items():
        for key, value in shard.state().items():
            arrays[f"{table}/{key}"] = value
    path = directory / f"server-{server}.npz"
    tmp = directory / f".server-{server}.npz.tmp"
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        if fault:
            fault()  # tests: die with a half-written checkpoint
    os.replace(tmp, path)
    return {path.name: sha256(path)}


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
    """torch.save atomically; return {file: sha256}."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{name}.tmp"
    torch.save(_to_cpu(obj), tmp)
    os.replace(tmp, directory / name)
    return {name: sha256(directory / name)}


def write_manifest(directory: Path, files: dict[str, str], meta: dict) -> Path:
    manifest = {"format": "hvams-checkpoint/1", "files": files, **meta}
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, directory / MANIFEST)
    return directory / MANIFEST


def is_complete(directory: Path) -> bool:
    """Manifest present and every file matches its checksum."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        return all(sha256(directory / f) == h for f, h in manifest["files"].items())
    except (OSError, ValueError, KeyError):
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


def _members(path: Path) -> dict[str, _Member]:
    import zipfile

    with zipfile.ZipFile(path) as z:
        return {i.filename[:-4]: _Member(path, i) for i in z.infolist() if i.filename.endswith(".npy")}


def load_owned_rows(directory: Path, table: str, keep, block: int = 1 << 16
                    ) -> tuple[np.ndarray, np.ndarray, dict, int]:
    """Rows of ``table`` from every shard file of the manifest whose key ``keep(keys)`` selects.

    Shards are filtered by the *current* owner, so a checkpoint written by S
    servers loads on any S' (re-sharding). A server holds only what it keeps:
    it reads every file's keys, sizes its arrays once, and copies its rows and
    optimizer slots in blocks of ``block`` rows straight from the files.
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
        return np.zeros(0, np.int64), None, {}, 0
    names = ["rows"] + sorted(n.split("/", 1)[1] for n in parts[0][0]
                              if n.startswith(f"{table}/slot_"))
    n = sum(len(p[1]) for p in parts)
    first = parts[0][0]
    out = {name: np.empty((n, *first[f"{table}/{name}"].shape[1:]), first[f"{table}/{name}"].dtype)
           for name in names}
    keys = np.concatenate([p[1] for p in parts])
    at = 0
    for members, _, picked in parts:
        for name in names:
            m = members[f"{table}/{name}"]
            for lo in range(0, m.shape[0], block):
                sel = picked[(picked >= lo) & (picked < lo + block)]
                if len(sel):
                    chunk = m.rows(lo, min(lo + block, m.shape[0]))
                    done = np.searchsorted(picked, lo)
                    out[name][at + done:at + done + len(sel)] = chunk[sel - lo]
        at += len(picked)
    slots = {name[len("slot_"):]: out[name] for name in names[1:]}
    return keys, out["rows"], slots, step


def collect_manifest(topo, directory: Path, files: dict, meta: dict | None) -> None:
    """Every rank hands in its files (and worker 0 the position); rank 0 writes the manifest last."""
    gathered = topo.world.gather((files, meta), root=0)
    if topo.rank == 0:
        all_files, all_meta = {}, {}
        for f, m in gathered:
            all_files.update(f)
            all_meta.update(m or {})
        write_manifest(directory, all_files, all_meta)
