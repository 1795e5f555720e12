"""Load image keys from the store and turn them into fixed-size uint8 pixels.

Missing keys and undecodable bytes do not raise: the key is marked invalid
(the model gives it the learned "missing image" embedding) and counted.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from ..store.decode import MEAN, STD, decode_rgb
from ..store.errors import CorruptImageError, MissingImageError
from ..store.lmdb_store import ImageStore
from .tensor_cache import TensorCache


def resize_uint8(img: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, size, size) uint8, antialiased bilinear."""
    if img.shape[-1] == size and img.shape[-2] == size:
        return img
    x = F.interpolate(img.unsqueeze(0).float(), size=(size, size), mode="bilinear",
                      antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)[0]


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """(k, 3, s, s) uint8 -> normalised float input of the backbone."""
    return pixels.float().div_(255.0).sub_(MEAN).div_(STD)


class ImageSource:
    """Pixels of image keys from (part of) a store, with a bounded pixel cache."""

    def __init__(self, store: ImageStore, size: int, cache: int = 100_000,
                 max_pixels: int = 4096 * 4096):
        self.store, self.size, self.max_pixels = store, size, max_pixels
        self.cache = TensorCache(cache)
        self.counts = Counter()
        self.bad_examples: list[str] = []

    def load(self, keys: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """(k, 3, s, s) uint8 pixels and a bool mask of keys that had a valid image."""
        keys = np.asarray(keys, np.int64)
        k = len(keys)
        pixels = torch.zeros((k, 3, self.size, self.size), dtype=torch.uint8)
        todo = self.cache.gather(keys, np.arange(k), pixels)
        valid = np.ones(k, bool)
        valid[todo] = False  # misses are valid only once decoded below
        self.counts["requested"] += k
        if len(todo):
            raw = self.store.get_many(keys[todo])
            decoded = []
            for i, value in zip(todo, raw):
                if isinstance(value, MissingImageError):
                    self._bad("missing", value)
                    continue
                try:
                    img = resize_uint8(decode_rgb(value, int(keys[i]), self.max_pixels), self.size)
                except CorruptImageError as exc:
                    self._bad("corrupt", exc)
                    continue
                pixels[i] = img
                valid[i] = True
                decoded.append(i)
            self.counts["decoded"] += len(decoded)
            if decoded:
                idx = np.asarray(decoded, np.int64)
                self.cache.put_many(keys[idx], pixels.index_select(0, torch.from_numpy(idx)))
        self.counts["served"] += int(valid.sum())
        return pixels, valid

    def _bad(self, kind: str, exc: Exception) -> None:
        self.counts[kind] += 1
        if len(self.bad_examples) < 20:
            self.bad_examples.append(str(exc))

    def stats(self) -> dict:
        return {**dict(self.counts), "pixel_cache": self.cache.stats(),
                "bad_examples": self.bad_examples}
