"""``true-attributes``: the quality ceiling's stand-in for a backbone.

Instead of reading pixels it looks an image key up in the synthetic world's
``truth/items.parquet`` and returns the one-hot of the image's true visual
attributes (shape, hue, pattern, size: 20-d). The head on top is the image
model's usual one, so the image embedding becomes a learned embedding of the
true attributes: what the same DICM could reach if it read images perfectly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.render import ATTRIBUTES

TRUTH_FILE = "truth/items.parquet"
WIDTH = sum(ATTRIBUTES.values())


def truth_file(data: str | Path) -> Path:
    return Path(data) / TRUTH_FILE


def table_of(cfg) -> str:
    """The truth table ``cfg`` reads: ``backbone_weights``, else the data's own."""
    return str(cfg.backbone_weights or truth_file(cfg.data))


class TrueAttributes(nn.Module):
    """Image key -> one-hot true attributes; keys the truth does not know are invalid."""

    out_dim = WIDTH
    reads_keys = True  # the embedder passes keys, not pixels

    def __init__(self, path: str | Path):
        super().__init__()
        import pyarrow.parquet as pq

        from ..config import ConfigError

        path = Path(path)
        need = ["image_id", *ATTRIBUTES]
        try:
            table = pq.read_table(path, columns=need)
        except FileNotFoundError:
            raise ConfigError(f"config key 'backbone_weights': backbone true-attributes needs the "
                              f"world's truth table, and {path} does not exist") from None
        except (KeyError, ValueError, OSError) as exc:
            raise ConfigError(f"config key 'backbone_weights': {path} is not a truth table with "
                              f"columns {need}: {exc}") from None
        ids = np.asarray(table["image_id"], np.int64)
        keys, first = np.unique(ids, return_index=True)
        offsets = np.cumsum([0, *list(ATTRIBUTES.values())[:-1]])
        cols = np.stack([np.asarray(table[a], np.int64)[first] for a in ATTRIBUTES], 1) + offsets
        # Not state: the checkpoint holds the head, the table stays in the data directory.
        self.register_buffer("keys", torch.from_numpy(keys), persistent=False)
        self.register_buffer("cols", torch.from_numpy(cols), persistent=False)

    def lookup(self, keys: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(k, 20) one-hot features in ``dtype`` and a (k,) bool mask of known keys."""
        pos = torch.searchsorted(self.keys, keys).clamp_(max=len(self.keys) - 1)
        known = self.keys.index_select(0, pos) == keys
        out = torch.zeros((len(keys), WIDTH), dtype=dtype, device=keys.device)
        rows = torch.nonzero(known).squeeze(1)
        cols = self.cols.index_select(0, pos.index_select(0, rows))
        out[rows.unsqueeze(1).expand_as(cols), cols] = 1
        return out, known

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        return self.lookup(keys, torch.float32)[0]
