"""TensorCache: hits, misses, bulk LRU eviction, capacity bound."""
import numpy as np
import torch

from hvams.imaging.tensor_cache import TensorCache


def _vals(keys):
    return torch.tensor(np.asarray(keys, np.float32))[:, None].repeat(1, 3)


def test_gather_returns_misses_and_fills_hits():
    c = TensorCache(100)
    c.put_many(np.array([5, 9, 2]), _vals([5, 9, 2]))
    keys = np.array([9, 7, 2, 5, 9, 1])
    out = torch.full((6, 3), -1.0)
    miss = c.gather(keys, np.arange(6), out)
    assert miss.tolist() == [1, 5]
    assert out[:, 0].tolist() == [9, -1, 2, 5, 9, -1]
    assert (c.hits, c.misses, len(c)) == (4, 2, 3)
    # a subset of rows: only those are looked up and filled
    out = torch.zeros((6, 3))
    assert c.gather(keys, np.array([1, 3]), out).tolist() == [1]
    assert out[3, 0] == 5 and out[0, 0] == 0


def test_put_keeps_existing_values_and_ignores_duplicates():
    c = TensorCache(10)
    c.put_many(np.array([1, 2]), _vals([1, 2]))
    c.put_many(np.array([2, 3, 3]), torch.tensor([[20.0] * 3, [3.0] * 3, [30.0] * 3]))
    out = torch.zeros((3, 3))
    assert c.gather(np.array([1, 2, 3]), np.arange(3), out).tolist() == []
    assert out[:, 0].tolist() == [1, 2, 3] and len(c) == 3


def test_eviction_drops_least_recently_used_and_respects_capacity():
    c = TensorCache(8)
    c.put_many(np.arange(8), _vals(range(8)))
    c.gather(np.array([0, 1, 2]), np.arange(3), torch.zeros((3, 3)))  # 0, 1, 2 are recent
    c.put_many(np.array([100]), _vals([100]))
    assert len(c) <= 8
    out = torch.zeros((4, 3))
    assert c.gather(np.array([0, 1, 2, 100]), np.arange(4), out).tolist() == []
    assert out[:, 0].tolist() == [0, 1, 2, 100]
    for _ in range(5):  # many rounds of inserts stay bounded and consistent
        new = np.arange(1000, 1013) + 13 * _
        c.put_many(new, _vals(new))
        assert len(c) <= 8
        out = torch.zeros((len(new), 3))
        missed = c.gather(new, np.arange(len(new)), out)
        hit = np.setdiff1d(np.arange(len(new)), missed)
        assert torch.equal(out[hit, 0], torch.tensor(new[hit], dtype=torch.float32))


def test_zero_capacity_caches_nothing():
    c = TensorCache(0)
    c.put_many(np.array([1]), _vals([1]))
    assert len(c) == 0
    assert c.gather(np.array([1]), np.arange(1), torch.zeros((1, 3))).tolist() == [0]


def test_byte_bound_sets_the_entry_bound_from_the_first_value():
    # 3 float32 = 12 bytes per entry: 100 bytes hold 8 entries, whatever the entry bound says.
    c = TensorCache(1000, max_bytes=100)
    c.put_many(np.arange(20), _vals(range(20)))
    assert c.capacity == 8 and len(c) <= 8
    assert c.stats()["bytes"] <= 100 and c.stats()["device"] == "cpu"
    assert TensorCache(5, max_bytes=10_000).capacity == 5
