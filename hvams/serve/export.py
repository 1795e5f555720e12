"""``hvams export RUN_DIR --out MODEL_DIR``: everything a ranking server needs.

As in the paper's serving set-up, image embeddings are precomputed: the
trained shared image model embeds every image of the store (in parallel, one
process per group of partitions). The export holds

    manifest.json            what is here, sha256 of every file, the source checkpoint
    schema.json              the sample schema
    model_state.pt           the worker model's tensors (rebuilt from manifest["model_config"])
    tables/<table>.npz       ID embedding tables (sorted keys, rows)
    image_embeddings.npz     image key -> 12-d embedding, plus the missing-image row
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


def load_trained(run_dir: Path) -> tuple[TrainConfig, Path, dict, dict | None]:
    """Config, newest complete checkpoint, worker model state, image model state."""
    cfg = load_config(run_dir / "config.yaml")
    d = ckpt.latest_complete(run_dir)
    if d is None:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint to export")
    dense = ckpt.load_torch(d / "dense.pt")
    image = strategy_for(cfg).image_weights(d)
    if cfg.uses_images and image is None:
        raise FileNotFoundError(f"{d}: holds no image model (strategy {cfg.strategy}), so "
                                f"{cfg.model} cannot be exported")
    return cfg, d, dense, image


def _tables(d: Path, schema: Schema) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for table in schema.tables:
        keys, rows = ckpt.load_owned_rows(d, table, lambda k: np.ones(len(k), bool))[:2]
        order = np.argsort(keys)
        out[table] = (keys[order], rows[order] if rows is not None else np.zeros((0, 0), np.float32))
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
# The config keys that decide the worker model's class and shapes (hvams.models.build_model).
MODEL_KEYS = ("model", "emb_dim", "mlp", "attention", "aggregator", "concat_behaviors", "seed")


def export_run(run_dir: str | Path, out: str | Path, workers: int = 2) -> dict:
    """Write the serving export of ``run_dir``'s newest complete checkpoint."""
    run_dir, out = Path(run_dir), Path(out)
    cfg, d, dense, image_state = load_trained(run_dir)
    schema = Schema.load(cfg.data)
    if out.exists():
        shutil.rmtree(out)
    (out / "tables").mkdir(parents=True)
    schema.save(out)
    files = {}
    for table, (keys, rows) in _tables(d, schema).items():
        np.savez(out / "tables" / f"{table}.npz", keys=keys, rows=rows)
    counts = None
    if cfg.uses_images:
        keys, embs, counts = export_images(cfg, image_state, workers)
        missing = image_state["missing"].numpy()
        np.savez(out / "image_embeddings.npz", keys=keys, rows=embs, missing=missing)
    # The worker model as tensors only (loaded with weights_only): predict rebuilds the
    # same class from MODEL_KEYS, so no code travels inside the export.
    model = build_model(cfg, schema)
    model.load_state_dict(dense["model"])
    ckpt.save_torch(out, "model_state.pt", model.state_dict())
    fields = model_fields(schema, cfg.uses_images)
    single = [f.name for f in fields if not f.is_list]
    lists = [f.name for f in fields if f.is_list]
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        files[str(path.relative_to(out))] = ckpt.sha256(path)
    manifest = {"format": EXPORT_FORMAT, "source_run": str(run_dir), "checkpoint": d.name,
                "model": cfg.model, "strategy": cfg.strategy, "emb_dim": cfg.emb_dim,
                "seed": cfg.seed, "init_scale": cfg.init_scale, "single_fields": single,
                "list_fields": lists, "uses_images": cfg.uses_images, "image_counts": counts,
                "model_config": {k: getattr(cfg, k) for k in MODEL_KEYS}, "files": files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
