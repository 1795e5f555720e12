"""``hvams images verify`` and ``stats``: decode every image, check checksums."""
from __future__ import annotations

from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from .decode import DEFAULT_MAX_PIXELS, decode_rgb, sniff_format
from .errors import CorruptImageError
from .lmdb_store import ImageStore, partition_summary, read_manifest
from .partition import partition_file


def _verify_partition(args) -> dict:
    root, p, max_pixels = args
    store = ImageStore(root)
    corrupt, count = [], 0
    for key, data in store.iter_partition(p):
        count += 1
        try:
            decode_rgb(data, key, max_pixels)
        except CorruptImageError as exc:
            corrupt.append({"id": key, "image_key": store.name(key), "partition": p,
                            "reason": exc.reason})
    store.close()
    summary = partition_summary(Path(root) / partition_file(p))
    return {"partition": p, "images": count, "corrupt": corrupt, "checksum": summary["checksum"]}


def verify_store(root: str | Path, workers: int = 2, max_pixels: int = DEFAULT_MAX_PIXELS,
                 progress: bool = True) -> dict:
    """Decode every stored image in parallel; list corrupt ones and checksum drift."""
    manifest = read_manifest(root)
    jobs = [(str(root), p, max_pixels) for p in range(manifest["partitions"])]
    corrupt, mismatched, total = [], [], 0
    with ProcessPoolExecutor(max(1, workers)) as pool:
        for res in tqdm(pool.map(_verify_partition, jobs), total=len(jobs), desc="verify",
                        unit="part", disable=not progress):
            total += res["images"]
            corrupt += res["corrupt"]
            want = manifest["partition_files"][partition_file(res["partition"])]["checksum"]
            if res["checksum"] != want:
                mismatched.append(partition_file(res["partition"]))
    return {"images": total, "corrupt": sorted(corrupt, key=lambda c: c["id"]),
            "checksum_mismatch": mismatched}


def store_stats(root: str | Path) -> dict:
    """Counts, sizes and formats of a store, from one pass over its partitions."""
    store = ImageStore(root)
    sizes, formats = [], Counter()
    for p in store.partitions:
        for _, data in store.iter_partition(p):
            sizes.append(len(data))
            formats[sniff_format(data)] += 1
    store.close()
    import numpy as np

    arr = np.array(sizes or [0])
    per_part = [v["images"] for v in read_manifest(root)["partition_files"].values()]
    return {"images": len(sizes), "partitions": store.P, "bytes": int(arr.sum()),
            "mean_bytes": float(arr.mean()), "p50_bytes": float(np.percentile(arr, 50)),
            "max_bytes": int(arr.max()), "formats": dict(formats),
            "images_per_partition": {"min": min(per_part), "max": max(per_part)}}
