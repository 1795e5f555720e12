"""Which ID rows a shard keeps: KeyIndex deletion, admission by count, TTL and capacity
eviction with their optimizer slots, memory given back, and the sketch's error rate."""
import numpy as np
import pytest

from hvams.embedding.init import initial_rows
from hvams.embedding.key_index import KeyIndex
from hvams.embedding.lifecycle import CapacityError, RowPolicy
from hvams.embedding.shard import EmbeddingShard
from hvams.embedding.sketch import CountMinSketch

DIM = 4


def test_key_index_deletes_reuses_and_shrinks_like_a_dict():
    rng = np.random.default_rng(0)
    index, model = KeyIndex(16), {}
    for _ in range(40):
        absent = np.setdiff1d(rng.choice(1 << 40, 400, replace=False), list(model))
        rows = index.insert(absent)
        model.update(zip(absent.tolist(), rows.tolist()))
        gone = rng.choice(list(model), min(len(model), 300), replace=False)
        index.delete(gone)
        for k in gone.tolist():
            del model[k]
        # keep rows dense, as the shard does: renumber the survivors 0..n-1
        keys = np.array(sorted(model), np.int64)
        index.relabel(keys, np.arange(len(keys)))
        model = dict(zip(keys.tolist(), range(len(keys))))
        probe = np.concatenate([keys, gone])
        want = np.array([model.get(k, -1) for k in probe.tolist()])
        assert np.array_equal(index.lookup(probe), want)
        assert len(index) == len(model)
    big = len(index._keys)
    index.delete(np.array(list(model), np.int64)[: len(model) - 10])
    index.shrink()
    assert len(index._keys) < big and len(index) == 10
    with pytest.raises(KeyError):
        index.delete(np.array([1 << 50], np.int64))


def _shard(policy=RowPolicy(), optimizer="adagrad"):
    return EmbeddingShard("user", DIM, optimizer, 0.1, seed=3, capacity=4, policy=policy)


def _step(shard, keys, rng):
    keys = np.asarray(keys, np.int64)
    shard.gather(keys)
    shard.apply(keys, rng.normal(size=(len(keys), DIM)).astype(np.float32))


def _row_and_slots(shard, key):
    r = shard.index.lookup(np.array([key]))[0]
    return None if r < 0 else (shard.rows[r].copy(), {k: v[r].copy() for k, v in shard.slots.items()})


@pytest.mark.parametrize("optimizer", ["adagrad", "adam"])
def test_ttl_evicts_unseen_rows_with_their_slots_and_a_returning_key_restarts(optimizer):
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    ttl = _shard(RowPolicy(ttl_days=2), optimizer)
    plain = _shard(optimizer=optimizer)
    days = [[1, 2, 3, 4], [3, 4, 5], [5, 6], [6, 7]]
    for day in days:
        for shard, rng in ((ttl, rng_a), (plain, rng_b)):
            _step(shard, day, rng)
            shard.end_day()
    # key 1 and 2: last seen on day 0, gone at the end of day 2; 3, 4 (day 1) at the end of day 3
    assert sorted(ttl.row_keys[:len(ttl)].tolist()) == [5, 6, 7]
    assert ttl.counts["evicted_ttl"] == 4 and sorted(plain.row_keys[:len(plain)]) == list(range(1, 8))
    for key in (5, 6, 7):  # survivors carry exactly their own rows and optimizer slots
        (r1, s1), (r2, s2) = _row_and_slots(ttl, key), _row_and_slots(plain, key)
        assert np.array_equal(r1, r2) and all(np.array_equal(s1[k], s2[k]) for k in s1)
    ttl.gather(np.array([1], np.int64))  # back after eviction: from its initial row again
    row, slots = _row_and_slots(ttl, 1)
    assert np.array_equal(row, initial_rows(np.array([1]), DIM, "user", 3, 0.05)[0])
    assert all(not v.any() for v in slots.values())


@pytest.mark.parametrize("order", ["lru", "lfu"])
def test_capacity_evicts_by_policy_never_the_steps_own_keys(order):
    rng = np.random.default_rng(2)
    shard = _shard(RowPolicy(max_rows=6, evict=order))
    _step(shard, [1, 2, 3], rng)
    _step(shard, [1, 2, 4], rng)
    _step(shard, [1, 5, 6], rng)          # 6 rows: full
    _step(shard, [7, 8], rng)             # two must go, and one more: down to 5 (98%, >= 1 row)
    live = set(shard.row_keys[:len(shard)].tolist())
    assert len(live) == 5 and {7, 8} <= live
    gone = set(range(1, 9)) - live
    if order == "lru":   # 3 (last used in step 1), then 2 and 4 (step 2)
        assert gone == {2, 3, 4}
    else:                # three of the keys used once
        assert gone < {3, 4, 5, 6}
    assert 1 in live and shard.counts["evicted_capacity"] == 3
    with pytest.raises(CapacityError, match=r"table 'user' on server 0: one step needs 7 rows "
                                            r"\(0 present \+ 7 new distinct keys\) but "
                                            r"max_rows_per_shard is 6"):
        shard.gather(np.arange(100, 107, dtype=np.int64))


