"""Load image keys from the store and turn them into fixed-size uint8 pixels.

Missing keys and undecodable bytes do not raise: the key is marked invalid
(the model gives it the learned "missing image" embedding) and counted.
"""
from __future__ import annotations

import functools
from collections import Counter

import numpy as np
import torch

from ..store.decode import MEAN, STD
from ..store.errors import MissingImageError
from ..store.lmdb_store import ImageStore
from .decoder import ImageDecoder, resize_batch
from .tensor_cache import TensorCache


def resize_uint8(img: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, size, size) uint8, antialiased bilinear."""
    return resize_batch(img.unsqueeze(0), size)[0]


@functools.lru_cache(maxsize=None)
def _constants(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalisation's mean and std on ``device``, copied there once, not per call."""
    return MEAN.to(device, dtype), STD.to(device, dtype)


def normalize(pixels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(k, 3, s, s) uint8 -> normalised input of the backbone, on the pixels' device."""
    mean, std = _constants(pixels.device, dtype)
    return pixels.to(dtype).div_(255.0).sub_(mean).div_(std)


class ImageSource:
    """Pixels of image keys from (part of) a store, decoded onto ``device``, with a
    bounded pixel cache in that device's memory."""

    def __init__(self, store: ImageStore, size: int, cache: int = 100_000,
                 max_pixels: int = 4096 * 4096, device: torch.device | str = "cpu",
                 cache_bytes: int | None = None, decoder: ImageDecoder | None = None):
        self.store, self.size, self.max_pixels = store, size, max_pixels
        self.device = torch.device(device)
        self.cache = TensorCache(cache, self.device, cache_bytes)
        self.decoder = decoder or ImageDecoder(size, max_pixels, self.device)
        self.counts = Counter()
        self.bad_examples: list[str] = []

    def load(self, keys: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """(k, 3, s, s) uint8 pixels on the device and a bool mask of keys that had a valid image."""
        keys = np.asarray(keys, np.int64)
        k = len(keys)
        pixels = torch.zeros((k, 3, self.size, self.size), dtype=torch.uint8, device=self.device)
        todo = self.cache.gather(keys, np.arange(k), pixels)
        valid = np.ones(k, bool)
        valid[todo] = False  # misses are valid only once decoded below
        self.counts["requested"] += k
        if len(todo):
            raw = self.store.get_many(keys[todo])
            present = [j for j, v in enumerate(raw) if not isinstance(v, MissingImageError)]
            for v in raw:
                if isinstance(v, MissingImageError):
                    self._bad("missing", v)
            rows = todo[present]
            got, ok, errors = self.decoder.decode(keys[rows], [raw[j] for j in present])
            for exc in errors:
                self._bad("corrupt", exc)
            decoded = rows[ok]
            if len(decoded):
                idx = torch.from_numpy(decoded).to(self.device)
                pixels.index_copy_(0, idx, got[torch.from_numpy(np.flatnonzero(ok)).to(self.device)])
                valid[decoded] = True
                self.cache.put_many(keys[decoded], pixels.index_select(0, idx))
            self.counts["decoded"] += len(decoded)
        self.counts["served"] += int(valid.sum())
        return pixels, valid

    def _bad(self, kind: str, exc: Exception) -> None:
        self.counts[kind] += 1
        if len(self.bad_examples) < 20:
            self.bad_examples.append(str(exc))

    def stats(self) -> dict:
        return {**dict(self.counts), "pixel_cache": self.cache.stats(),
                "decoder": dict(self.decoder.counts),
                "bad_examples": self.bad_examples}
