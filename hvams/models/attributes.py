"""``true-attributes``: the quality ceiling's stand-in for a backbone.

Instead of reading pixels it looks an image key up in the synthetic world's
``truth/items.parquet`` and returns the one-hot of the image's true visual
attributes: those the table's ``hvams.attributes`` metadata names (a JSON
object attribute -> number of values; the posters world writes it), else the
built-in world's shape, hue, pattern and size (20-d). The head on top is the image
model's usual one, so the image embedding becomes a learned embedding of the
true attributes: what the same DICM could reach if it read images perfectly.
Perfect reading cannot see a file that never reached the store: where the table
has an ``in_store`` column, those images are missing here as on the pixel path.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.render import ATTRIBUTES

TRUTH_FILE = "truth/items.parquet"
META_KEY = b"hvams.attributes"
STORED_COLUMN = "in_store"


def truth_file(data: str | Path) -> Path:
    return Path(data) / TRUTH_FILE


def table_of(cfg) -> str:
    """The truth table ``cfg`` reads: ``backbone_weights``, else the data's own."""
    return str(cfg.backbone_weights or truth_file(cfg.data))


def write_truth(data: str | Path, items, attributes: dict[str, int]) -> None:
    """``DATA/truth/items.parquet``: a world's ``items`` table (``image_id`` and one column
    per attribute), its metadata naming ``attributes`` (name -> number of values)."""
    import json

    import pyarrow.parquet as pq

    path = truth_file(data)
    path.parent.mkdir(exist_ok=True)
    pq.write_table(items.replace_schema_metadata({META_KEY: json.dumps(attributes)}), path)


def attributes_of(path: str | Path) -> dict[str, int]:
    """Attribute -> number of values of a truth table (its metadata, else the built-in's)."""
    import json

    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[META_KEY]) if META_KEY in meta else dict(ATTRIBUTES)


def read_truth(path: str | Path, stored_only: bool = False
               ) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """(attributes, sorted unique image ids, (ids, attributes) int64 values) of a truth table.
    ``stored_only``: without the images the store lacks, where the table says so in its
    optional ``in_store`` column (a world whose files can be broken or absent)."""
    import pyarrow.parquet as pq

    attrs = attributes_of(path)
    stored = stored_only and STORED_COLUMN in pq.read_schema(path).names
    table = pq.read_table(path, columns=["image_id", *attrs, *([STORED_COLUMN] if stored else [])])
    keys, first = np.unique(np.asarray(table["image_id"], np.int64), return_index=True)
    values = np.stack([np.asarray(table[a], np.int64)[first] for a in attrs], 1)
    if stored:
        held = np.asarray(table[STORED_COLUMN], bool)[first]
        keys, values = keys[held], values[held]
    return attrs, keys, values


def attribute_labels(path: str | Path, ids: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(attribute names, (known ids, attributes) values, bool mask of ``ids`` the table knows)."""
    attrs, keys, values = read_truth(path)
    pos = np.searchsorted(keys, ids).clip(max=len(keys) - 1)
    known = keys[pos] == ids
    return list(attrs), values[pos[known]], known


def width_of(path: str | Path) -> int:
    """Width of the one-hot features of a truth table."""
    return sum(attributes_of(path).values())


class TrueAttributes(nn.Module):
    """Image key -> one-hot true attributes; keys the truth does not know are invalid."""

    reads_keys = True  # the embedder passes keys, not pixels

    def __init__(self, path: str | Path):
        super().__init__()
        from ..config import ConfigError

        path = Path(path)
        try:
            attrs, keys, cols = read_truth(path, stored_only=True)  # no reader sees the rest
        except FileNotFoundError:
            raise ConfigError(f"config key 'backbone_weights': backbone true-attributes needs the "
                              f"world's truth table, and {path} does not exist") from None
        except (KeyError, ValueError, OSError) as exc:
            raise ConfigError(f"config key 'backbone_weights': {path} is not a truth table with "
                              f"an image_id column and attribute columns: {exc}") from None
        if not len(keys):
            raise ConfigError(f"config key 'backbone_weights': {path} lists no image the store "
                              f"holds (column {STORED_COLUMN!r})")
        offsets = np.cumsum([0, *list(attrs.values())[:-1]])
        bad = [a for j, (a, k) in enumerate(attrs.items()) if not (0 <= cols[:, j]).all()
               or not (cols[:, j] < k).all()]
        if bad:
            raise ConfigError(f"config key 'backbone_weights': {path}: attribute(s) {bad} have "
                              f"values outside 0..(number of values - 1) of {attrs}")
        cols = cols + offsets
        self.out_dim = sum(attrs.values())
        # Not state: the checkpoint holds the head, the table stays in the data directory.
        self.register_buffer("keys", torch.from_numpy(keys), persistent=False)
        self.register_buffer("cols", torch.from_numpy(cols), persistent=False)

    def lookup(self, keys: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(k, out_dim) one-hot features in ``dtype`` and a (k,) bool mask of known keys."""
        pos = torch.searchsorted(self.keys, keys).clamp_(max=len(self.keys) - 1)
        known = self.keys.index_select(0, pos) == keys
        out = torch.zeros((len(keys), self.out_dim), dtype=dtype, device=keys.device)
        rows = torch.nonzero(known).squeeze(1)
        cols = self.cols.index_select(0, pos.index_select(0, rows))
        out[rows.unsqueeze(1).expand_as(cols), cols] = 1
        return out, known

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        return self.lookup(keys, torch.float32)[0]
