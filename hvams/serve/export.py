"""``hvams export RUN_DIR --out MODEL_DIR``: everything a ranking server needs.

As in the paper's serving set-up, image embeddings are precomputed: the
trained shared image model embeds every image of the store (in parallel, one
process per group of partitions). The export holds

    manifest.json            what is here, sha256 of every file, the source checkpoint
    schema.json              the sample schema
    model_state.pt           the worker model's tensors (rebuilt from manifest["model_config"])
    tables/<table>.npz       ID embedding tables (sorted keys, rows)
    image_embeddings.npz     image key -> 12-d embedding, plus the missing-image row
    image_model.pt           the image model's tensors, for images that arrive later
                             (manifest["image_model"]: how to rebuild it and prepare inputs)

``--since OLD`` writes the same files holding only what changed since export OLD, and
the keys deleted (``export_tables.py``): a serving host that has OLD loads the day's
model from a fraction of the bytes.
"""
from __future__ import annotations

import json
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig, load_config
from ..data.schema import Schema
from ..imaging.embed import embedder_for
from ..imaging.source import ImageSource
from ..models import build_model
from ..models.image import build_image_model
from ..models.inputs import model_fields
from ..store.lmdb_store import ImageStore, read_manifest
from ..strategies import strategy_for
from ..train import checkpoint as ckpt
from ..train import shard_files
from . import export_tables
from .image_model import IMAGE_MODEL_FILE, image_model_manifest


def load_trained(run_dir: Path, d: Path | None = None
                 ) -> tuple[TrainConfig, Path, dict, dict | None]:
    """Config, checkpoint ``d`` (default: the newest complete one), worker model state,
    image model state."""
    cfg = load_config(run_dir / "config.yaml")
    d = d or ckpt.latest_complete(run_dir)
    if d is None:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint to export")
    dense = ckpt.load_torch(d / "dense.pt")
    image = strategy_for(cfg).image_weights(d)
    if cfg.uses_images and image is None:
        raise FileNotFoundError(f"{d}: holds no image model (strategy {cfg.strategy}), so "
                                f"{cfg.model} cannot be exported")
    return cfg, d, dense, image


def read_newest(run_dir: Path, tries: int = 3):
    """``load_trained`` and the ID tables of the newest complete checkpoint. A job still
    running in ``run_dir`` may remove that checkpoint while it is read (``keep_checkpoints``,
    once its next one is complete): then the newest one again."""
    for _ in range(tries):
        d = ckpt.latest_complete(run_dir)
        try:
            cfg, d, dense, image = load_trained(run_dir, d)
            schema = Schema.load(cfg.data)
            return cfg, d, dense, image, schema, _tables(d, schema, cfg.emb_dim)
        except FileNotFoundError:
            if d is None or ckpt.latest_complete(run_dir) in (d, None):
                raise  # not a checkpoint that a newer one replaced
    raise export_tables.ExportError(
        f"{run_dir}: its newest checkpoint was removed while it was read, {tries} times (the "
        "job writing it keeps few checkpoints: keep_checkpoints); export again")


