"""``hvams bench shard``: one server's shard of one table, from 1M to 100M rows, against the
machine's memory limits and two other ways to map keys to rows.

One 12-d table with Adagrad, as in the paper. Each size is built once (distinct keys, rows and
slots adopted by an empty shard, as a restore does), then timed on batches of the paper's shape:
``ids_per_batch`` IDs per mini-batch spread over ``servers`` servers, ``repeats`` of them
repeats, so a server sees ``ids_per_batch / servers * (1 - repeats)`` distinct keys per step.
Rates are distinct keys per second, median over ``batches`` batches, one thread.

The bound of each operation is the lower of two limits for the cache lines it must touch per
key, both measured in the same run: this machine's streaming copy bandwidth (bytes) and its
random-access rate (independent 8-byte gathers from an array far larger than the caches).
"""
from __future__ import annotations

import gc
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from ..embedding.shard import EmbeddingShard
from ..runtime.memory import peak_rss_mb
from .machine import drop_page_cache

DIM = 12
TABLE = "bench"
# Rows of 12 float32 lie at a 48-byte stride: of every 4 consecutive rows 2 lie in one
# 64-byte line and 2 span two, so a row costs 1.5 lines on average.
ROW_LINES = 1.5
_ODD = np.uint64(0x9E3779B97F4A7C15)
_MASK62 = np.uint64((1 << 62) - 1)


def keys_for(numbers: np.ndarray) -> np.ndarray:
    """Distinct non-negative keys for distinct numbers (an odd multiplier is a bijection
    modulo 2^62), spread like hashed IDs."""
    with np.errstate(over="ignore"):
        return ((np.asarray(numbers, np.uint64) * _ODD) & _MASK62).astype(np.int64)


def keys_of(lo: int, hi: int) -> np.ndarray:
    return keys_for(np.arange(lo, hi, dtype=np.uint64))


def _median_rate(fn, batches: list, n_keys: int) -> float:
    times = []
    for b in batches:
        t0 = time.perf_counter()
        fn(b)
        times.append(time.perf_counter() - t0)
    return n_keys / statistics.median(times)


def machine_limits(megabytes: int = 1024, gathers: int = 4_000_000, seed: int = 0) -> dict:
    """Warm streaming copy (GB/s, read + write counted once each) and random 8-byte gathers
    (M/s) over ``megabytes`` of memory."""
    n = megabytes * (1 << 20) // 8
    src = np.ones(n, np.int64)
    dst = np.ones(n, np.int64)   # both touched: first-touch page faults are not the copy's
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    copy_gbs = 2 * src.nbytes / min(times) / 1e9
    idx = np.random.default_rng(seed).integers(0, n, gathers)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        src.take(idx)
        times.append(time.perf_counter() - t0)
    return {"copy_gb_s": copy_gbs, "random_m_s": gathers / min(times) / 1e6,
            "megabytes": megabytes}


def bounds(limits: dict) -> dict:
    """Keys/s each operation could reach: random cache lines per key against the random rate
    (each op also streams its outputs and inputs, far below the copy bandwidth here)."""
    random = limits["random_m_s"] * 1e6
    lines = {  # cache lines touched per key at random places
        "lookup": 1,                       # the index slot: key and row number side by side
        "index_insert": 1,                 # the same, written
        "insert": 1,                       # and the new row is appended (streamed)
        "gather": 1 + ROW_LINES,           # lookup, then the row
        "update": 1 + 2 * ROW_LINES,       # lookup, then the row and its Adagrad slot
    }
    return {op: {"lines_per_key": n, "keys_per_s": random / n} for op, n in lines.items()}


def build_shard(n: int, spare: int, seed: int = 0) -> EmbeddingShard:
    """A shard holding keys 0..n-1 (``keys_of``) with ``spare`` rows of room to insert into."""
    rng = np.random.default_rng(seed)
    rows = np.empty((n + spare, DIM), np.float32)
    for lo in range(0, n, 1 << 22):   # in blocks: no float64 temporary of the whole table
        hi = min(n, lo + (1 << 22))
        rows[lo:hi] = rng.random((hi - lo, DIM), np.float32) * 0.1 - 0.05
    slots = np.full((n + spare, DIM), 0.1, np.float32)
    shard = EmbeddingShard(TABLE, DIM, "adagrad", 0.05, seed)
    keys = keys_of(0, n)
    shard.load(keys, rows[:n], {"sum": slots[:n]}, 0)
    # room to insert without the shard doubling its arrays mid-measurement
    row_keys = np.empty(n + spare, np.int64)
    row_keys[:n] = keys
    shard._set_arrays({"rows": rows, "slot_sum": slots, "row_keys": row_keys})
    return shard


