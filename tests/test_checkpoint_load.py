"""Re-shard loading reads each server's rows in blocks straight from the shard files: the
result equals reading the files whole, at any block size, and the empty shard adopts it."""
import numpy as np
import pytest

from hvams.embedding.shard import EmbeddingShard
from hvams.protocol.channels import id_route
from hvams.train import checkpoint as ckpt
from hvams.train import shard_files


@pytest.fixture
def three_server_ckpt(tmp_path):
    d = tmp_path / "ckpt-00000005"
    rng = np.random.default_rng(0)
    files = {}
    keys = rng.choice(10**9, 500, replace=False).astype(np.int64)
    where = id_route("item")(keys, 3)
    for s in range(3):
        k = keys[where == s]
        sh = EmbeddingShard("item", 4, "adam")
        sh.load(k, rng.random((len(k), 4), np.float32),
                {"m": rng.random((len(k), 4), np.float32), "v": rng.random((len(k), 4), np.float32)}, 5)
        files.update(ckpt.save_shards(d, s, {"item": sh}))
    ckpt.write_manifest(d, files, {"step": 5})
    return d


@pytest.mark.parametrize("block,servers", [(1, 2), (7, 2), (64, 2), (1 << 16, 2), (64, 1)])
def test_blocks_equal_whole_files(three_server_ckpt, block, servers):
    """Re-sharding 3 -> 2 reads blocks of rows; 3 -> 1 keeps whole files (one read each)."""
    keep = lambda k: id_route("item")(k, servers) == servers - 1  # noqa: E731
    keys, rows, slots, step, _ = shard_files.load_owned_rows(three_server_ckpt, "item", keep, block=block)
    want_k, want_r, want_m = [], [], []
    for s in range(3):
        with np.load(three_server_ckpt / f"server-{s}.npz") as z:
            m = keep(z["item/keys"])
            want_k.append(z["item/keys"][m])
            want_r.append(z["item/rows"][m])
            want_m.append(z["item/slot_m"][m])
    assert step == 5 and sorted(slots) == ["m", "v"]
    assert np.array_equal(keys, np.concatenate(want_k))
    assert np.array_equal(rows, np.concatenate(want_r))
    assert np.array_equal(slots["m"], np.concatenate(want_m))
    shard = EmbeddingShard("item", 4, "adam")
    shard.load(keys, rows, slots, step)
    assert np.array_equal(shard.gather(keys[::3], insert=False), rows[::3])
    assert shard.step == 5 and len(shard) == len(keys)


def test_a_changed_byte_makes_a_checkpoint_incomplete_and_old_sha256_manifests_still_verify(
        three_server_ckpt):
    import json

    d = three_server_ckpt
    manifest = json.loads((d / ckpt.MANIFEST).read_text())
    assert all(v.startswith("crc32:") for v in manifest["files"].values())
    assert ckpt.is_complete(d)
    # a checkpoint written before crc32 lists bare sha256 digests: still checked, still loads
    old = {f: ckpt.sha256(d / f) for f in manifest["files"]}
    ckpt.write_manifest(d, old, {"step": 5})
    assert ckpt.is_complete(d)
    path = d / "server-1.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert not ckpt.is_complete(d)
    ckpt.write_manifest(d, manifest["files"], {"step": 5})
    assert not ckpt.is_complete(d)   # the crc32 sees the same byte
