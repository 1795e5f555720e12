"""The partitioned LMDB image store: ingest, read, partition ownership, verify."""
import json

import lmdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hvams.keys import image_key_id, key_bytes
from hvams.store import CorruptImageError, MissingImageError
from hvams.store.decode import decode_rgb
from hvams.store.ingest import ingest, rows_from_bytes_table, rows_from_path_csv
from hvams.store.lmdb_store import DuplicateKeyError, ImageStore, read_manifest
from hvams.store.partition import partition_file, partitions_of_server, server_of_image
from hvams.store.verify import store_stats, verify_store
from images import huge_png_header, jpeg, png


def _csv_store(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    (files / "a.jpg").write_bytes(jpeg(seed=1))
    (files / "b.png").write_bytes(png(seed=2))
    (files / "c.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (files / "d.jpg").write_bytes(jpeg(seed=3)[:200])  # truncated
    (files / "e.jpg").write_bytes(b"")
    rows = ["image_key,path", "sku-a,files/a.jpg", "sku-b,files/b.png", "sku-c,files/c.jpg",
            "sku-d,files/d.jpg", "sku-e,files/e.jpg", "sku-f,files/nope.jpg", "42,files/a.jpg"]
    (tmp_path / "images.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "images.csv"


def test_ingest_counts_rejects_and_is_idempotent(tmp_path):
    csv_path = _csv_store(tmp_path)
    store = tmp_path / "store"
    s = ingest(rows_from_path_csv(csv_path), store, num_partitions=4, progress=False)
    assert (s["read"], s["stored"], s["rejected"]) == (7, 3, 4)
    rejects = [json.loads(x) for x in (store / "rejects.jsonl").read_text().splitlines()]
    reasons = {r["image_key"]: r["reason"] for r in rejects}
    assert set(reasons) == {"sku-c", "sku-d", "sku-e", "sku-f"}
    assert "zero-length" in reasons["sku-e"] and "cannot read" in reasons["sku-f"]
    assert "images.csv:7" in [r["source"] for r in rejects if r["image_key"] == "sku-f"][0]
    m = read_manifest(store)
    assert m["images"] == 3 and m["partitions"] == 4 and m["formats"] == {"jpeg": 2, "png": 1}
    # stored bytes are the input bytes, untouched
    st = ImageStore(store)
    assert st.get(image_key_id("sku-a")) == (tmp_path / "files/a.jpg").read_bytes()
    assert st.get(42) == (tmp_path / "files/a.jpg").read_bytes() and st.name(42) == "42"
    assert len(st) == 3
    # a re-run changes nothing
    s2 = ingest(rows_from_path_csv(csv_path), store, progress=False)
    assert (s2["stored"], s2["unchanged"], s2["rejected"], s2["store_images"]) == (0, 3, 4, 3)


def test_duplicate_key_with_other_bytes(tmp_path):
    store = tmp_path / "s"
    ingest([("x", "k1", jpeg(seed=1))], store, num_partitions=2, progress=False)
    with pytest.raises(DuplicateKeyError, match="'k1'"):
        ingest([("x", "k1", jpeg(seed=2))], store, progress=False)
    s = ingest([("x", "k1", jpeg(seed=2))], store, on_duplicate="skip", progress=False)
    assert s["duplicate_skipped"] == 1 and ImageStore(store).get(image_key_id("k1")) == jpeg(seed=1)
    s = ingest([("x", "k1", jpeg(seed=2))], store, on_duplicate="overwrite", progress=False)
    assert s["overwritten"] == 1 and ImageStore(store).get(image_key_id("k1")) == jpeg(seed=2)


def test_ingest_from_bytes_tables(tmp_path):
    import base64

    table = pa.table({"image_key": ["p1", "p2"], "image_bytes": [png(seed=4), b"junk"]})
    pq.write_table(table, tmp_path / "b.parquet")
    (tmp_path / "b.csv").write_text("image_key,image_b64\nq1,%s\nq2,@@notb64@@\n"
                                    % base64.b64encode(jpeg(seed=5)).decode())
    s = ingest(rows_from_bytes_table(tmp_path / "b.parquet"), tmp_path / "s", 4, progress=False)
    assert (s["stored"], s["rejected"]) == (1, 1)
    s = ingest(rows_from_bytes_table(tmp_path / "b.csv"), tmp_path / "s", progress=False)
    assert (s["stored"], s["rejected"], s["store_images"]) == (1, 1, 2)


def test_map_size_grows(tmp_path):
    # 64 MB initial map, ~9 MB of incompressible PNGs into one partition: must grow.
    rows = [("x", f"big{i}", png((1024, 512), seed=i)) for i in range(6)]
    s = ingest(rows, tmp_path / "s", num_partitions=1, check=False, progress=False)
    assert s["stored"] == 6
    st = ImageStore(tmp_path / "s")
    assert st.get(image_key_id("big5")) == rows[5][2]


@pytest.mark.parametrize("num_servers", [1, 2, 3, 5, 8])
def test_partition_to_server_mapping(tiny_world, num_servers):
    root = tiny_world / "images"
    P = read_manifest(root)["partitions"]
    owned = [partitions_of_server(s, num_servers, P) for s in range(num_servers)]
    assert sorted(sum(owned, [])) == list(range(P))  # each partition exactly once
    for s, parts in enumerate(owned):
        assert all(p % num_servers == s for p in parts)
    all_keys = sorted(k for p in range(P) for k, _ in ImageStore(root).iter_partition(p))
    seen = []
    for s in range(num_servers):
        st = ImageStore(root, server=s, num_servers=num_servers)
        keys = [k for p in st.partitions for k, _ in st.iter_partition(p)]
        assert (server_of_image(np.array(keys, np.int64), P, num_servers) == s).all()
        got = st.get_many(keys[:5])
        assert all(isinstance(g, bytes) for g in got)
        seen += keys
        foreign = [k for k in all_keys if server_of_image(np.array([k]), P, num_servers)[0] != s]
        if foreign:
            with pytest.raises(ValueError, match="does not own"):
                st.get_many([foreign[0]])
    assert sorted(seen) == all_keys


def test_too_many_servers_for_partitions():
    with pytest.raises(ValueError, match="only 4 partitions"):
        partitions_of_server(0, 5, 4)


def test_read_time_errors_are_typed(tmp_path):
    store = tmp_path / "s"
    ingest([("x", "good", jpeg()), ("x", "bad", b"\x89PNG\r\n\x1a\nbroken")], store, 2,
           check=False, progress=False)
    st = ImageStore(store)
    got = st.get_many([image_key_id("good"), 123456789])
    assert isinstance(got[0], bytes) and isinstance(got[1], MissingImageError)
    with pytest.raises(MissingImageError, match="123456789"):
        st.get(123456789)
    with pytest.raises(CorruptImageError):
        decode_rgb(st.get(image_key_id("bad")), image_key_id("bad"))


@pytest.mark.parametrize("data,shape", [
    (jpeg((30, 20), "L"), (3, 20, 30)),        # grayscale
    (jpeg((30, 20), "CMYK"), (3, 20, 30)),     # CMYK JPEG
    (png((16, 12), "RGBA"), (3, 12, 16)),      # alpha dropped
    (png((16, 12), "I;16"), (3, 12, 16)),      # 16-bit
])
def test_decode_variants_to_rgb8(data, shape):
    img = decode_rgb(data, 1)
    assert tuple(img.shape) == shape and str(img.dtype) == "torch.uint8"


def test_pixel_guard_before_decode():
    with pytest.raises(CorruptImageError, match="exceeds the limit"):
        decode_rgb(huge_png_header(), 7, max_pixels=10_000_000)


def test_verify_finds_planted_corruption(tmp_path, tiny_world):
    import shutil

    root = tmp_path / "images"
    shutil.copytree(tiny_world / "images", root)
    res = verify_store(root, workers=2, progress=False)
    assert res["images"] == read_manifest(root)["images"] and not res["corrupt"]
    assert not res["checksum_mismatch"]
    st = ImageStore(root)
    victim_part = st.partitions[3]
    victim, data = next(st.iter_partition(victim_part))
    st.close()
    env = lmdb.open(str(root / partition_file(victim_part)), max_dbs=2)
    with env.begin(write=True) as txn:
        txn.put(key_bytes(victim), data[: len(data) // 3], db=env.open_db(b"images", txn=txn))
    env.close()
    res = verify_store(root, workers=2, progress=False)
    assert [c["id"] for c in res["corrupt"]] == [victim]
    assert res["corrupt"][0]["image_key"].startswith("img-")
    assert res["checksum_mismatch"] == [partition_file(victim_part)]
    stats = store_stats(root)
    assert stats["images"] == res["images"] and stats["formats"] == {"jpeg": res["images"]}