def shard_bytes(shard: EmbeddingShard, n: int) -> dict:
    """Bytes per row: rows + slots (raw), the row-key column, the index."""
    raw = (shard.rows.itemsize + shard.slots["sum"].itemsize) * DIM
    index = shard.index.nbytes
    return {"raw": raw, "row_keys": 8, "index": index / n,
            "total": raw + 8 + index / n, "vs_raw": (raw + 8 + index / n) / raw}


def _batches(n: int, distinct: int, count: int, seed: int) -> list[np.ndarray]:
    """``count`` batches of the ``distinct`` keys (of the n stored) a server sees in a step."""
    rng = np.random.default_rng(seed)
    return [keys_for(rng.choice(n, min(distinct, n), replace=False)) for _ in range(count)]


def measure_size(n: int, per_server: int, repeats: float, batches: int, seed: int,
                 with_dict: bool, with_mch: bool, ckpt_dir: Path | None) -> dict:
    """Everything for one size; the shard is freed before returning."""
    distinct = int(per_server * (1 - repeats))
    limits = machine_limits()   # beside the size's own timings: neighbours come and go
    t0 = time.perf_counter()
    shard = build_shard(n, spare=distinct * batches, seed=seed)
    build_s = time.perf_counter() - t0
    per_row = shard_bytes(shard, n)       # as built, before the inserts below
    qs = _batches(n, distinct, batches, seed + 1)
    k = len(qs[0])
    grads = np.random.default_rng(seed + 2).standard_normal((k, DIM)).astype(np.float32)
    rates = {
        "lookup": _median_rate(shard.index.lookup, qs, k),
        "gather": _median_rate(shard.gather, qs, k),
        "update": _median_rate(lambda q, apply=shard.apply: apply(q, grads), qs, k),
    }
    fresh = [keys_of(n + i * k, n + (i + 1) * k) for i in range(batches)]
    rates["index_insert"] = _median_rate(shard.index.insert, fresh, k)   # the map alone
    for q in fresh:
        shard.index.delete(q)         # (its slots become tombstones the next inserts reuse)
    rates["insert"] = _median_rate(shard.row_ids, fresh, k)   # the map and initial rows
    assert len(shard) == n + batches * k
    out = {"rows": n, "distinct_per_batch": k, "build_s": build_s, "rates": rates,
           "limits": limits, "bounds": bounds(limits),
           "bytes_per_row": per_row}
    if with_dict:
        out["dict"] = dict_baseline(n, qs, fresh, k)
    if ckpt_dir is not None:
        written = write_checkpoints(shard, ckpt_dir, k, seed + 3)
    del shard, fresh   # the MCH buffer and a restore of 100M rows need the shard's room
    gc.collect()
    if with_mch:
        out["mch"] = mch_baseline(n, qs, k)
    if ckpt_dir is not None:
        out["checkpoint"] = load_checkpoints(written, n + batches * k)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def dict_baseline(n: int, qs: list, fresh: list, k: int) -> dict:
    """A Python dict from key to row, as a newcomer would write it."""
    t0 = time.perf_counter()
    table = dict(zip(keys_of(0, n).tolist(), range(n)))
    build_s = time.perf_counter() - t0

    def lookup(q):
        get = table.get
        return np.fromiter((get(x, -1) for x in q.tolist()), np.int64, len(q))

    def insert(q):
        base = len(table)
        table.update(zip(q.tolist(), range(base, base + len(q))))

    out = {"build_s": build_s, "lookup": _median_rate(lookup, qs, k),
           "insert": _median_rate(insert, fresh, k)}
    table.clear()
    gc.collect()
    return out


