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
    # a frame header that claims 3 components (so it is routed to the batched decoder), then junk
    bad = b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x10\x00\x10\x03" + b"\x00" * 40
    blobs = [jpeg(seed=1), bad, jpeg(seed=2)]
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


@pytest.mark.parametrize("device", DEVICES)
def test_only_grey_and_ycbcr_jpegs_go_to_the_batched_decoder(device):
    """nvjpeg (through torchvision) is not set up for 4-component JPEGs: a CMYK JPEG is
    routed to the host decoder, whose colours equal PIL's CMYK -> RGB conversion."""
    import io

    from PIL import Image

    from hvams.store.decode import jpeg_components

    blobs = [jpeg((24, 24), seed=1), jpeg((24, 24), "L", seed=2), jpeg((24, 24), "CMYK", seed=3)]
    assert [jpeg_components(b) for b in blobs] == [3, 1, 4]
    assert jpeg_components(b"\xff\xd8\xff\xe0 truncated") is None
    dec = ImageDecoder(24, 4096 * 4096, device, batched_jpeg=True)
    px, ok, errors = dec.decode(np.arange(3, dtype=np.int64), blobs)
    assert ok.all() and not errors
    assert dec.counts == {"device_decoded": 2, "host_decoded": 1, "device_refused": 0}
    want = np.asarray(Image.open(io.BytesIO(blobs[2])).convert("RGB")).transpose(2, 0, 1)
    assert (px[2].cpu().int() - torch.from_numpy(want.copy()).int()).abs().max() <= 1
