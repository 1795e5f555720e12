"""Every format the decoder reads (JPEG, PNG, WebP, GIF, BMP, AVIF) through ingest -> verify ->
training, and the decompression-bomb limit for each of them."""

import numpy as np
import pytest

from hvams.store.decode import FORMATS, decode_rgb, header_size, sniff_format
from hvams.store.errors import CorruptImageError
from hvams.store.ingest import ingest
from hvams.store.lmdb_store import ImageStore, read_manifest
from hvams.store.verify import store_stats, verify_store
from images import bomb, encode
from mpi_harness import train_ok

ARR = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_decodes_to_rgb8(fmt):
    data = encode(ARR, fmt)
    assert sniff_format(data) == fmt and header_size(data) == (32, 24)
    img = decode_rgb(data)
    assert img.shape == (3, 24, 32) and str(img.dtype) == "torch.uint8"
    if fmt in ("png", "bmp", "webp"):  # lossless encodings come back exactly
        assert np.array_equal(img.permute(1, 2, 0).numpy(), ARR)


def test_animated_gif_gives_its_first_frame():
    import io

    from PIL import Image

    buf = io.BytesIO()
    frames = [Image.fromarray(ARR), Image.fromarray(255 - ARR)]
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    first = decode_rgb(buf.getvalue())
    assert first.shape == (3, 24, 32)
    assert np.array_equal(first.permute(1, 2, 0).numpy(), decode_rgb(encode(ARR, "gif"))
                          .permute(1, 2, 0).numpy())


@pytest.mark.parametrize("fmt", FORMATS)
def test_bomb_limit_holds_for_every_format(fmt):
    data = bomb(fmt)
    w, h = header_size(data)
    assert w * h > 4096 * 4096
    with pytest.raises(CorruptImageError, match="exceeds the limit"):
        decode_rgb(data, 7)


def test_every_format_through_ingest_verify_and_training(tiny_world, tmp_path):
    """The tiny world's images re-encoded, each in one of the six formats in turn, ingested
    into a new store under the same ids, verified, then served to a dicm run on 2+2 ranks."""
    src = ImageStore(tiny_world / "images")
    parts = read_manifest(tiny_world / "images")["partitions"]
    rows, i = [], 0
    for p in range(parts):
        for key, data in src.iter_partition(p):
            arr = decode_rgb(data).permute(1, 2, 0).contiguous().numpy()
            rows.append(("tiny", str(key), encode(arr, FORMATS[i % len(FORMATS)])))
            i += 1
    store = tmp_path / "images"
    summary = ingest(rows, store, num_partitions=parts, progress=False)
    assert summary["rejected"] == 0 and summary["stored"] == len(rows)
    assert set(store_stats(store)["formats"]) == set(FORMATS)
    res = verify_store(store, workers=2, progress=False)
    assert res["corrupt"] == [] and res["checksum_mismatch"] == [] and res["images"] == len(rows)
    out = tmp_path / "run"
    summary, _ = train_ok(4, tiny_world, out, images=store, servers=2, model="dicm", batch_size=32,
                          max_steps=2)
    img = summary["images"]
    assert img["missing"] == img["corrupt"] == 0 and img["requested"] == img["served"] > 0
