"""Backbones for images no available network was trained on.

``synthetic``: small-cnn pretrained on freshly rendered images of the synthetic
world's domain, labelled with their attributes (the world's stand-in for
ImageNet weights). ``selfsup``: small-cnn pretrained on a store's own images
without labels (SimCLR, then DeepCluster rounds). Both read images (render,
store, decode), so they sit above ``models/``, which stays plain torch.
"""
from __future__ import annotations

# The smallest share of an image a contrastive view keeps. Keeping it whole (1.0) reads
# counts better in a linear probe, yet DICM did no better on mosaic (docs/benchmarks.md).
CROP_SCALE = 0.5
# Contrastive epochs: 60 beat 30 for DICM on posters and mosaic in each of 3 pretraining
# seeds; 120 won on posters only (docs/benchmarks.md, session of 2026-12-04).
EPOCHS = 60


def synthesize_world(out, cfg, progress: bool = True, overwrite: bool = False) -> dict:
    """``hvams.data.synth.synthesize`` with the world's backbone pretrained when its config
    asks for one (``pretrain_images``)."""
    from ..data.synth import synthesize
    from .synthetic import pretrain_small_cnn

    return synthesize(out, cfg, progress, overwrite, pretrain=pretrain_small_cnn)
