"""Re-shard loading reads each server's rows in blocks straight from the shard files: the
result equals reading the files whole, at any block size, and the empty shard adopts it."""
import numpy as np
import pytest

from hvams.embedding.shard import EmbeddingShard
from hvams.protocol.channels import id_route
from hvams.train import checkpoint as ckpt


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


@pytest.mark.parametrize("block", [1, 7, 64, 1 << 16])
def test_blocks_equal_whole_files(three_server_ckpt, block):
    keep = lambda k: id_route("item")(k, 2) == 1  # noqa: E731
    keys, rows, slots, step = ckpt.load_owned_rows(three_server_ckpt, "item", keep, block=block)
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
