"""Delta checkpoints of one shard, without MPI: a chain read back equals the shard's full
state at that point, row order included, under admission, TTL and capacity eviction; a
re-shard read of a chain equals the same read of a full checkpoint; a torn or altered link
ends the chain there."""
import numpy as np
import pytest

from hvams.embedding.lifecycle import RowPolicy
from hvams.embedding.shard import EmbeddingShard
from hvams.protocol.channels import id_route
from hvams.train import checkpoint as ckpt
from hvams.train import shard_files

POLICIES = {
    "plain": RowPolicy(),
    "lru+ttl+admission": RowPolicy(min_count=2, ttl_days=1, max_rows=300, evict="lru",
                                   sketch_width=1 << 10),
    "lfu": RowPolicy(max_rows=250, evict="lfu"),
}


def _shard(policy, optimizer="adagrad"):
    return EmbeddingShard("item", 4, optimizer, seed=1, policy=policy, track_changes=True)


def _steps(shard, rng, n, universe):
    for _ in range(n):
        keys = np.unique(rng.integers(0, universe, 150))
        shard.gather(keys)
        shard.apply(keys, rng.standard_normal((len(keys), 4)).astype(np.float32))


def _save(run, step, shard, chain):
    """A checkpoint of the one shard as a server writes it: full, or a delta on ``chain``."""
    d = ckpt.ckpt_dir(run, step)
    delta = chain is not None
    files = ckpt.save_shards(d, 0, {"item": shard}, delta=delta)
    meta = ckpt.chain_meta(run, chain, d.name) if delta else {}
    ckpt.write_manifest(d, files, {"step": step, "servers": 1, **meta})
    shard.mark_saved()
    return d, [*chain, d.name] if delta else [d.name]


def _read_back(d):
    f = shard_files.ServerFile(shard_files.chain_paths(d, "server-0.npz"))
    keys = f.keys("item")
    out = {"keys": keys}
    for name in f.names("item"):
        like = f.like("item", name)
        out[name] = np.empty((len(keys), *like.shape[1:]), like.dtype)
        f.read("item", name, np.arange(len(keys)), out[name])
    return out, f.step("item")


def _full_state(shard):
    st = shard.state()
    return {k: v for k, v in st.items() if k not in ("step", "clock", "sketch", "sketch_total")}


@pytest.mark.parametrize("policy", list(POLICIES), ids=list(POLICIES))
@pytest.mark.parametrize("optimizer", ["adagrad", "adam"])
def test_a_chain_reads_back_as_the_full_state_row_order_included(tmp_path, policy, optimizer):
    rng = np.random.default_rng(7)
    shard = _shard(POLICIES[policy], optimizer)
    _steps(shard, rng, 6, 500)
    d, chain = _save(tmp_path, 1, shard, None)
    sizes = []
    for step in range(2, 6):
        _steps(shard, rng, 3, 500 + 200 * step)  # new keys keep coming: evictions, refills
        if step in (3, 4):
            shard.end_day()   # TTL evicts the rows the day before did not use
        d, chain = _save(tmp_path, step, shard, chain)
        got, table_step = _read_back(d)
        want = _full_state(shard)
        assert set(got) == set(want)
        for name in want:
            assert np.array_equal(got[name], want[name]), (step, name)
        assert table_step == shard.step
        sizes.append((d / "server-0.npz").stat().st_size)
        assert ckpt.is_complete(d)
    assert len(chain) == 5 and chain[0] == "ckpt-00000001"
    if policy != "plain":
        assert shard.counts["evicted_capacity"] > 0
    if policy.startswith("lru"):
        assert shard.counts["evicted_ttl"] > 0 and shard.counts["filtered"] > 0


def test_a_delta_names_the_deleted_keys_and_holds_only_the_changed_rows(tmp_path):
    rng = np.random.default_rng(3)
    shard = _shard(RowPolicy(max_rows=400, evict="lru"))
    _steps(shard, rng, 10, 2000)
    _, chain = _save(tmp_path, 1, shard, None)
    before = set(shard.state()["keys"].tolist())
    keys = np.unique(rng.integers(5000, 5200, 150))   # all new: evicts old rows
    shard.gather(keys)
    d, _ = _save(tmp_path, 2, shard, chain)
    after = set(shard.state()["keys"].tolist())
    with np.load(d / "server-0.npz") as z:
        deleted = set(z["item/deleted"].tolist())
        assert before - after <= deleted and not deleted & after
        assert len(z["item/positions"]) < len(after)   # rows neither used nor moved stay out
        assert set(keys.tolist()) <= set(z["item/keys"].tolist())


