"""Pretrain the small CNN backbone: this world's stand-in for ImageNet weights.

The paper's image model is a VGG16 pretrained on ImageNet (fixed) plus a
trainable head. No ImageNet weights can be downloaded here, so hvams
pretrains ``small-cnn`` on a generic labelled visual task of the synthetic
world's domain: freshly rendered images (their own seed, never the CTR
images, never click labels), each labelled with its shape, hue, pattern and
size. Which of those matter to which user, and how, is still for the CTR
model and the head to learn.
"""
from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.render import ATTRIBUTES, encode, render
from ..imaging.source import normalize, resize_uint8
from ..store.decode import decode_rgb
from ..models.image import SmallCNN


def pretext_set(n: int, seed: int, render_size: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n rendered images (through JPEG, like the store) and their attribute labels."""
    rng = np.random.default_rng([seed, 99])
    labels = np.stack([rng.integers(0, k, n) for k in ATTRIBUTES.values()], 1)
    pixels = torch.empty((n, 3, size, size), dtype=torch.uint8)
    for i in range(n):
        img = render(tuple(int(a) for a in labels[i]), np.random.default_rng([seed, 98, i]), render_size)
        pixels[i] = resize_uint8(decode_rgb(encode(img)), size)
    return pixels, torch.from_numpy(labels)


def pretrain_small_cnn(out: str, n: int = 20000, epochs: int = 6, size: int = 32,
                       render_size: int = 64, seed: int = 1_000_003, batch: int = 256,
                       lr: float = 3e-3, log=print) -> dict:
    """Train SmallCNN + one linear classifier per attribute; save the backbone.

    Runs on one thread: float sums differ with the thread count, and the
    weights must be the same for a seed on any machine.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _pretrain(out, n, epochs, size, render_size, seed, batch, lr, log)
    finally:
        torch.set_num_threads(threads)


def _pretrain(out, n, epochs, size, render_size, seed, batch, lr, log) -> dict:
    torch.manual_seed(seed)
    pixels, labels = pretext_set(n, seed, render_size, size)
    hold = max(1, n // 10)
    backbone = SmallCNN()
    heads = nn.ModuleList(nn.Linear(backbone.out_dim, k) for k in ATTRIBUTES.values())
    opt = torch.optim.Adam(list(backbone.parameters()) + list(heads.parameters()), lr=lr)
    x_train, y_train = pixels[hold:], labels[hold:]
    for epoch in range(epochs):
        perm = torch.randperm(len(x_train))
        for lo in range(0, len(perm), batch):
            idx = perm[lo:lo + batch]
            feats = backbone(normalize(x_train[idx]))
            loss = sum(F.cross_entropy(h(feats), y_train[idx, j]) for j, h in enumerate(heads))
            opt.zero_grad()
            loss.backward()
            opt.step()
        acc = _accuracy(backbone, heads, pixels[:hold], labels[:hold])
        log(f"pretrain epoch {epoch + 1}/{epochs}: held-out accuracy " +
            ", ".join(f"{k} {a:.3f}" for k, a in acc.items()))
    buf = io.BytesIO()
    torch.save(backbone.state_dict(), buf)
    with open(out, "wb") as fh:
        fh.write(buf.getvalue())
    return {"held_out_accuracy": acc, "images": n, "epochs": epochs, "size": size}


@torch.no_grad()
def _accuracy(backbone, heads, x, y) -> dict:
    feats = backbone(normalize(x))
    return {name: float((h(feats).argmax(1) == y[:, j]).float().mean())
            for j, (name, h) in enumerate(zip(ATTRIBUTES, heads))}
