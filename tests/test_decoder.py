"""ImageDecoder: the batched JPEG path (nvjpeg's on CUDA) equals the per-image CPU path.

The batched path runs here on the CPU (``batched_jpeg=True``) through the same
``torchvision.io.decode_jpeg(list, device=...)`` call the GPU uses, so CI covers it.
"""
import numpy as np
import pytest
import torch

from hvams.imaging.decoder import ImageDecoder, resize_batch
from hvams.imaging.source import resize_uint8
from images import huge_png_header, jpeg, png

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _blobs():
    return [jpeg((40, 30), seed=1), png((20, 20)), jpeg((64, 64), "L", seed=2),
            b"\xff\xd8\xff\xe0 truncated jpeg", jpeg((64, 64), "CMYK", seed=3),
            huge_png_header(), jpeg((40, 30), seed=4), png((16, 16), "I;16")]


@pytest.mark.parametrize("device", DEVICES)
def test_batched_jpeg_path_equals_per_image_path(device):
    keys = np.arange(len(_blobs()), dtype=np.int64)
    host = ImageDecoder(32, 4096 * 4096, "cpu", batched_jpeg=False)
    batched = ImageDecoder(32, 4096 * 4096, device, batched_jpeg=True)
    a, ok_a, err_a = host.decode(keys, _blobs())
    b, ok_b, err_b = batched.decode(keys, _blobs())
    assert ok_a.tolist() == ok_b.tolist() == [True, True, True, False, True, False, True, True]
    assert b.device.type == device and b.shape == (8, 3, 32, 32) and b.dtype == torch.uint8
    # nvjpeg's IDCT may differ from libjpeg's by a grey level or two; the CPU path is exact
    tol = 0 if device == "cpu" else 3
    assert (a.int() - b.cpu().int()).abs().max() <= tol
    assert sorted(e.key for e in err_a) == sorted(e.key for e in err_b) == [3, 5]
    assert "exceeds the limit" in str(next(e for e in err_b if e.key == 5))
    # the JPEGs went through the batched decoder, the PNGs through the host decoder
    assert batched.counts["device_decoded"] >= 3 and batched.counts["host_decoded"] >= 2


def test_a_refused_batch_falls_back_image_by_image():
    keys = np.arange(3, dtype=np.int64)
    blobs = [jpeg(seed=1), b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x10\x00\x10" + b"\x00" * 40, jpeg(seed=2)]
    dec = ImageDecoder(16, 4096 * 4096, "cpu", batched_jpeg=True)
    px, ok, errors = dec.decode(keys, blobs)
    assert ok.tolist() == [True, False, True] and [e.key for e in errors] == [1]
    assert dec.counts["device_refused"] == 1 and dec.counts["device_decoded"] == 2
    assert px[1].abs().sum() == 0


def test_batched_resize_equals_one_image_resize():
    imgs = torch.randint(0, 256, (5, 3, 48, 40), dtype=torch.uint8)
    batch = resize_batch(imgs, 32)
    for i in range(5):
        assert torch.equal(batch[i], resize_uint8(imgs[i], 32))


def test_the_cpu_resize_is_within_one_grey_level_of_the_float_kernel():
    """The CPU resizes with torch's uint8 kernel; CUDA has only the float one."""
    import torch.nn.functional as F

    for shape, size in [((4, 3, 64, 64), 32), ((3, 3, 48, 40), 32), ((2, 3, 20, 20), 32),
                        ((1, 3, 300, 200), 64)]:
        imgs = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        ref = F.interpolate(imgs.float(), size=(size, size), mode="bilinear", antialias=True,
                            align_corners=False).round().clamp(0, 255).to(torch.uint8)
        out = resize_batch(imgs, size)
        assert out.dtype == torch.uint8 and out.shape == ref.shape
        assert (out.int() - ref.int()).abs().max() <= 1, shape
