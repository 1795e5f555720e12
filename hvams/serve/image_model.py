"""The image embedding model an export ships, with its preprocessing, for images that arrive
after training.

``image_model.pt`` holds the shared image model's tensors (backbone, head, the missing-image
row), loaded with ``weights_only``; the manifest's ``image_model`` says how to rebuild it and
how its inputs are made: decoder limit, size, normalisation. Images go through the same
``ImageDecoder`` (header check, decompression-bomb limit, resize) and ``PixelEmbedder`` as in
training and in the export's precomputed table, so an image embedded here gets the vector
the export holds for it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..imaging.decoder import ImageDecoder
from ..imaging.embed import embedder_for
from ..models.image import ImageEmbedder
from ..store.decode import MEAN, STD, header_size
from ..train.checkpoint import load_torch

IMAGE_MODEL_FILE = "image_model.pt"
GROUP_PIXELS = 1 << 20  # decoded pixels held at once when embedding arriving images


def _groups(blobs: list[bytes]):
    """[a, b) ranges of ``blobs`` whose header pixel counts add up to GROUP_PIXELS at most;
    an image whose header does not read is a group of its own (the decoder reports it)."""
    start, total = 0, 0
    for i, blob in enumerate(blobs):
        try:
            w, h = header_size(blob)
            pixels = w * h
        except Exception:  # any unreadable header: decode alone, where the error is named
            pixels = GROUP_PIXELS + 1
        if i > start and total + pixels > GROUP_PIXELS:
            yield start, i
            start, total = i, 0
        total += pixels
    if start < len(blobs):
        yield start, len(blobs)


def image_model_manifest(cfg) -> dict:
    """What rebuilds the image model of ``cfg`` and prepares its inputs."""
    return {"backbone": cfg.backbone, "head": cfg.head, "emb_dim": cfg.emb_dim,
            "freeze_backbone": cfg.freeze_backbone, "image_size": cfg.image_size,
            "max_pixels": cfg.max_pixels, "mean": MEAN.flatten().tolist(),
            "std": STD.flatten().tolist(),
            # a backbone that reads a truth table by key cannot embed new pixels
            "embeds_pixels": cfg.backbone != "true-attributes"}


class ExportedImageModel:
    """Embeds encoded images with an export's image model, on the CPU."""

    def __init__(self, model_dir: Path, spec: dict, max_pixels: int | None = None):
        self.spec = spec
        torch.manual_seed(0)   # the architecture's initial weights are all overwritten
        model = ImageEmbedder(spec["backbone"], spec["head"], spec["emb_dim"], None,
                              spec["freeze_backbone"])
        model.load_state_dict(load_torch(Path(model_dir) / IMAGE_MODEL_FILE))
        self.model = model.eval()
        self.embedder = embedder_for(self.model, feature_cache=0)
        # a server may refuse smaller images than training did (the decoder's bomb limit)
        limit = min(spec["max_pixels"], max_pixels or spec["max_pixels"])
        self.decoder = ImageDecoder(spec["image_size"], limit)
        # the decoders load with the model, not on the first arriving image, so that they
        # are in the heap the server settles after loading
        import torchvision.io  # noqa: F401
        self.dim = spec["emb_dim"]

    def embed(self, keys: np.ndarray, blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray, list]:
        """(k, dim) embeddings, a mask of the images that decoded, and the decode errors
        (an image that did not decode gets the missing-image row)."""
        keys = np.asarray(keys, np.int64)
        # in groups of at most GROUP_PIXELS decoded pixels (one image if it is larger): small
        # creatives are resized together, and a batch of full-size images never is held whole
        parts = [self.decoder.decode(keys[a:b], blobs[a:b]) for a, b in _groups(blobs)]
        pixels = torch.cat([p[0] for p in parts]) if parts else torch.zeros(
            (0, 3, self.decoder.size, self.decoder.size), dtype=torch.uint8)
        ok = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, bool)
        errors = [e for p in parts for e in p[2]]
        with torch.no_grad():
            emb = self.embedder.embed(keys, pixels, ok)
        return emb.detach().float().numpy().copy(), ok, errors
