"""``hvams bench image-rate``: the raw images/s of an image model, one process, no hvams
around it: the limit the servers' image stage is compared with (the device kit's probe).

The same ``PixelEmbedder`` as training (normalisation, layout, precision, chunking), fed
random uint8 pixels already on the device: no store, no decoding, no communication. Train
mode runs forward, backward from a random embedding gradient and an Adam step; frozen mode
runs the backbone and head forward without autograd.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..imaging.embed import PixelEmbedder
from ..models.image import ImageEmbedder
from ..runtime import role_runtime


def image_rate(cfg, batch: int, mode: str, seconds: float = 5.0, warmup: int = 2) -> dict:
    """Images/s of ``cfg``'s image model on ``cfg``'s device over about ``seconds``."""
    rt = role_runtime(cfg, "server")
    rt.activate()
    torch.manual_seed(cfg.seed)
    model = ImageEmbedder(cfg.backbone, cfg.head, cfg.emb_dim, cfg.backbone_weights,
                          frozen=(mode == "frozen"))
    emb = PixelEmbedder(model, 0, rt, chunk=cfg.backbone_chunk)
    opt = torch.optim.Adam(emb.model.trainable_parameters(), lr=1e-4)
    pixels = torch.randint(0, 256, (batch, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8,
                           device=rt.device)
    valid = np.ones(batch, bool)
    grad = torch.randn(batch, cfg.emb_dim, device=rt.device, dtype=rt.dtype)

    def step():
        if mode == "frozen":  # in chunks, as the servers' frozen forward
            with torch.no_grad():
                emb.head(emb._trainable(pixels), valid)
            return
        out = emb.embed(np.arange(batch), pixels, valid)
        out.backward(grad)
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if rt.is_cuda else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    times = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 3:
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    return {"backbone": cfg.backbone, "image_size": cfg.image_size, "mode": mode,
            "batch": batch, "device": rt.describe(), "precision": rt.precision.name,
            "channels_last": rt.channels_last, "steps": len(times), "step_s": med,
            "images_per_s": batch / med}
