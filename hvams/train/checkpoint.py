"""Checkpoints: every rank writes its files, rank 0 writes the manifest last.

``RUN_DIR/ckpt-STEP/`` holds ``server-S.npz`` per server (rows, keys and
optimizer slots of every table it owns), ``dense.pt`` (worker model and
optimizer, identical on all workers) and ``manifest.json`` with the sha256 of
every file and the training position. A directory without a valid manifest
is incomplete and never loaded. Servers load every shard file and keep the
keys they own, so a checkpoint loads on any server count.
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


def load_owned_rows(directory: Path, table: str, keep) -> tuple[np.ndarray, np.ndarray, dict, int]:
    """Rows of ``table`` from every shard file of the manifest whose key ``keep(keys)`` selects.

    Shards are filtered by the *current* owner, so a checkpoint written by S
    servers loads on any S' (re-sharding).
    """
    keys, rows, slots, step = [], [], {}, 0
    files = load_manifest(directory)["files"]
    for path in sorted(directory / f for f in files if f.startswith("server-")):
        with np.load(path) as z:
            if f"{table}/keys" not in z:
                continue
            k = z[f"{table}/keys"]
            mask = keep(k)
            keys.append(k[mask])
            rows.append(z[f"{table}/rows"][mask])
            for name in z.files:
                if name.startswith(f"{table}/slot_"):
                    slots.setdefault(name.split("/slot_", 1)[1], []).append(z[name][mask])
            step = max(step, int(z[f"{table}/step"][0]))
    if not keys:
        return np.zeros(0, np.int64), None, {}, 0
    return (np.concatenate(keys), np.concatenate(rows),
            {k: np.concatenate(v) for k, v in slots.items()}, step)


def collect_manifest(topo, directory: Path, files: dict, meta: dict | None) -> None:
    """Every rank hands in its files (and worker 0 the position); rank 0 writes the manifest last."""
    gathered = topo.world.gather((files, meta), root=0)
    if topo.rank == 0:
        all_files, all_meta = {}, {}
        for f, m in gathered:
            all_files.update(f)
            all_meta.update(m or {})
        write_manifest(directory, all_files, all_meta)
