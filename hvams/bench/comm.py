"""``hvams bench comm``: bytes per batch of the three strategies (paper Table 2).

The three strategies train the same model for K steps on the same batches
(same data, seed and rank layout), and every byte a rank sends is counted
from the packed buffers by category. The per-image table gives the payload
of one image in each form it could travel: raw JPEG, decoded tensor, 4096-d
fc6 features (the paper's store-in-server) and the 12-d embedding (AMS).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import TrainConfig
from ..data.reader import day_files
from ..data.schema import Schema
from ..imaging.payload import payload_spec
from ..models.image import feature_dim_of
from ..store.verify import store_stats
from ..strategies import Strategy
from ..train.plan import resolve_days
from ..train.report import human
from .jobs import save_json, timed_config, train_job
from .machine import label

STRATEGIES = (Strategy.STORE_IN_WORKER, Strategy.STORE_IN_SERVER, Strategy.AMS)  # table order
IMAGE_CATEGORIES = ("image_keys", "image_payload", "image_grads", "allreduce_servers")
PAPER_PER_IMAGE = 4096 * 4       # the paper's fc6 vector, fp32


def mean_behaviors(cfg: TrainConfig, rows: int) -> float:
    """Mean behavior images per sample over the first ``rows`` rows of the first train day."""
    schema = Schema.load(cfg.data)
    lengths, seen = [], 0
    for path in day_files(resolve_days(cfg)[0][0]):
        col = pq.ParquetFile(path).read(columns=[schema.behavior_image]).column(0)
        lengths.append(pc.list_value_length(col).to_numpy(zero_copy_only=False))
        seen += len(col)
        if seen >= rows:
            break
    arr = np.concatenate(lengths)[:rows]
    return float(arr.mean()) if len(arr) else 0.0


def per_image_bytes(cfg: TrainConfig) -> list[dict]:
    """Bytes of one image in each form, with the compression against 4096-d features."""
    stats = store_stats(cfg.images_dir)
    features = feature_dim_of(cfg)
    width_px, _ = payload_spec(features, False, cfg.image_size)
    rows = [("raw JPEG/PNG (mean in the store)", stats["mean_bytes"]),
            (f"decoded tensor, {cfg.image_size}x{cfg.image_size} uint8 (+1 validity byte)", width_px),
            (f"decoded tensor, {cfg.image_size}x{cfg.image_size} fp32", 3 * cfg.image_size ** 2 * 4),
            ("vgg16 fc6 features, 4096-d fp32", PAPER_PER_IMAGE)]
    if cfg.backbone != "vgg16":
        rows.append((f"{cfg.backbone} features, {features}-d fp32", features * 4))
    rows += [(f"AMS embedding, {cfg.emb_dim}-d fp32 (one way)", cfg.emb_dim * 4),
             ("AMS round trip: 8 B key + embedding + gradient", 8 + 2 * cfg.emb_dim * 4)]
    return [{"form": name, "bytes": float(b), "x_smaller_than_4096d": PAPER_PER_IMAGE / b}
            for name, b in rows]


def run_comm(base: TrainConfig, ranks: int, steps: int, out: Path, timeout: float = 1800) -> dict:
    """Train ``base`` (a dicm config) for ``steps`` steps under each strategy; the result table."""
    runs = {}
    for strategy in STRATEGIES:
        cfg = timed_config(replace(base, strategy=strategy), steps, out / strategy)
        print(f"bench comm: {strategy} ({steps} steps, {ranks} ranks) ...", flush=True)
        runs[strategy] = train_job(cfg, ranks, timeout)["summary"]
    s0 = runs[Strategy.AMS]
    workers, servers = s0["workers"], s0["servers"]
    table = {}
    for strategy, summ in runs.items():
        per_step = {k: v for k, v in summ["bytes_per_step"].items() if k != "eval"}
        img = summ.get("images") or {}
        table[strategy] = {
            "by_category": per_step, "total": sum(per_step.values()),
            "image": sum(per_step.get(k, 0.0) for k in IMAGE_CATEGORIES),
            "samples_per_step": summ["samples"] / max(summ["steps"], 1),
            "worker_unique_images_per_step": img.get("requested_by_workers_total", 0) / max(summ["steps"], 1),
            "server_unique_images_per_step": img.get("unique_per_server_total", 0) / max(summ["steps"], 1),
            "losses": summ["losses"]}
    ams, sis = table[Strategy.AMS], table[Strategy.STORE_IN_SERVER]
    refs = ams["worker_unique_images_per_step"] or 1
    result = {
        "machine": label(servers, workers), "steps": steps, "servers": servers, "workers": workers,
        "batch_size_per_worker": base.batch_size, "backbone": base.backbone,
        "frozen": base.freeze_backbone, "image_size": base.image_size,
        "mean_behaviors_per_sample": mean_behaviors(base, base.batch_size * workers * steps),
        "strategies": table,
        "ratio_total_sis_over_ams": sis["total"] / ams["total"],
        "ratio_image_sis_over_ams": sis["image"] / ams["image"] if ams["image"] else None,
        "measured_image_bytes_per_worker_unique_image": {
            s: table[s]["image"] / refs for s in STRATEGIES},
        "per_image": per_image_bytes(base),
        "same_batches": len({round(t["samples_per_step"], 6) for t in table.values()}) == 1,
        "max_loss_rel_diff": _max_rel_diff([t["losses"] for t in table.values()]),
    }
    save_json(out / "comm.json", result)
    return result


def _max_rel_diff(series: list[list[float]]) -> float:
    a = np.array(series, np.float64)
    return float((np.abs(a - a[0]).max(axis=0) / np.maximum(np.abs(a[0]), 1e-12)).max())


def format_comm(r: dict) -> str:
    """Markdown tables: bytes per batch by category and strategy, then bytes per image."""
    cats = sorted({c for t in r["strategies"].values() for c in t["by_category"]})
    head = "| bytes per batch | " + " | ".join(STRATEGIES) + " |"
    lines = [head, "|---" * (len(STRATEGIES) + 1) + "|"]
    for c in cats:
        lines.append(f"| {c} | " + " | ".join(human(r["strategies"][s]["by_category"].get(c, 0))
                                              for s in STRATEGIES) + " |")
    for key, name in (("image", "**image total**"), ("total", "**total**")):
        lines.append(f"| {name} | " + " | ".join(f"**{human(r['strategies'][s][key])}**"
                                                 for s in STRATEGIES) + " |")
    a = r["strategies"][Strategy.AMS]
    lines += ["", f"store-in-server / AMS, total bytes: **{r['ratio_total_sis_over_ams']:.1f}x**"
              + (f"; image bytes: **{r['ratio_image_sis_over_ams']:.1f}x**"
                 if r["ratio_image_sis_over_ams"] else ""),
              f"per step: {a['samples_per_step']:.0f} samples ({r['batch_size_per_worker']} per worker), "
              f"{r['mean_behaviors_per_sample']:.1f} behavior images per sample, "
              f"{a['worker_unique_images_per_step']:.0f} worker-unique images "
              f"({a['server_unique_images_per_step']:.0f} after dedup across workers on the servers); "
              f"same batches under all strategies: {r['same_batches']} "
              f"(losses agree to {r['max_loss_rel_diff']:.1e} relative)",
              "", "| one image as | bytes | x smaller than 4096-d fp32 |", "|---|---|---|"]
    for row in r["per_image"]:
        lines.append(f"| {row['form']} | {row['bytes']:,.0f} | {row['x_smaller_than_4096d']:.1f} |")
    return "\n".join(lines)
