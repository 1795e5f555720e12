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
    """Rows of a batch's keys from the exported tables.

    An ID never seen in training gets its deterministic initial row, exactly
    as the servers serve it during evaluation; an image key unknown to the
    export gets the learned missing-image embedding, and is counted.
    """

    def __init__(self, model_dir: Path, manifest: dict):
        self.dim, self.seed, self.scale = manifest["emb_dim"], manifest["seed"], manifest["init_scale"]
        tables = load_tables(model_dir)   # a --since export: its chain applied
        images = tables.pop(IMAGES, None)
        self.tables = {name: (t["keys"], t["rows"]) for name, t in tables.items()}
        self.images = None
        if manifest["uses_images"] and images is not None:
            self.images = (images["keys"], images["rows"], images["missing"])
        self.counts = Counter()

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


def predict(model_dir: str | Path, day_dir: str | Path, out: str | Path, batch_size: int = 2048
            ) -> dict:
    """Score every sample of ``day_dir``; write scores; return metrics and counts."""
    model_dir = Path(model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    schema = Schema.load(model_dir)
    model = load_model(model_dir, manifest, schema)
    lookup = Lookup(model_dir, manifest)
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
