"""Decode stored image bytes into uint8 RGB tensors.

Formats: JPEG, PNG, WebP, GIF (first frame) through torchvision's decoders;
BMP and AVIF through Pillow. The pixel count is read from the format's
header and checked *before* decoding, for every format, so a hostile
50k x 50k image cannot exhaust a server's memory.
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


FORMATS = ("jpeg", "png", "webp", "gif", "bmp", "avif")
_PILLOW = ("bmp", "avif")  # torchvision's decode_image does not read these


def sniff_format(data: bytes) -> str:
    """One of ``FORMATS``, or 'unknown', from the magic bytes."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"):
        return "avif"
    return "unknown"


def _jpeg_size(data: bytes) -> tuple[int, int]:
    return _jpeg_frame(data)[:2]


def jpeg_components(data: bytes) -> int | None:
    """Colour components of a JPEG's frame (1 grey, 3 YCbCr, 4 CMYK/YCCK), None if unreadable.

    nvjpeg through torchvision is set up for 1 and 3 only: the device decoder routes the
    others to the host, which converts CMYK right."""
    try:
        return _jpeg_frame(data)[2]
    except (ValueError, struct.error):
        return None


def _jpeg_frame(data: bytes) -> tuple[int, int, int]:
    """(width, height, components) from a JPEG's start-of-frame segment."""
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
            if i + 10 > len(data):
                break
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height, data[i + 9]
        i += 2 + length
    raise ValueError("JPEG without a frame header (truncated?)")


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return (int.from_bytes(data[24:27], "little") + 1,
                int.from_bytes(data[27:30], "little") + 1)
    raise ValueError("WebP without a VP8/VP8L/VP8X header")


def _avif_size(data: bytes) -> tuple[int, int]:
    # 'ispe' (image spatial extents): version/flags, then width and height (big-endian);
    # the largest one bounds what the decoder will allocate.
    best, at = None, data.find(b"ispe")
    while at >= 0 and at + 16 <= len(data):
        w, h = struct.unpack(">II", data[at + 8:at + 16])
        if best is None or w * h > best[0] * best[1]:
            best = (w, h)
        at = data.find(b"ispe", at + 4)
    if best is None:
        raise ValueError("AVIF without an 'ispe' size box")
    return best


def header_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the image's header, without decoding."""
    fmt = sniff_format(data)
    if fmt == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ValueError("PNG without an IHDR header")
        return struct.unpack(">II", data[16:24])
    if fmt == "jpeg":
        return _jpeg_size(data)
    if fmt == "webp":
        return _webp_size(data)
    if fmt == "gif":
        if len(data) < 10:
            raise ValueError("GIF without a screen descriptor")
        return struct.unpack("<HH", data[6:10])
    if fmt == "bmp":
        if len(data) < 26:
            raise ValueError("BMP without a DIB header")
        w, h = struct.unpack("<ii", data[18:26])
        return abs(w), abs(h)  # negative height: rows stored top-down
    if fmt == "avif":
        return _avif_size(data)
    raise ValueError(f"not one of the formats {', '.join(FORMATS)}")


def check_header(data: bytes, key: int = -1, max_pixels: int = DEFAULT_MAX_PIXELS
                 ) -> tuple[int, int]:
    """(width, height) of a decodable image within ``max_pixels``; raises CorruptImageError."""
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
    return width, height


def decode_rgb(data: bytes, key: int = -1, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """uint8 RGB tensor (3, H, W) of encoded bytes; raises CorruptImageError.

    Grayscale, alpha (dropped), CMYK and 16-bit inputs all come out as 8-bit RGB.
    """
    from torchvision.io import ImageReadMode, decode_image

    check_header(data, key, max_pixels)
    try:
        if sniff_format(data) in _PILLOW:
            img = _pillow_rgb(data)
        else:
            raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            img = decode_image(raw, mode=ImageReadMode.RGB)
            if img.dim() == 4:  # an animated GIF: its first frame, the others freed now
                img = img[0].clone()
    except Exception as exc:  # the decoders raise RuntimeError/ValueError/OSError variants
        raise CorruptImageError(key, f"decode failed: {str(exc).splitlines()[0][:200]}") from None
    if img.dtype == torch.uint16:
        img = (img.to(torch.int32) >> 8).to(torch.uint8)
    elif img.dtype != torch.uint8:
        img = img.to(torch.uint8)
    return img


def _pillow_rgb(data: bytes) -> torch.Tensor:
    """(3, H, W) uint8 of a BMP or AVIF through Pillow (the header was checked already)."""
    import io

    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.seek(0)
        rgb = np.asarray(im.convert("RGB"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()
