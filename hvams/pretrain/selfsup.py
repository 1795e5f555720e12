"""``hvams images pretrain``: a backbone learned from the store's own images, no labels.

For a user whose images look like nothing a pretrained network has seen (and
with no ImageNet weights at hand), ``small-cnn`` is pretrained on the very
images the CTR model will read, in two stages:

1. **Contrastive** (SimCLR, Chen et al. 2020): two random views of each image
   (crop, flip, brightness/contrast, per-channel shade, saturation, sometimes
   grey), a projection head, and the NT-Xent loss that pulls the two views of
   one image together and pushes the batch's other images away.
2. **Cluster rounds** (DeepCluster, Caron et al. 2018): k-means on the
   whitened features gives each image a pseudo-label; the backbone learns to
   predict it from augmented views. Contrastive features tell *instances*
   apart, nuisance included; the clusters pull them onto what many images
   share. On the posters world this is what makes the features usable by a
   CTR head in one pass (docs/benchmarks.md, "A world from a second
   generator"): the linear probes barely move, the gap closed does.

The heads are dropped; the backbone is saved as a state dict for
``backbone_weights``, to be used frozen (its features are cached per image).
Colour is kept mostly intact on purpose: in product images colour is signal,
so only one view in five loses it (grey), enough to keep the network from
matching colour histograms alone.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..imaging.source import normalize, resize_uint8
from ..store.decode import decode_rgb
from ..store.errors import CorruptImageError
from ..store.lmdb_store import ImageStore
from ..models.image import SmallCNN
from . import CROP_SCALE, EPOCHS


def load_store_pixels(store_dir: str, size: int, max_images: int | None, seed: int,
                      max_pixels: int) -> tuple[torch.Tensor, np.ndarray, int]:
    """(n, 3, size, size) uint8 of (a seeded sample of) the store's images, their ids,
    and how many were skipped as undecodable (counted, reported)."""
    store = ImageStore(store_dir)
    ids = np.array([k for p in store.partitions for k, _ in store.iter_partition(p)], np.int64)
    if max_images and len(ids) > max_images:
        ids = np.sort(np.random.default_rng(seed).choice(ids, max_images, replace=False))
    pixels, kept, bad = [], [], 0
    for lo in range(0, len(ids), 1024):
        chunk = ids[lo:lo + 1024]
        for k, raw in zip(chunk, store.get_many(chunk)):
            try:
                pixels.append(resize_uint8(decode_rgb(raw, int(k), max_pixels), size))
                kept.append(k)
            except CorruptImageError:
                bad += 1
    store.close()
    if not pixels:
        raise ValueError(f"image store {store_dir}: no decodable images to pretrain on")
    return torch.stack(pixels), np.array(kept, np.int64), bad


def augment(x: torch.Tensor, gen: torch.Generator, min_scale: float = CROP_SCALE,
            grey_p: float = 0.2, channel_jitter: float = 0.0) -> torch.Tensor:
    """A random view of each normalised image (k, 3, s, s): one batched affine resample."""
    k = len(x)

    def u(lo, hi):
        return torch.rand(k, generator=gen) * (hi - lo) + lo

    scale = u(min_scale, 1.0).sqrt()  # side of the crop, as a share of the image
    aspect = torch.exp(u(math.log(3 / 4), math.log(4 / 3))).sqrt()
    sx, sy = (scale * aspect).clamp(max=1), (scale / aspect).clamp(max=1)
    tx, ty = u(-1, 1) * (1 - sx), u(-1, 1) * (1 - sy)
    flip = torch.where(torch.rand(k, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(k, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx * flip, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    v = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    mean = v.mean((1, 2, 3), keepdim=True)
    v = (v - mean) * u(0.7, 1.3).view(k, 1, 1, 1) + mean + u(-0.3, 0.3).view(k, 1, 1, 1)
    if channel_jitter:  # per-channel gain and shift: no instance is told apart by its exact shade
        gain = 1 + (torch.rand(k, 3, 1, 1, generator=gen) * 2 - 1) * channel_jitter
        shift = (torch.rand(k, 3, 1, 1, generator=gen) * 2 - 1) * channel_jitter
        v = v * gain + shift
    grey = v.mean(1, keepdim=True)
    sat = u(0.6, 1.4).view(k, 1, 1, 1)
    sat[torch.rand(k, generator=gen) < grey_p] = 0.0
    return grey + (v - grey) * sat


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each view must pick its partner among the 2k - 1 others."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    k = len(z1)
    target = torch.cat([torch.arange(k, 2 * k), torch.arange(0, k)])
    return F.cross_entropy(sim, target)


def pretrain_on_pixels(pixels: torch.Tensor, out: str, epochs: int = EPOCHS, batch: int = 256,
                       lr: float = 2e-3, temperature: float = 0.2, cluster_rounds: int = 1,
                       clusters: int = 256, cluster_epochs: int = 10, seed: int = 0,
                       threads: int | None = None, crop_scale: float = CROP_SCALE,
                       standardise: bool = True, log=print) -> dict:
    """Pretrain ``small-cnn`` on uint8 ``pixels`` (n, 3, s, s); save its state dict to ``out``.
    Seeded: with ``threads`` fixed, the same weights on any machine."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        backbone = SmallCNN()
        project = nn.Sequential(nn.Linear(backbone.out_dim, 128), nn.ReLU(), nn.Linear(128, 64))
        params = list(backbone.parameters()) + list(project.parameters())
        opt = torch.optim.Adam(params, lr=lr)
        steps = epochs * max(1, len(pixels) // batch)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        x_all = normalize(pixels)
        losses = []
        gen_views = lambda x: augment(x, gen, crop_scale, channel_jitter=0.2)  # noqa: E731
        for epoch in range(epochs):
            perm = torch.randperm(len(pixels), generator=gen)
            total, n = 0.0, 0
            for lo in range(0, max(1, len(perm) - batch + 1), batch):  # full batches only
                x = x_all[perm[lo:lo + batch]]
                loss = nt_xent(project(backbone(gen_views(x))), project(backbone(gen_views(x))),
                               temperature)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total, n = total + loss.item(), n + 1
            losses.append(total / n)
            log(f"pretrain epoch {epoch + 1}/{epochs}: contrastive loss {losses[-1]:.3f}")
        k = max(2, min(clusters, len(pixels) // 8))  # a few images per cluster at least
        for r in range(cluster_rounds):
            cluster_round(backbone, x_all, k, cluster_epochs, batch, lr, gen, seed + r,
                          max(crop_scale, 0.8),
                          lambda m: log(f"cluster round {r + 1}/{cluster_rounds}: {m}"))
        if standardise:
            backbone.set_standardisation(backbone_features(backbone, x_all, normalised=True))
        torch.save(backbone.state_dict(), out)
        return {"images": len(pixels), "size": pixels.shape[-1], "epochs": epochs,
                "cluster_rounds": cluster_rounds, "clusters": k,
                "loss_first": losses[0], "loss_last": losses[-1], "seconds": time.perf_counter() - t0}
    finally:
        torch.set_num_threads(old)


def pseudo_labels(features: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means cluster of each image on standardised, PCA-whitened, unit-length features."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    f = (features - features.mean(0)) / (features.std(0) + 1e-6)
    z = PCA(min(32, f.shape[1], len(f)), whiten=True, random_state=seed).fit_transform(f)
    z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-12
    return KMeans(k, n_init=1, random_state=seed).fit_predict(z)


def cluster_round(backbone: nn.Module, x_all: torch.Tensor, k: int, epochs: int, batch: int,
                  lr: float, gen: torch.Generator, seed: int, crop_scale: float, log) -> None:
    """One DeepCluster round: pseudo-labels from k-means, then learn to predict them."""
    target = torch.from_numpy(pseudo_labels(
        backbone_features(backbone, x_all, normalised=True).numpy(), k, seed)).long()
    backbone.train()
    head = nn.Linear(backbone.out_dim, k)
    opt = torch.optim.Adam(list(backbone.parameters()) + list(head.parameters()), lr=lr)
    for epoch in range(epochs):
        total, n = 0.0, 0
        for idx in torch.randperm(len(x_all), generator=gen).split(batch):
            view = augment(x_all[idx], gen, crop_scale, channel_jitter=0.2)
            loss = F.cross_entropy(head(backbone(view)), target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n = total + loss.item(), n + 1
    log(f"{k} clusters, {epochs} epochs, loss {total / n:.3f}")


@torch.no_grad()
def backbone_features(backbone: nn.Module, pixels: torch.Tensor, normalised: bool = False
                      ) -> torch.Tensor:
    """Features of uint8 pixels (or already normalised inputs), in chunks."""
    backbone.eval()
    prep = (lambda x: x) if normalised else normalize
    return torch.cat([backbone(prep(pixels[lo:lo + 1024])) for lo in range(0, len(pixels), 1024)])


def linear_probe(features: torch.Tensor, labels: np.ndarray, names: list[str], seed: int = 0
                 ) -> dict[str, float]:
    """Held-out accuracy of a logistic regression per attribute on (standardised) features."""
    from sklearn.linear_model import LogisticRegression

    x = features.numpy()
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    tr, te = order[:cut], order[cut:]
    out = {}
    for j, name in enumerate(names):
        clf = LogisticRegression(max_iter=300).fit(x[tr], labels[tr, j])
        out[name] = float(clf.score(x[te], labels[te, j]))
    return out
