"""Checkpoints: every rank writes its files, rank 0 writes the manifest last.

``RUN_DIR/ckpt-STEP/`` holds ``server-S.npz`` per server (rows, keys and
optimizer slots of every table it owns), ``dense.pt`` (worker model and
optimizer, identical on all workers) and ``manifest.json`` with the checksum of
every file and the training position. A directory without a valid manifest
is incomplete and never loaded. Servers read every shard file's keys and copy
only the rows they own, in blocks, so a checkpoint loads on any server count
and a server never holds another server's rows (``shard_files.py``).

A *delta* checkpoint (``checkpoint_mode: delta``) holds the same files, but its
``server-S.npz`` has only the row places written since the checkpoint before.
Its manifest names the chain (``chain``: base first, itself last) and the
checksum of every file of the earlier links (``chain_files``), so a delta is
complete only when its whole chain is: a torn or altered link ends the chain
there, and a restore takes the newest complete checkpoint before it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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


@functools.lru_cache(maxsize=4096)
def _digest_of(path: Path, crc: bool, size: int, mtime: int, inode: int) -> str:
    return checksum(path) if crc else sha256(path)


def matches(path: Path, recorded: str) -> bool:
    """Whether a file still has its recorded checksum (a bare hex digest: sha256, as
    checkpoints before crc32 recorded). A file unchanged since it was last checked (same
    size, mtime and inode) is not read again: the base of a delta chain is checked once
    while a start walks back over newer links."""
    st = Path(path).stat()
    return _digest_of(Path(path), recorded.startswith("crc32:"), st.st_size, st.st_mtime_ns,
                      st.st_ino) == recorded


def ckpt_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"ckpt-{step:08d}"


def save_shards(directory: Path, server: int, shards: dict, delta: bool = False,
                fault=None) -> dict[str, str]:
    """Write this server's tables, whole or (``delta``) what changed since the shards were
    last saved (temp file + rename); return {file: checksum}."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for table, shard in shards.items():
        for key, value in (shard.delta_state() if delta else shard.state(copy=False)).items():
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


def all_files(directory: Path, manifest: dict | None = None) -> dict[Path, str]:
    """Every file a checkpoint needs, its chain's included, with its checksum."""
    manifest = manifest if manifest is not None else load_manifest(directory)
    out = {directory.parent / f: c for f, c in manifest.get("chain_files", {}).items()}
    out.update({directory / f: c for f, c in manifest["files"].items()})
    return out


def incomplete_because(directory: Path) -> str | None:
    """Why a checkpoint cannot be loaded (None: it can): its manifest is missing, or a file
    of it or of its chain is missing or fails its checksum. Its own files are checked first,
    then the chain's, each group side by side (zlib and hashlib let go of the GIL); the
    first failure ends the check."""
    try:
        manifest = load_manifest(directory)
        own = {directory / f: c for f, c in manifest["files"].items()}
        chain = {p: c for p, c in all_files(directory, manifest).items() if p not in own}
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return f"no readable {MANIFEST}"

    def bad(item):
        path, recorded = item
        try:
            return None if matches(path, recorded) else f"{path} fails its checksum"
        except OSError:
            return f"{path} is missing"

    with ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
        for group in (own, chain):
            why = next((w for w in pool.map(bad, group.items()) if w), None)
            if why:
                return why
    return None


def is_complete(directory: Path) -> bool:
    """Manifest present and every file of the checkpoint and its chain matches its checksum."""
    return incomplete_because(directory) is None


def latest_complete(run_dir: str | Path, log=None) -> Path | None:
    """The newest complete checkpoint directory; ``log(line)`` hears why newer ones were
    passed over."""
    for d in sorted(Path(run_dir).glob("ckpt-*"), reverse=True):
        if not d.is_dir():
            continue
        why = incomplete_because(d)
        if why is None:
            return d
        if log is not None:
            log(f"{d.name} is incomplete ({why})")
    return None


def chain_meta(run_dir: Path, previous: list[str] | None, name: str) -> dict:
    """The manifest keys of a delta ``name`` whose chain so far is ``previous`` (base first)."""
    before = load_manifest(Path(run_dir) / previous[-1])
    files = {str(p.relative_to(Path(run_dir))): c
             for p, c in all_files(Path(run_dir) / previous[-1], before).items()}
    return {"kind": "delta", "chain": [*previous, name], "chain_files": files}


def _chain_of(directory: Path) -> list[str] | None:
    """The links a checkpoint needs, itself included (None: no readable manifest)."""
    try:
        return load_manifest(directory).get("chain") or [directory.name]
    except (OSError, ValueError, AttributeError):
        return None


def prune(current: Path, keep: int) -> list[str]:
    """Keep checkpoint ``current`` (just written), the ``keep - 1`` newest before it with a
    readable manifest, and the links their chains need; remove every other ``ckpt-*`` of the
    run (one newer than ``current`` is from a timeline a resume left behind). The names
    removed."""
    import shutil

    dirs = sorted((d for d in current.parent.glob("ckpt-*") if d.is_dir()), reverse=True)
    chains = [_chain_of(current) or [current.name]]
    for d in dirs:
        if len(chains) >= keep:
            break
        if d.name < current.name and (chain := _chain_of(d)) is not None:
            chains.append(chain)
    needed = {link for chain in chains for link in chain}
    gone = [d for d in dirs if d.name not in needed]
    for d in gone:
        shutil.rmtree(d, ignore_errors=True)
    return [d.name for d in gone]


def load_manifest(directory: Path) -> dict:
    return json.loads((directory / MANIFEST).read_text())


def collect_manifest(topo, directory: Path, files: dict, meta: dict | None,
                     keep: int = 0) -> None:
    """Every rank hands in its files (worker 0 the position, server 0 the chain); rank 0
    writes the manifest last, then keeps the newest ``keep`` checkpoints (0: all)."""
    gathered = topo.world.gather((files, meta), root=0)
    if topo.rank == 0:
        files, meta = {}, {}
        for f, m in gathered:
            files.update(f)
            meta.update(m or {})
        write_manifest(directory, files, meta)
        if keep:
            prune(directory, keep)