def _tables(d: Path, schema: Schema, dim: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for table in schema.tables:
        keys, rows = shard_files.load_owned_rows(d, table, lambda k: np.ones(len(k), bool))[:2]
        order = np.argsort(keys)
        out[table] = (keys[order], rows[order] if rows is not None else np.zeros((0, dim), np.float32))
    return out


def _embed_partitions(args) -> tuple[np.ndarray, np.ndarray, dict]:
    root, parts, cfg_dict, state, batch = args
    torch.set_num_threads(1)
    cfg = TrainConfig(**cfg_dict)
    model = build_image_model(cfg)
    model.load_state_dict(state)
    model.eval()
    embedder = embedder_for(model, 0)
    store = ImageStore(root)
    source = ImageSource(store, cfg.image_size, cache=0, max_pixels=cfg.max_pixels)
    keys = np.array([k for p in parts for k, _ in store.iter_partition(p)], np.int64)
    out = np.zeros((len(keys), cfg.emb_dim), np.float32)
    with torch.no_grad():
        for lo in range(0, len(keys), batch):
            k = keys[lo:lo + batch]
            out[lo:lo + batch] = embedder.embed_from(source, k).numpy()
    store.close()
    return keys, out, dict(source.counts)


def export_images(cfg: TrainConfig, state: dict, workers: int = 2, batch: int = 512):
    """(sorted keys, embeddings, counts) of every image in the store."""
    P = read_manifest(cfg.images_dir)["partitions"]
    groups = [list(range(P))[i::workers] for i in range(workers)]
    jobs = [(str(cfg.images_dir), g, cfg.to_dict(), state, batch) for g in groups if g]
    keys, embs, counts = [], [], {}
    with ProcessPoolExecutor(len(jobs)) as pool:
        for k, e, c in pool.map(_embed_partitions, jobs):
            keys.append(k)
            embs.append(e)
            for name, v in c.items():
                counts[name] = counts.get(name, 0) + v
    keys, embs = np.concatenate(keys), np.concatenate(embs)
    order = np.argsort(keys)
    return keys[order], embs[order], counts


EXPORT_FORMAT = "hvams-export/2"
# A --since export: readers that do not know it refuse it, rather than serve its tables as whole.
DELTA_FORMAT = "hvams-export-delta/1"
FORMATS = (EXPORT_FORMAT, DELTA_FORMAT)
# The config keys that decide the worker model's class and shapes (hvams.models.build_model).
MODEL_KEYS = ("model", "emb_dim", "mlp", "attention", "aggregator", "concat_behaviors",
              "image_products", "seed")
# Keys newer than the export format, written only when not at their default, so that an
# older hvams still reads an export that does not use them.
OPTIONAL_MODEL_KEYS = {"image_products": False}


def model_config(cfg) -> dict:
    """The manifest's ``model_config``: MODEL_KEYS, less optional ones at their default."""
    return {k: getattr(cfg, k) for k in MODEL_KEYS
            if OPTIONAL_MODEL_KEYS.get(k, object()) != getattr(cfg, k)}


def _check_since(since: Path, out: Path) -> None:
    """``since`` is an export this one can be a delta on, and writing ``out`` leaves it and
    the exports it needs in place."""
    for d in export_tables.chain_of(since):
        manifest = export_tables.read_manifest(d)
        if manifest.get("format") not in FORMATS:
            raise export_tables.ExportError(f"--since {since}: {d} has export format "
                                            f"{manifest.get('format')!r}, not one of {FORMATS}")
        if d == out.resolve() or out.resolve() in d.parents:
            raise export_tables.ExportError(f"--since {since}: needs {d}, which writing --out "
                                            f"{out} would replace")


def export_run(run_dir: str | Path, out: str | Path, workers: int = 2,
               since: str | Path | None = None) -> dict:
    """Write the serving export of ``run_dir``'s newest complete checkpoint (with ``since``:
    as a delta on that earlier export)."""
    run_dir, out = Path(run_dir), Path(out)
    if since is not None:
        since = Path(since)
        _check_since(since, out)
    cfg, d, dense, image_state, schema, tables = read_newest(run_dir)
    new = {table: {"keys": keys, "rows": rows} for table, (keys, rows) in tables.items()}
    counts = None
    if cfg.uses_images:
        keys, embs, counts = export_images(cfg, image_state, workers)
        new[export_tables.IMAGES] = {"keys": keys, "rows": embs,
                                     "missing": image_state["missing"].numpy()}
    changes = export_tables.changes_since(since, new) if since is not None else None
    if out.exists():
        shutil.rmtree(out)
    (out / "tables").mkdir(parents=True)
    schema.save(out)
    files, delta = {}, {}
    if changes is not None:
        delta = export_tables.write_delta(out, since, changes)
    else:
        for name, table in new.items():
            np.savez(out / f"{name}.npz" if name == export_tables.IMAGES
                     else out / "tables" / f"{name}.npz", **table)
    # The worker model as tensors only (loaded with weights_only): predict rebuilds the
    # same class from MODEL_KEYS, so no code travels inside the export.
    model = build_model(cfg, schema)
    model.load_state_dict(dense["model"])
    ckpt.save_torch(out, "model_state.pt", model.state_dict())
    if cfg.uses_images:  # tensors only, as the worker model
        ckpt.save_torch(out, IMAGE_MODEL_FILE, image_state)
    fields = model_fields(schema, cfg.uses_images)
    single = [f.name for f in fields if not f.is_list]
    lists = [f.name for f in fields if f.is_list]
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        files[str(path.relative_to(out))] = ckpt.sha256(path)
    manifest = {"format": DELTA_FORMAT if delta else EXPORT_FORMAT, "source_run": str(run_dir), "checkpoint": d.name,
                "model": cfg.model, "strategy": cfg.strategy, "emb_dim": cfg.emb_dim,
                "seed": cfg.seed, "init_scale": cfg.init_scale, "single_fields": single,
                "list_fields": lists, "uses_images": cfg.uses_images, "image_counts": counts,
                "model_config": model_config(cfg), "files": files,
                "image_model": image_model_manifest(cfg) if cfg.uses_images else None, **delta}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
