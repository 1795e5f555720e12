"""One export loaded for serving: checked, its tables and models in memory, ready to score.

``ServingModel.load`` checks the export's manifest (the sha256 of every file, its own and
those of the exports a ``--since`` delta sits on) before anything is used, so a damaged
export is refused and whatever served before keeps serving. A delta export on the model
being served is applied to that model's tables in memory: the unchanged tables are not read
again. Scoring builds the same ``Batch`` -> rows -> ``Inputs`` -> model path as
``hvams predict``, so a served score is predict's score for the same row.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from ..data.schema import IMAGE_CHANNEL, Schema
from ..models.inputs import build_inputs, model_fields
from ..train.checkpoint import sha256
from . import export_tables
from .export_tables import ExportError
from .image_model import ExportedImageModel
from .predict import Lookup, load_model


def verify_files(d: Path) -> dict:
    """Export ``d``'s manifest, after each of its own files matched its sha256."""
    manifest = export_tables.read_manifest(d)
    for name, digest in manifest.get("files", {}).items():
        path = d / name
        if not path.is_file():
            raise ExportError(f"{d}: {name} is missing")
        if sha256(path) != digest:
            raise ExportError(f"{d}: {name} fails its sha256 (the export is damaged)")
    return manifest


def verify(model_dir: Path) -> dict:
    """The export's manifest, after every file of it and of its chain matched its sha256."""
    for d in export_tables.chain_of(model_dir)[1:]:
        verify_files(d)
    return verify_files(model_dir)


class ServingModel:
    """An export's worker model, ID tables, image table and image model."""

    def __init__(self, model_dir: Path, manifest: dict, tables: dict, image_cache: int,
                 max_pixels: int | None = None):
        self.dir, self.manifest = model_dir, manifest
        self.digest = export_tables.manifest_digest(model_dir)
        self.schema = Schema.load(model_dir)
        self.model = load_model(model_dir, manifest, self.schema)
        self.tables = tables
        self.uses_images = bool(manifest["uses_images"])
        self.fields = model_fields(self.schema, self.uses_images)
        self.lookup = Lookup(manifest, tables)
        spec = manifest.get("image_model")
        self.images = (ExportedImageModel(model_dir, spec, max_pixels)
                       if self.uses_images and spec and spec["embeds_pixels"] else None)
        # new images' embeddings by (key, sha1 of the bytes), least recently used first
        self.embedded: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self.image_cache = image_cache
        self._cache_lock = threading.Lock()   # the loop and the compute thread both use it

    @classmethod
    def load(cls, model_dir: str | Path, image_cache: int = 100_000,
             current: ServingModel | None = None, max_pixels: int | None = None) -> ServingModel:
        """Check and load ``model_dir``; a delta on ``current`` reuses ``current``'s tables."""
        model_dir = Path(model_dir).resolve()
        manifest = export_tables.read_manifest(model_dir)
        if (manifest.get("kind") == "delta" and current is not None
                and (model_dir / manifest["since"]).resolve() == current.dir
                and manifest["since_manifest_sha256"] == current.digest):
            # on the served model: check and read the delta's own files only
            manifest = verify_files(model_dir)
            tables = {name: dict(t) for name, t in current.tables.items()}
            export_tables.apply_export(tables, model_dir)
        else:
            manifest = verify(model_dir)
            tables = export_tables.load_tables(model_dir)
        return cls(model_dir, manifest, tables, image_cache, max_pixels)

    @property
    def name(self) -> str:
        return self.dir.name

    def knows_images(self, keys) -> np.ndarray:
        """Whether the export's image table holds each of ``keys``."""
        table = self.lookup.images[0] if self.lookup.images is not None else np.zeros(0, np.int64)
        keys = np.asarray(keys, np.int64)
        if not len(table):
            return np.zeros(len(keys), bool)
        return table[np.minimum(np.searchsorted(table, keys), len(table) - 1)] == keys

    def remember(self, key: tuple, emb: np.ndarray) -> None:
        """Keep a new image's embedding (least recently used ones go past the cache size)."""
        with self._cache_lock:
            self.embedded[key] = emb
            self.embedded.move_to_end(key)
            while len(self.embedded) > self.image_cache:
                self.embedded.popitem(last=False)

    def recall(self, key: tuple) -> np.ndarray | None:
        with self._cache_lock:
            emb = self.embedded.get(key)
            if emb is not None:
                self.embedded.move_to_end(key)
            return emb

    def score(self, batch, embedded: dict[int, np.ndarray]) -> np.ndarray:
        """Click probabilities of ``batch``'s rows; ``embedded``: image key -> embedding of
        the images the table lacks that were embedded for this request."""
        rows = self.lookup.rows(batch)
        if embedded and IMAGE_CHANNEL in rows:
            keys = batch.image_keys
            pos = np.searchsorted(keys, np.fromiter(embedded, np.int64, len(embedded)))
            img = rows[IMAGE_CHANNEL].clone()
            img[torch.from_numpy(pos)] = torch.from_numpy(np.stack(list(embedded.values())))
            rows[IMAGE_CHANNEL] = img
        with torch.inference_mode():
            inp = build_inputs(batch, rows, self.schema, self.uses_images)
            return torch.softmax(self.model(inp), dim=1)[:, 1].numpy().astype(np.float64)
