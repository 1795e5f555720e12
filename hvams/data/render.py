"""Render an item's latent visual attributes into an RGB image.

Attributes: shape, hue, pattern, size. Nuisance: position, rotation,
background colour and noise, hue and brightness jitter. The attributes can
only be learned from the pixels; the nuisance must be ignored.
"""
from __future__ import annotations

import colorsys
import io

import numpy as np
from PIL import Image

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond")
HUES = tuple(i / 8 for i in range(8))
PATTERNS = ("solid", "stripes", "dots", "checker")
SIZES = ("small", "large")
ATTRIBUTES = {"shape": len(SHAPES), "hue": len(HUES), "pattern": len(PATTERNS), "size": len(SIZES)}


def _shape_mask(kind: int, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    name = SHAPES[kind]
    if name == "circle":
        return x * x + y * y < r * r
    if name == "square":
        return np.maximum(np.abs(x), np.abs(y)) < 0.8 * r
    if name == "diamond":
        return np.abs(x) + np.abs(y) < 1.05 * r
    if name == "cross":
        w = r / 3
        return ((np.abs(x) < w) & (np.abs(y) < r)) | ((np.abs(y) < w) & (np.abs(x) < r))
    if name == "ring":
        d = x * x + y * y
        return (d < r * r) & (d > (0.55 * r) ** 2)
    # triangle: three half-planes of an equilateral triangle of circumradius r
    m = np.ones_like(x, dtype=bool)
    for k in range(3):
        a = 2 * np.pi * k / 3 + np.pi / 2
        m &= x * np.cos(a) + y * np.sin(a) < 0.5 * r
    return m


def _pattern(kind: int, x: np.ndarray, y: np.ndarray, period: float) -> np.ndarray:
    name = PATTERNS[kind]
    if name == "solid":
        return np.ones_like(x)
    if name == "stripes":
        return np.where(np.floor(y / period) % 2 == 0, 1.0, 0.35)
    if name == "dots":
        cx, cy = (x / period) % 1 - 0.5, (y / period) % 1 - 0.5
        return np.where(cx * cx + cy * cy < 0.09, 0.3, 1.0)
    return np.where((np.floor(x / period) + np.floor(y / period)) % 2 == 0, 1.0, 0.35)


def render(attrs: tuple[int, int, int, int], rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """uint8 (size, size, 3) image of (shape, hue, pattern, size) with nuisance."""
    shape, hue, pattern, big = attrs
    s = size / 64.0
    radius = (20.0 if big else 12.5) * s * rng.uniform(0.92, 1.08)
    cx = size / 2 + rng.uniform(-1, 1) * (size / 2 - radius - 2 * s)
    cy = size / 2 + rng.uniform(-1, 1) * (size / 2 - radius - 2 * s)
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    c, si = np.cos(theta), np.sin(theta)
    x, y = c * dx + si * dy, -si * dx + c * dy
    mask = _shape_mask(shape, x, y, radius)
    shade = _pattern(pattern, x, y, 6.0 * s)
    h = (HUES[hue] + rng.uniform(-0.02, 0.02)) % 1.0
    rgb = np.array(colorsys.hsv_to_rgb(h, rng.uniform(0.75, 0.95), rng.uniform(0.8, 1.0)), np.float32)
    bg = rng.uniform(0.55, 0.9) * np.ones(3, np.float32) + rng.uniform(-0.05, 0.05, 3).astype(np.float32)
    img = np.empty((size, size, 3), np.float32)
    img[:] = bg
    img[mask] = shade[mask, None] * rgb
    img += rng.normal(0, 0.04, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def encode(img: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    """Encode a uint8 HxWx3 array as JPEG or PNG bytes."""
    buf = io.BytesIO()
    pil = Image.fromarray(img)
    if fmt == "jpeg":
        pil.save(buf, format="JPEG", quality=quality)
    else:
        pil.save(buf, format="PNG")
    return buf.getvalue()
