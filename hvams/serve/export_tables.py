"""An export's ID tables and image embeddings: whole, or as a delta on an earlier export.

A full export's ``tables/<table>.npz`` and ``image_embeddings.npz`` hold every key
(sorted) with its row. A delta export (``hvams export --since OLD``) holds, per
file, only the keys whose row is new or differs (bit for bit) from OLD's, and
``deleted``: OLD's keys the model no longer has. Its manifest names OLD
(``since``, relative to the delta) and the sha256 of OLD's manifest, so a
delta applies only to the export it was made against. ``load_tables`` follows
the chain back to a full export and applies each delta in turn.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

IMAGES = "image_embeddings"   # the image embeddings' file (and name among the tables)


class ExportError(ValueError):
    """An export that cannot be read as asked."""

    user_error = True  # bad input: reported without a traceback


def read_manifest(model_dir: Path) -> dict:
    path = Path(model_dir) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: not a readable export manifest ({exc})") from None


def manifest_digest(model_dir: Path) -> str:
    return hashlib.sha256((Path(model_dir) / "manifest.json").read_bytes()).hexdigest()


def diff(old: tuple[np.ndarray, np.ndarray], new: tuple[np.ndarray, np.ndarray]
         ) -> dict[str, np.ndarray]:
    """What turns table ``old`` into ``new`` (both (sorted keys, rows)): the keys whose row is
    new or changed, with those rows, and the keys deleted."""
    (ok, orow), (nk, nrow) = old, new
    pos = np.minimum(np.searchsorted(ok, nk), max(len(ok) - 1, 0))
    known = (ok[pos] == nk) if len(ok) else np.zeros(len(nk), bool)
    same = np.zeros(len(nk), bool)
    if known.any():
        a, b = orow[pos[known]], nrow[known]
        same[known] = (a.view(np.uint8).reshape(len(a), -1)
                       == b.view(np.uint8).reshape(len(b), -1)).all(axis=1)
    changed = ~same
    return {"keys": nk[changed], "rows": nrow[changed],
            "deleted": np.setdiff1d(ok, nk, assume_unique=True)}


def apply(base: tuple[np.ndarray, np.ndarray], delta: dict[str, np.ndarray]
          ) -> tuple[np.ndarray, np.ndarray]:
    """``base`` (sorted keys, rows) with a delta's deletions and rows applied, sorted."""
    keys, rows = base
    stay = ~np.isin(keys, delta["deleted"]) & ~np.isin(keys, delta["keys"])
    keys = np.concatenate([keys[stay], delta["keys"]])
    rows = np.concatenate([rows[stay], delta["rows"]])
    order = np.argsort(keys, kind="stable")
    return keys[order], rows[order]


def _files(model_dir: Path) -> dict[str, Path]:
    out = {p.stem: p for p in sorted((Path(model_dir) / "tables").glob("*.npz"))}
    if (Path(model_dir) / f"{IMAGES}.npz").exists():
        out[IMAGES] = Path(model_dir) / f"{IMAGES}.npz"
    return out


def _read(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def chain_of(model_dir: str | Path) -> list[Path]:
    """An export and the exports it is a delta on, newest first, each checked to be the one
    it was made against."""
    chain = [Path(model_dir).resolve()]
    while (manifest := read_manifest(chain[-1])).get("kind") == "delta":
        base = (chain[-1] / manifest["since"]).resolve()
        if base in chain:
            raise ExportError(f"{chain[0]}: its chain of --since exports comes back to {base}")
        if not (base / "manifest.json").exists():
            raise ExportError(f"{chain[-1]}: is a delta on {base}, which is not there")
        if manifest_digest(base) != manifest["since_manifest_sha256"]:
            raise ExportError(f"{chain[-1]}: is a delta on another export than the one now at "
                              f"{base} (its manifest.json differs)")
        chain.append(base)
    return chain


def load_tables(model_dir: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Every table of an export as ``{"keys", "rows"}`` (plus ``missing`` for the image
    embeddings), its ``since`` chain applied, oldest first."""
    chain = chain_of(model_dir)
    tables = {name: _read(path) for name, path in _files(chain[-1]).items()}
    for model_dir in reversed(chain[:-1]):
        apply_export(tables, model_dir)
    return tables


def apply_export(tables: dict, model_dir: Path) -> None:
    """Apply export ``model_dir`` (a delta) to ``tables`` (its base's, by name), in place."""
    for name, path in _files(model_dir).items():
        delta = _read(path)
        old = tables.get(name)
        if old is not None and (old["rows"].shape[1:] != delta["rows"].shape[1:]
                                or old["rows"].dtype != delta["rows"].dtype):
            raise ExportError(f"{path}: rows of {delta['rows'].shape[1:]} "
                              f"{delta['rows'].dtype} cannot apply to its base's "
                              f"{old['rows'].shape[1:]} {old['rows'].dtype}")
        old = old if old is not None else {
            "keys": np.zeros(0, np.int64),
            "rows": np.zeros((0, *delta["rows"].shape[1:]), delta["rows"].dtype)}
        keys, rows = apply((old["keys"], old["rows"]), delta)
        tables[name] = {**{k: v for k, v in delta.items() if k not in ("keys", "rows", "deleted")},
                        "keys": keys, "rows": rows}


def changes_since(since: Path, new: dict[str, dict[str, np.ndarray]]) -> dict:
    """What turns export ``since`` into ``new`` (whole tables by name), table by table:
    the delta's arrays, and the table's row count."""
    old = load_tables(since)
    out = {}
    for name, table in new.items():
        base = old.get(name, {"keys": np.zeros(0, np.int64), "rows": table["rows"][:0]})
        if base["rows"].shape[1:] != table["rows"].shape[1:] or base["rows"].dtype != table["rows"].dtype:
            raise ExportError(f"--since {since}: its {name!r} rows are {base['rows'].shape[1:]} "
                              f"{base['rows'].dtype}, this model's {table['rows'].shape[1:]} "
                              f"{table['rows'].dtype}: export it whole")
        d = diff((base["keys"], base["rows"]), (table["keys"], table["rows"]))
        out[name] = ({**d, **{k: v for k, v in table.items() if k not in ("keys", "rows")}},
                     len(table["keys"]))
    return out


def write_delta(out: Path, since: Path, changes: dict) -> dict:
    """Write ``changes`` (``changes_since``) into ``out`` as a delta on export ``since``; the
    manifest keys that say so, with what each table's delta holds."""
    counts = {}
    for name, (arrays, rows) in changes.items():
        path = out / f"{IMAGES}.npz" if name == IMAGES else out / "tables" / f"{name}.npz"
        np.savez(path, **arrays)
        counts[name] = {"rows": int(rows), "changed": int(len(arrays["keys"])),
                        "deleted": int(len(arrays["deleted"]))}
    return {"kind": "delta", "since": os.path.relpath(Path(since).resolve(), Path(out).resolve()),
            "since_manifest_sha256": manifest_digest(since), "since_checkpoint":
            read_manifest(since).get("checkpoint"), "delta_counts": counts}