@pytest.mark.parametrize("servers", [1, 2, 3])
def test_a_chain_reshards_as_the_full_checkpoint_of_its_step(tmp_path, servers):
    rng = np.random.default_rng(11)
    shard = _shard(POLICIES["lru+ttl+admission"])
    _steps(shard, rng, 5, 600)
    _, chain = _save(tmp_path / "delta", 1, shard, None)
    _steps(shard, rng, 4, 900)
    d, chain = _save(tmp_path / "delta", 2, shard, chain)
    _steps(shard, rng, 4, 1200)
    d, chain = _save(tmp_path / "delta", 3, shard, chain)
    full, _ = _save(tmp_path / "full", 3, shard, None)
    for me in range(servers):
        keep = lambda k: id_route("item")(k, servers) == me  # noqa: E731
        a = shard_files.load_owned_rows(d, "item", keep, block=64)
        b = shard_files.load_owned_rows(full, "item", keep, block=64)
        assert np.array_equal(a.keys, b.keys) and np.array_equal(a.rows, b.rows)
        assert a.slots.keys() == b.slots.keys() and a.meta.keys() == b.meta.keys()
        for x, y in [*zip(a.slots.values(), b.slots.values()), *zip(a.meta.values(), b.meta.values())]:
            assert np.array_equal(x, y)
        assert a.step == b.step == shard.step


def test_a_torn_link_ends_the_chain_there(tmp_path, capsys):
    rng = np.random.default_rng(5)
    shard = _shard(RowPolicy())
    _steps(shard, rng, 3, 300)
    _, chain = _save(tmp_path, 1, shard, None)
    for step in (2, 3, 4):
        _steps(shard, rng, 2, 300)
        _, chain = _save(tmp_path, step, shard, chain)
    assert ckpt.latest_complete(tmp_path).name == "ckpt-00000004"
    torn = tmp_path / "ckpt-00000003" / "server-0.npz"
    data = bytearray(torn.read_bytes())
    data[len(data) // 2] ^= 0x40
    torn.write_bytes(bytes(data))
    why = []
    assert ckpt.latest_complete(tmp_path, log=why.append).name == "ckpt-00000002"
    assert len(why) == 2 and "ckpt-00000003/server-0.npz fails its checksum" in why[0]
    torn.unlink()
    assert "is missing" in ckpt.incomplete_because(tmp_path / "ckpt-00000004")


def test_prune_keeps_the_newest_and_the_links_they_need(tmp_path):
    rng = np.random.default_rng(2)
    shard = _shard(RowPolicy())
    chain = None
    for step in range(1, 8):
        _steps(shard, rng, 1, 300)
        # a base every third checkpoint: 1 (2 3) 4 (5 6) 7
        _, chain = _save(tmp_path, step, shard, chain if chain and len(chain) < 3 else None)
    gone = ckpt.prune(tmp_path / "ckpt-00000007", keep=2)
    left = sorted(d.name for d in tmp_path.glob("ckpt-*"))
    assert left == ["ckpt-00000004", "ckpt-00000005", "ckpt-00000006", "ckpt-00000007"]
    assert sorted(gone) == ["ckpt-00000001", "ckpt-00000002", "ckpt-00000003"]
    assert ckpt.is_complete(tmp_path / "ckpt-00000006")
    # a resume from 5 rewrites 6: 7 (a timeline left behind) goes, 6 and the chain it needs stay
    _, chain = _save(tmp_path, 6, shard, ["ckpt-00000004", "ckpt-00000005"])
    (tmp_path / "ckpt-00000009").mkdir()    # a torn one, without a manifest
    assert sorted(ckpt.prune(tmp_path / "ckpt-00000006", keep=1)) == ["ckpt-00000007",
                                                                      "ckpt-00000009"]
    assert sorted(d.name for d in tmp_path.glob("ckpt-*")) == [
        "ckpt-00000004", "ckpt-00000005", "ckpt-00000006"]