def mch_baseline(n: int, qs: list, k: int) -> dict:
    """TorchRec's managed-collision remap on the CPU (``_mch_remap``: torch.searchsorted over
    its sorted buffer of raw IDs), its buffer holding the n keys. Inserting means merging into
    the sorted buffer, so only lookups are timed. None where torchrec is not installed."""
    import torch
    try:
        from torchrec.modules.mc_modules import _mch_remap
        from torchrec.sparse.jagged_tensor import JaggedTensor
    except ImportError:
        return None

    keys = np.sort(keys_of(0, n))
    sorted_ids = torch.from_numpy(np.append(keys, np.iinfo(np.int64).max))
    mapping = torch.arange(n + 1, dtype=torch.int64)
    feats = [{"f": JaggedTensor(values=torch.from_numpy(q), lengths=torch.ones(len(q), dtype=torch.int32))}
             for q in qs]
    rate = _median_rate(lambda f: _mch_remap(f, sorted_ids, mapping, n), feats, k)
    got = _mch_remap(feats[0], sorted_ids, mapping, n)["f"].values().numpy()
    assert np.array_equal(keys[got], qs[0]), "the MCH remap found other rows"
    return {"lookup": rate}


def disk_rates(directory: Path, megabytes: int = 1024) -> dict:
    """Sequential write (fsync'd) and cold read of a ``megabytes`` file, GB/s."""
    path = directory / "disk-probe.bin"
    block = np.ones(64 << 17, np.int64).tobytes()   # 64 MB
    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        for _ in range(max(1, megabytes // 64)):
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
    write = path.stat().st_size / (time.perf_counter() - t0) / 1e9
    cold = drop_page_cache()
    t0 = time.perf_counter()
    with open(path, "rb") as fh:
        while fh.read(8 << 20):
            pass
    read = path.stat().st_size / (time.perf_counter() - t0) / 1e9
    path.unlink()
    return {"write_gb_s": write, "read_gb_s": read, "cold": cold}


# The deltas written on the full checkpoint: the fraction of rows each one's steps updated.
DELTA_FRACTIONS = (0.01, 0.05)


def _write(shard: EmbeddingShard, directory: Path, step: int, chain: list | None) -> dict:
    """One checkpoint of the shard (full, or a delta on ``chain``), written and fsync'd."""
    from ..train import checkpoint as ckpt

    d = ckpt.ckpt_dir(directory, step)
    t0 = time.perf_counter()
    files = ckpt.save_shards(d, 0, {TABLE: shard}, delta=chain is not None)
    meta = ckpt.chain_meta(directory, chain, d.name) if chain is not None else {}
    ckpt.write_manifest(d, files, {"step": step, "servers": 1, **meta})
    with open(d / "server-0.npz", "rb") as fh:
        os.fsync(fh.fileno())
    shard.mark_saved()
    return {"dir": d, "write_s": time.perf_counter() - t0,
            "bytes": (d / "server-0.npz").stat().st_size}


def write_checkpoints(shard: EmbeddingShard, directory: Path, k: int, seed: int) -> dict:
    """A full checkpoint of the shard, then a delta after updating each of
    ``DELTA_FRACTIONS`` of its rows (in steps of ``k`` distinct keys), on top of each other."""
    n = len(shard)
    shard.start_tracking()   # as checkpoint_mode delta does (the rates above ran without)
    full = _write(shard, directory, 1, None)
    rng = np.random.default_rng(seed)
    grads = rng.standard_normal((k, DIM)).astype(np.float32)
    chain, deltas = [full["dir"].name], []
    for i, fraction in enumerate(DELTA_FRACTIONS):
        # distinct rows without a permutation of all n (800 MB at 100M rows)
        drawn = np.unique(rng.integers(0, n, int(n * fraction * 1.1) + 16))
        touched = keys_for(rng.choice(drawn, min(len(drawn), int(n * fraction)), replace=False))
        for lo in range(0, len(touched), k):
            part = touched[lo:lo + k]
            shard.apply(part, grads[:len(part)])
        written = _write(shard, directory, 2 + i, chain)
        chain.append(written["dir"].name)
        deltas.append({**written, "fraction": fraction, "rows": len(touched)})
    return {"full": full, "deltas": deltas}


def _load(d: Path, rows: int) -> dict:
    """From a cold cache, a start's checksum check and restore of checkpoint ``d`` (its whole
    chain) into an empty shard, in seconds."""
    from ..protocol.channels import id_route
    from ..train import checkpoint as ckpt
    from ..train.restore import restore_tables

    cold = drop_page_cache()
    t0 = time.perf_counter()
    assert ckpt.is_complete(d)
    verify_s = time.perf_counter() - t0
    fresh = {TABLE: EmbeddingShard(TABLE, DIM, "adagrad")}
    t0 = time.perf_counter()
    restore_tables(d, fresh, {TABLE: id_route(TABLE)}, 0, 1)
    restore_s = time.perf_counter() - t0
    assert len(fresh[TABLE]) == rows
    del fresh
    gc.collect()
    return {"cold": cold, "verify_s": verify_s, "restore_s": restore_s}


def load_checkpoints(written: dict, rows: int) -> dict:
    """Each checkpoint's write and load rates: the full one in GB/s of its file, each delta
    in bytes and seconds against the full one's; the checkpoints are removed after."""
    import shutil

    full = written["full"]
    size = full["bytes"]
    loaded = _load(full["dir"], rows)
    chain = _load(written["deltas"][-1]["dir"], rows) if written["deltas"] else None
    out = {"bytes": size, "cold": loaded["cold"], "write_gb_s": size / full["write_s"] / 1e9,
           "verify_gb_s": size / loaded["verify_s"] / 1e9,
           "restore_gb_s": size / loaded["restore_s"] / 1e9,
           "load_gb_s": size / (loaded["verify_s"] + loaded["restore_s"]) / 1e9,
           "load_s": loaded["verify_s"] + loaded["restore_s"], "write_s": full["write_s"],
           "deltas": [{"fraction": d["fraction"], "rows": d["rows"], "bytes": d["bytes"],
                       "write_s": d["write_s"], "bytes_vs_full": d["bytes"] / size,
                       "time_vs_full": d["write_s"] / full["write_s"]}
                      for d in written["deltas"]]}
    if chain is not None:
        out["chain_load_s"] = chain["verify_s"] + chain["restore_s"]
        out["chain_vs_full"] = out["chain_load_s"] / out["load_s"]
    shutil.rmtree(full["dir"].parent, ignore_errors=True)
    return out


def run_shard_bench(sizes: list[int], ids_per_batch: int = 1_400_000, servers: int = 10,
                    repeats: float = 0.3, batches: int = 9, dict_max: int = 30_000_000,
                    mch: bool = True, checkpoints: bool = True, scratch: Path | None = None,
                    seed: int = 0, log=print, save=None) -> dict:
    """Limits, then each size in turn (smallest first); a size that does not fit in memory
    stops the run there, with the reason. ``save(result)`` after each size keeps what was
    measured if a later, larger size is killed."""
    from ..runtime.memory import available_mb

    per_server = ids_per_batch // servers
    if int(per_server * (1 - repeats)) < 1:
        raise ValueError(f"{ids_per_batch} IDs over {servers} servers with {repeats:.0%} repeats "
                         "leave no distinct key per server and step")
    limits = machine_limits()
    log(f"bench shard: copy {limits['copy_gb_s']:.1f} GB/s, random gathers "
        f"{limits['random_m_s']:.1f} M/s")
    scratch = Path(scratch or tempfile.mkdtemp(prefix="hvams-shard-"))
    scratch.mkdir(parents=True, exist_ok=True)
    disk = disk_rates(scratch) if checkpoints else None
    result = {"limits": limits, "bounds": bounds(limits), "disk": disk, "per_server": per_server,
              "ids_per_batch": ids_per_batch, "servers": servers, "repeats": repeats,
              "sizes": [], "stopped": None}
    for n in sorted(sizes):
        # rows + slots + row keys (104 B), the index at its largest (64 B), and what a restore
        # holds beside them (the file's keys, the owner mask, the kept positions: 24 B)
        need = n * 200 / 1e6 + 1000
        room = available_mb()
        if room is not None and need > room:
            result["stopped"] = (f"{n:,} rows need about {need / 1e3:.1f} GB; "
                                 f"{room / 1e3:.1f} GB available")
            log(f"bench shard: stopping before {n:,} rows: {result['stopped']}")
            break
        log(f"bench shard: {n:,} rows ...")
        result["sizes"].append(measure_size(n, per_server, repeats, batches, seed,
                                            with_dict=n <= dict_max, with_mch=mch,
                                            ckpt_dir=scratch if checkpoints else None))
        if save:
            save(result)
    return result


def format_shard(r: dict) -> str:
    b = r["bounds"]
    lines = [f"Limits before the first size: copy {r['limits']['copy_gb_s']:.1f} GB/s, random "
             f"8-byte gathers {r['limits']['random_m_s']:.1f} M/s (one thread; measured again "
             "before each size, and each size's rates are taken against its own). Random lines "
             "per key: " + ", ".join(f"{op} {v['lines_per_key']:g}" for op, v in b.items()) + ".",
             f"Batches: {r['ids_per_batch']:,} IDs per mini-batch over {r['servers']} servers, "
             f"{r['repeats']:.0%} repeats: {r['sizes'][0]['distinct_per_batch'] if r['sizes'] else 0:,} "
             f"distinct keys per server and step.", "",
             "| rows | random M/s | bytes/row (index) | vs raw | lookup M/s (of bound) | "
             "index insert | insert with rows | gather | update | dict lookup / insert "
             "(KeyIndex's gain) | MCH lookup | ckpt write / load GB/s |",
             "|---" * 12 + "|"]
    deltas = []
    for s in r["sizes"]:
        rt, by, b = s["rates"], s["bytes_per_row"], s["bounds"]

        def cell(op, rt=rt, b=b):
            return f"{rt[op] / 1e6:.1f} ({rt[op] / b[op]['keys_per_s']:.0%})"

        d = s.get("dict")
        dict_cell = (f"{d['lookup'] / 1e6:.2f} / {d['insert'] / 1e6:.2f} "
                     f"({rt['lookup'] / d['lookup']:.1f}x / {rt['index_insert'] / d['insert']:.1f}x)"
                     if d else "–")
        m = s.get("mch")
        mch_cell = f"{m['lookup'] / 1e6:.1f}" if m else "–"
        c = s.get("checkpoint")
        ck = f"{c['write_gb_s']:.2f} / {c['load_gb_s']:.2f}" if c else "–"
        if c and c.get("deltas"):
            deltas.append(f"| {s['rows']:,} | {c['bytes'] / 1e9:.2f} GB, {c['write_s']:.1f} s | "
                          + " | ".join(f"{d['bytes'] / 1e6:.0f} MB, {d['write_s']:.2f} s "
                                       f"({d['bytes_vs_full']:.1%} / {d['time_vs_full']:.1%})"
                                       for d in c["deltas"])
                          + f" | {c['load_s']:.1f} s | {c['chain_load_s']:.1f} s "
                            f"({c['chain_vs_full']:.2f}x) |")
        lines.append(f"| {s['rows']:,} | {s['limits']['random_m_s']:.1f} | "
                     f"{by['total']:.0f} ({by['index']:.0f}) | "
                     f"{by['vs_raw']:.2f}x | {cell('lookup')} | {cell('index_insert')} | "
                     f"{cell('insert')} | "
                     f"{cell('gather')} | {cell('update')} | {dict_cell} | {mch_cell} | {ck} |")
    if deltas:
        fr = [d["fraction"] for s in r["sizes"] if s.get("checkpoint")
              for d in s["checkpoint"]["deltas"]][:len(DELTA_FRACTIONS)]
        lines += ["", "Delta checkpoints on the full one (bytes and write time, and as a share "
                  "of the full checkpoint's), and loading from a cold cache:", "",
                  "| rows | full checkpoint | " + " | ".join(f"delta, {f:.0%} of rows updated"
                                                        for f in fr)
                  + " | load full | load base + deltas |",
                  "|---" * (4 + len(fr)) + "|", *deltas]
    if r.get("disk"):
        lines += ["", f"Disk: sequential write {r['disk']['write_gb_s']:.2f} GB/s (fsync'd), "
                  f"read {r['disk']['read_gb_s']:.2f} GB/s ({'cold' if r['disk']['cold'] else 'warm'} cache)."]
    if r.get("stopped"):
        lines += ["", f"Stopped: {r['stopped']}."]
    return "\n".join(lines)