def test_eviction_gives_memory_back():
    shard = _shard(RowPolicy(ttl_days=1))
    shard.gather(np.arange(20_000, dtype=np.int64))
    shard.end_day()
    big_rows, big_index = shard.rows.nbytes, shard.index._keys.nbytes
    shard.gather(np.arange(50, dtype=np.int64))
    shard.end_day()                        # 19,950 rows unseen for a day: evicted
    assert len(shard) == 50
    assert shard.rows.nbytes * 8 < big_rows and shard.index._keys.nbytes * 8 < big_index
    assert all(v.nbytes == shard.rows.nbytes for v in shard.slots.values())


def test_admission_serves_initial_rows_and_drops_gradients_until_the_kth_sighting():
    shard = _shard(RowPolicy(min_count=3, sketch_width=1 << 16))
    rng = np.random.default_rng(4)
    init = initial_rows(np.array([9]), DIM, "user", 3, 0.05)[0]
    for sighting in (1, 2):
        assert np.array_equal(shard.gather(np.array([9], np.int64))[0], init)
        shard.apply(np.array([9], np.int64), rng.normal(size=(1, DIM)).astype(np.float32))
        assert len(shard) == 0 and shard.counts["filtered"] == sighting
    _step(shard, [9], rng)                 # third sighting: admitted, then trained
    assert len(shard) == 1 and shard.counts["admitted"] == 1
    assert not np.array_equal(_row_and_slots(shard, 9)[0], init)


def test_sketch_never_undercounts_and_overcounts_within_its_bound():
    """Count-min: an estimate exceeds the true count by more than e/width * total with
    probability at most exp(-depth). Measured over 60,000 keys."""
    rng = np.random.default_rng(5)
    sketch = CountMinSketch(width=1 << 15, depth=4, seed=1)
    keys = rng.choice(1 << 50, 60_000, replace=False).astype(np.int64)
    true = rng.integers(1, 4, len(keys))
    for t in range(3):
        sketch.add(keys[true > t])
    est = sketch.estimate(keys)
    over, prob = sketch.error_bound()
    assert (est >= true).all()
    rate = float(((est - true) > over).mean())
    assert rate <= prob, (rate, over, prob)
    assert sketch.nbytes == 4 * (1 << 15) * 4


def test_policy_state_round_trips_through_a_checkpoint():
    rng = np.random.default_rng(6)
    policy = RowPolicy(min_count=2, ttl_days=2, max_rows=50, sketch_width=1 << 12)
    a = _shard(policy)
    for day in range(3):
        for _ in range(4):
            _step(a, rng.choice(80, 20, replace=False), rng)
        a.end_day()
    st = a.state()
    b = _shard(policy)
    b.load_clock(*st["clock"], st["sketch"], int(st["sketch_total"][0]))
    b.load(st["keys"], st["rows"], {k[5:]: v for k, v in st.items() if k.startswith("slot_")},
           int(st["step"][0]), {k[5:]: v for k, v in st.items() if k.startswith("meta_")})
    for shard in (a, b):                   # the same future on both
        r = np.random.default_rng(7)
        for _ in range(5):
            _step(shard, r.choice(120, 25, replace=False), r)
        shard.end_day()
    sa, sb = a.state(), b.state()
    assert sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


def test_a_shard_held_at_its_cap_does_not_rebuild_its_index_every_step(monkeypatch):
    """At a power-of-two row cap the index has no spare room for the tombstones evictions
    leave; its rebuild makes some, so a shard churning at its cap rebuilds now and then,
    not at every eviction round."""
    rebuilds, step = [], 0
    real = KeyIndex._rebuild

    def counted(self, cap):
        rebuilds.append((step, cap))
        real(self, cap)

    monkeypatch.setattr(KeyIndex, "_rebuild", counted)
    rng = np.random.default_rng(4)
    shard = _shard(RowPolicy(max_rows=1 << 10))
    for step in range(150):                  # 40 new keys a step: full from step 26 on,
        _step(shard, np.arange(step * 40, (step + 1) * 40), rng)   # then evicting every step
    assert len(shard) <= 1 << 10 and shard.counts["evicted_capacity"] > 4000
    at_cap = [r for r in rebuilds if r[0] > 26]
    assert len(at_cap) <= 5, rebuilds        # (before the headroom: one per step)
    assert np.array_equal(shard.index.lookup(shard.row_keys[:len(shard)]), np.arange(len(shard)))
    with pytest.raises(KeyError, match="to relabel are not in the index"):
        shard.index.relabel(np.array([1 << 50], np.int64), np.array([0]))
