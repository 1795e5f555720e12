"""``hvams predict MODEL_DIR --data DAY_DIR --out scores.parquet``: one process, no MPI."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..data.batch import Batch
from ..data.reader import DayReader
from ..data.schema import IMAGE_CHANNEL, Schema
from ..embedding.init import initial_rows
from ..metrics import evaluate
from ..models.inputs import build_inputs
from .export_tables import IMAGES, load_tables


class Lookup:
    """Rows of a batch's keys from the exported tables (``load_tables``).

    An ID never seen in training gets its deterministic initial row, exactly
    as the servers serve it during evaluation; an image key unknown to the
    export gets the learned missing-image embedding, and is counted, unless
    ``fill(keys) -> (embeddings, ok)`` embeds it (``--images STORE``).
    """

    def __init__(self, manifest: dict, tables: dict, fill=None):
        self.dim, self.seed, self.scale = manifest["emb_dim"], manifest["seed"], manifest["init_scale"]
        self.tables = {name: (t["keys"], t["rows"]) for name, t in tables.items() if name != IMAGES}
        self.images = None
        if manifest["uses_images"] and IMAGES in tables:
            t = tables[IMAGES]
            self.images = (t["keys"], t["rows"], t["missing"])
        self.fill = fill
        self.counts = Counter()
        self._seen_unseen = Counter()

    def take_unseen(self) -> dict[str, int]:
        """IDs not in the tables, by table, since the last call."""
        out = {k.split(":", 1)[1]: v - self._seen_unseen[k] for k, v in self.counts.items()
               if k.startswith("unseen_ids:") and v > self._seen_unseen[k]}
        self._seen_unseen.update({f"unseen_ids:{k}": v for k, v in out.items()})
        return out

    @staticmethod
    def _find(keys: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(keys) == 0:
            return np.zeros(len(wanted), np.int64), np.zeros(len(wanted), bool)
        pos = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        return pos, keys[pos] == wanted

    def rows(self, batch: Batch) -> dict[str, torch.Tensor]:
        out = {}
        for table, wanted in batch.table_keys.items():
            keys, rows = self.tables.get(table, (np.zeros(0, np.int64), None))
            pos, found = self._find(keys, wanted)
            r = np.empty((len(wanted), self.dim), np.float32)
            if found.any():
                r[found] = rows[pos[found]]
            if not found.all():
                r[~found] = initial_rows(wanted[~found], self.dim, table, self.seed, self.scale)
            self.counts[f"unseen_ids:{table}"] += int((~found).sum())
            out[table] = torch.from_numpy(r)
        if self.images is not None:
            keys, rows, missing = self.images
            pos, found = self._find(keys, batch.image_keys)
            r = np.tile(missing, (len(batch.image_keys), 1)).astype(np.float32)
            r[found] = rows[pos[found]]
            if self.fill is not None and not found.all():
                lack = np.flatnonzero(~found)
                emb, ok = self.fill(batch.image_keys[lack])
                r[lack[ok]] = emb[ok]
                found[lack[ok]] = True
                self.counts["embedded_images"] += int(ok.sum())
            self.counts["images"] += len(found)
            self.counts["unknown_images"] += int((~found).sum())
            out[IMAGE_CHANNEL] = torch.from_numpy(r)
        return out


def load_model(model_dir: Path, manifest: dict, schema: Schema) -> torch.nn.Module:
    """The exported worker model: its class rebuilt from the manifest, its tensors loaded
    with weights_only (an export cannot run code)."""
    from ..config import TrainConfig
    from ..models import build_model
    from ..train.checkpoint import load_torch
    from .export import FORMATS

    if manifest.get("format") not in FORMATS:
        raise ValueError(f"{model_dir}: export format {manifest.get('format')!r} is not one of "
                         f"{FORMATS} (TorchScript exports are no longer read): "
                         f"run `hvams export` on the training run again")
    cfg = TrainConfig(data=str(model_dir), **manifest["model_config"])
    model = build_model(cfg, schema)
    model.load_state_dict(load_torch(model_dir / "model_state.pt"))
    return model.eval()


class StoreImages:
    """Embeddings of image keys an export lacks, read from an image store and embedded by the
    export's image model (each key once)."""

    def __init__(self, model_dir: Path, manifest: dict, store_dir: str | Path):
        from ..store.lmdb_store import ImageStore
        from .image_model import ExportedImageModel

        spec = manifest.get("image_model")
        if not spec or not spec.get("embeds_pixels"):
            raise ValueError(f"{model_dir}: its export holds no image model that reads pixels "
                             f"(exported before image models were, or backbone "
                             f"{spec and spec.get('backbone')}): --images cannot embed")
        self.model = ExportedImageModel(model_dir, spec)
        self.store = ImageStore(store_dir)
        self.done: dict[int, tuple[np.ndarray, bool]] = {}

    def __call__(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from ..store.errors import MissingImageError

        todo = [int(k) for k in keys if int(k) not in self.done]
        if todo:
            raw = self.store.get_many(np.array(todo, np.int64))
            have = [i for i, r in enumerate(raw) if not isinstance(r, MissingImageError)]
            if have:
                emb, ok, _ = self.model.embed(np.array([todo[i] for i in have], np.int64),
                                              [raw[i] for i in have])
                for j, i in enumerate(have):
                    self.done[todo[i]] = (emb[j], bool(ok[j]))
            for i in set(range(len(todo))) - set(have):
                self.done[todo[i]] = (np.zeros(self.model.dim, np.float32), False)
        got = [self.done[int(k)] for k in keys]
        return np.stack([g[0] for g in got]), np.array([g[1] for g in got], bool)


def predict(model_dir: str | Path, day_dir: str | Path, out: str | Path, batch_size: int = 2048,
            images: str | Path | None = None) -> dict:
    """Score every sample of ``day_dir``; write scores; return metrics and counts. With
    ``images`` (a store), image keys the export lacks are embedded from it."""
    model_dir = Path(model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    schema = Schema.load(model_dir)
    model = load_model(model_dir, manifest, schema)
    fill = StoreImages(model_dir, manifest, images) if images is not None else None
    lookup = Lookup(manifest, load_tables(model_dir), fill)   # a --since export: its chain applied
    cols = {k: [] for k in ("user", "ad", "label", "score", "new", "p_true")}
    with torch.no_grad():
        for batch in DayReader(day_dir, schema, batch_size, prefetch=2):
            inp = build_inputs(batch, lookup.rows(batch), schema, manifest["uses_images"])
            cols["score"].append(torch.softmax(model(inp), dim=1)[:, 1].numpy())
            cols["user"].append(batch.values[schema.user])
            cols["ad"].append(batch.values[schema.ad_id])
            cols["label"].append(batch.values[schema.label])
            if schema.new_ad in batch.values:
                cols["new"].append(batch.values[schema.new_ad])
            if schema.p_true in batch.values:
                cols["p_true"].append(batch.values[schema.p_true])
    data = {k: np.concatenate(v) for k, v in cols.items() if v}
    pq.write_table(pa.table({"user_id": data["user"], "ad_id": data["ad"], "label": data["label"],
                             "score": data["score"]}), out)
    metrics = evaluate(data["label"], data["score"], data["user"], data.get("new"), data.get("p_true"))
    step = int(manifest["checkpoint"].rsplit("-", 1)[-1]) if "checkpoint" in manifest else 0
    return {"metrics": metrics, "counts": dict(lookup.counts), "rows": int(len(data["score"])),
            "model": manifest.get("model", "export"), "step": step}
