"""Real image bytes of every kind the bad-input tests need."""
import io

import numpy as np
from PIL import Image


def jpeg(size=(32, 24), mode="RGB", seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue()


def png(size=(20, 20), mode="RGB", seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        arr = rng.integers(0, 65535, (size[1], size[0]), dtype=np.uint16)
        img = Image.fromarray(arr)
    else:
        arr = rng.integers(0, 255, (size[1], size[0], 4), dtype=np.uint8)
        img = Image.fromarray(arr, "RGBA").convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def huge_png_header(width=100_000, height=100_000) -> bytes:
    """A tiny PNG whose header claims an enormous size (a decompression bomb)."""
    import struct
    import zlib

    raw = png((4, 4))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return raw[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + raw[33:]
