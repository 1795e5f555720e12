"""The store-in-server image payload: one row per image key.

Trainable backbone: the resized uint8 pixels (3·s·s) plus a validity byte.
Frozen backbone: the cached float32 backbone features plus a validity flag.
Servers ``pack``; workers ``unpack``; ``payload_spec`` gives the row's width.
"""
from __future__ import annotations

import numpy as np
import torch


def payload_spec(feature_dim: int, frozen: bool, image_size: int, feature_dtype=np.float32
                 ) -> tuple[int, np.dtype]:
    """(row width, dtype) of the payload for an image model with ``feature_dim`` features."""
    if frozen:
        return feature_dim + 1, np.dtype(feature_dtype)
    return 3 * image_size ** 2 + 1, np.dtype(np.uint8)


def pack(rows: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(k, width - 1) pixels (uint8) or features (float32), validity appended last."""
    return np.concatenate([rows, valid[:, None].astype(rows.dtype)], axis=1)


def unpack(payload: torch.Tensor, frozen: bool, image_size: int
           ) -> tuple[torch.Tensor, np.ndarray]:
    """(features (k, F), or pixels (k, 3, s, s) uint8, on the payload's device; validity mask)."""
    valid = (payload[:, -1] > 0).cpu().numpy()
    body = payload[:, :-1]
    if frozen:
        return body, valid
    return body.reshape(len(valid), 3, image_size, image_size), valid
