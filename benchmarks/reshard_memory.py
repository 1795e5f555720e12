"""Peak memory of a 3 -> 2 re-shard resume: one server loading its rows of every table.

Builds a checkpoint as 3 servers would write it (rows + Adagrad slots of every table of the
default schema, sized like the `bench` world's vocabulary times ``--scale``), then, each in a
fresh process, loads server 0 of 2's share into EmbeddingShards:

* ``whole``: what resume did before: every shard file's arrays read whole, the kept rows
  concatenated, then copied into the shard (the old ``load_owned_rows`` + ``load``);
* ``streamed``: what it does now: keys first, arrays sized once, rows copied in blocks
  straight from the files, and adopted by the empty shard.

Reports the arrays held after loading and their peak while loading (tracemalloc, which numpy
reports its buffers to; torch's import, larger than either, is left out).

    .venv/bin/python benchmarks/reshard_memory.py --scale 1 --scale 20
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BENCH_VOCAB = {"user": 60_000, "item": 60_000, "category": 60, "brand": 800, "shop": 1_500,
               "age": 10, "gender": 2, "city_tier": 5, "position": 10, "hour": 24}


def build(directory: Path, scale: float, servers: int = 3) -> int:
    from hvams.embedding.shard import EmbeddingShard
    from hvams.protocol.channels import id_route
    from hvams.train import checkpoint as ckpt

    total = 0
    shards = [{} for _ in range(servers)]
    for table, vocab in BENCH_VOCAB.items():
        keys = np.arange(int(vocab * scale), dtype=np.int64)
        total += len(keys)
        where = id_route(table)(keys, servers)
        for s in range(servers):
            sh = EmbeddingShard(table, 12, "adagrad")
            sh.load(keys[where == s], np.random.default_rng(s).random((int((where == s).sum()), 12),
                                                                        np.float32),
                    {"sum": np.ones((int((where == s).sum()), 12), np.float32)}, 7)
            shards[s][table] = sh
    files = {}
    for s in range(servers):
        files.update(ckpt.save_shards(directory, s, shards[s]))
    ckpt.write_manifest(directory, files, {"step": 7})
    return total


def _whole(directory, table, keep):
    """The loader before this change (kept here as the baseline)."""
    from hvams.train.checkpoint import load_manifest

    keys, rows, slots, step = [], [], {}, 0
    for path in sorted(directory / f for f in load_manifest(directory)["files"] if f.startswith("server-")):
        with np.load(path) as z:
            if f"{table}/keys" not in z:
                continue
            k = z[f"{table}/keys"]
            mask = keep(k)
            keys.append(k[mask])
            rows.append(z[f"{table}/rows"][mask])
            for name in z.files:
                if name.startswith(f"{table}/slot_"):
                    slots.setdefault(name.split("/slot_", 1)[1], []).append(z[name][mask])
            step = max(step, int(z[f"{table}/step"][0]))
    return (np.concatenate(keys), np.concatenate(rows),
            {k: np.concatenate(v) for k, v in slots.items()}, step)


def measure(directory: Path, mode: str) -> dict:
    from hvams.embedding.shard import EmbeddingShard
    from hvams.protocol.channels import id_route
    from hvams.train.shard_files import load_owned_rows

    import tracemalloc

    import importlib

    importlib.import_module("torch")  # imported before measuring: its import is not the load's

    tracemalloc.start()  # numpy reports its buffers to tracemalloc: the peak of live arrays
    loader = load_owned_rows if mode == "streamed" else _whole
    shards, rows = {}, 0
    for table in BENCH_VOCAB:
        route = id_route(table)
        keys, r, slots, step = loader(directory, table, lambda k: route(k, 2) == 0)[:4]
        sh = EmbeddingShard(table, 12, "adagrad")
        if mode == "whole":  # the old EmbeddingShard.load: insert and copy
            ids = sh.index.insert(keys)
            sh._ensure_capacity(len(sh.index))
            sh.rows[ids] = r
            sh.slots["sum"][ids] = slots["sum"]
        else:
            sh.load(keys, r, slots, step)
        shards[table] = sh
        rows += len(keys)
        del keys, r, slots
    held, peak = tracemalloc.get_traced_memory()
    return {"mode": mode, "rows_kept": rows, "held_MB": held / 2**20, "peak_MB": peak / 2**20}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, action="append", help="x the bench vocabulary")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(measure(Path(a.child[0]), a.child[1])))
        return
    for scale in a.scale or [1.0]:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp) / "ckpt-00000007"
            total = build(d, scale)
            size = sum(p.stat().st_size for p in d.glob("server-*.npz")) / 2**20
            print(f"scale {scale:g}: {total} rows in 3 shard files ({size:.0f} MB)")
            for mode in ("whole", "streamed"):
                out = subprocess.run([sys.executable, __file__, "--child", str(d), mode],
                                     capture_output=True, text=True, check=True).stdout
                r = json.loads(out)
                print(f"  {mode:<9} kept {r['rows_kept']} rows, held {r['held_MB']:.0f} MB "
                      f"after loading; peak {r['peak_MB']:.0f} MB while loading")


if __name__ == "__main__":
    main()
