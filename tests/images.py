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


def encode(arr: np.ndarray, fmt: str) -> bytes:
    """(H, W, 3) uint8 as one of hvams's formats (store.decode.FORMATS), with Pillow."""
    buf = io.BytesIO()
    kw = {"lossless": True} if fmt == "webp" else {}
    Image.fromarray(arr).save(buf, format=fmt.upper(), **kw)
    return buf.getvalue()


def bomb(fmt: str) -> bytes:
    """A small, valid image of ``fmt`` whose header claims a huge size."""
    import struct

    data = bytearray(encode(np.zeros((8, 8, 3), np.uint8), fmt))
    if fmt == "png":
        return huge_png_header()
    if fmt == "jpeg":
        at = next(i for i in range(2, len(data)) if data[i] == 0xFF and data[i + 1] == 0xC0)
        data[at + 5:at + 9] = struct.pack(">HH", 60000, 60000)
    elif fmt == "gif":
        data[6:10] = struct.pack("<HH", 65535, 65535)
    elif fmt == "bmp":
        data[18:26] = struct.pack("<ii", 100_000, -100_000)
    elif fmt == "webp":  # lossless (VP8L): 14-bit width-1 and height-1
        bits = int.from_bytes(data[21:25], "little") & ~((1 << 28) - 1)
        data[21:25] = (bits | 16383 | (16383 << 14)).to_bytes(4, "little")
    elif fmt == "avif":
        at = data.find(b"ispe")
        data[at + 8:at + 16] = struct.pack(">II", 100_000, 100_000)
    return bytes(data)
