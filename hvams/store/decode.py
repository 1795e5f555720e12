"""Decode stored image bytes into normalised float tensors.

The pixel count is read from the JPEG/PNG header and checked *before*
decoding, so a hostile 50k x 50k image cannot exhaust a server's memory.
"""
from __future__ import annotations

import struct
import warnings

import torch

# torchvision 0.29 deprecates torchvision.io's codecs in favour of TorchCodec,
# which is not in our pinned stack; the decoders still work and are tested.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")

from .errors import CorruptImageError

DEFAULT_MAX_PIXELS = 4096 * 4096
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def sniff_format(data: bytes) -> str:
    """'jpeg', 'png' or 'unknown' from the magic bytes."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return "unknown"


def header_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG IHDR or a JPEG SOF marker, without decoding."""
    fmt = sniff_format(data)
    if fmt == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ValueError("PNG without an IHDR header")
        return struct.unpack(">II", data[16:24])
    if fmt == "jpeg":
        i = 2
        while i + 4 <= len(data):
            if data[i] != 0xFF:
                raise ValueError(f"bad JPEG marker at byte {i}")
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            (length,) = struct.unpack(">H", data[i + 2:i + 4])
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                if i + 9 > len(data):
                    break
                height, width = struct.unpack(">HH", data[i + 5:i + 9])
                return width, height
            i += 2 + length
        raise ValueError("JPEG without a frame header (truncated?)")
    raise ValueError("neither JPEG nor PNG")


def decode_rgb(data: bytes, key: int = -1, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """uint8 RGB tensor (3, H, W) of encoded bytes; raises CorruptImageError.

    Grayscale, alpha (dropped), CMYK and 16-bit inputs all come out as 8-bit RGB.
    """
    from torchvision.io import ImageReadMode, decode_image

    if not data:
        raise CorruptImageError(key, "zero-length value")
    try:
        width, height = header_size(data)
    except (ValueError, struct.error) as exc:
        raise CorruptImageError(key, f"unreadable header: {exc}") from None
    if width <= 0 or height <= 0:
        raise CorruptImageError(key, f"invalid size {width}x{height}")
    if width * height > max_pixels:
        raise CorruptImageError(key, f"{width}x{height} = {width * height} pixels exceeds the "
                                     f"limit of {max_pixels}")
    try:
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        img = decode_image(raw, mode=ImageReadMode.RGB)
    except Exception as exc:  # torchvision raises RuntimeError/ValueError variants
        raise CorruptImageError(key, f"decode failed: {str(exc).splitlines()[0][:200]}") from None
    if img.dtype == torch.uint16:
        img = (img.to(torch.int32) >> 8).to(torch.uint8)
    elif img.dtype != torch.uint8:
        img = img.to(torch.uint8)
    return img
