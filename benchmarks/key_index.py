"""Key -> row lookup on the server hot path: hvams' numpy KeyIndex against a dict.

    .venv/bin/python benchmarks/key_index.py [N]
"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hvams.embedding.key_index import KeyIndex  # noqa: E402


def best(fn, repeat=5):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(n: int = 300_000) -> None:
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(0, 2 ** 62, n))
    rng.shuffle(keys)
    index = KeyIndex()
    t0 = time.perf_counter()
    for chunk in np.array_split(keys, 30):
        index.insert(chunk)
    t_insert = time.perf_counter() - t0
    table = {int(k): i for i, k in enumerate(keys)}
    t_index = best(lambda: index.lookup(keys))
    t_dict = best(lambda: np.array([table.get(int(k), -1) for k in keys]))
    assert (index.lookup(keys) == np.arange(len(keys))).all()
    print(f"{len(keys)} keys: KeyIndex insert {t_insert * 1e3:.0f} ms (30 batches), "
          f"lookup {t_index * 1e3:.1f} ms; dict lookup {t_dict * 1e3:.1f} ms "
          f"({t_dict / t_index:.1f}x slower)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300_000)
