"""The run summary: what every rank reports, merged on rank 0."""
from __future__ import annotations

import hashlib

from ..config import TrainConfig
from ..data.schema import IMAGE_CHANNEL
from ..distributed.topology import Topology


def state_digest(state: dict) -> str:
    """sha256 over a state dict's tensors (bit-identity checks across ranks)."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def image_summary(servers: list[dict], workers: list[dict]) -> dict | None:
    """Image counters over all ranks: requested = served + missing + corrupt."""
    holders = [r for r in servers + workers if r.get("images")]
    if not holders:
        return None
    keys = ("requested", "served", "decoded", "missing", "corrupt", "backbone_runs")
    out = {k: sum(r["images"].get(k, 0) for r in holders) for k in keys}
    out["unique_per_server_total"] = sum(s["server"]["unique"].get(IMAGE_CHANNEL, 0)
                                         for s in servers)
    out["requested_by_workers_total"] = sum(s["server"]["requested"].get(IMAGE_CHANNEL, 0)
                                            for s in servers)
    pc = [r["images"]["pixel_cache"] for r in holders if "pixel_cache" in r["images"]]
    hits, misses = sum(p["hits"] for p in pc), sum(p["misses"] for p in pc)
    out["pixel_cache_hit_rate"] = hits / (hits + misses) if hits + misses else 0.0
    fc = [r["images"]["feature_cache"] for r in holders if "feature_cache" in r["images"]]
    fh, fm = sum(f["hits"] for f in fc), sum(f["misses"] for f in fc)
    out["feature_cache_hit_rate"] = fh / (fh + fm) if fh + fm else None
    out["model_sha256"] = sorted({r["image_model_sha256"] for r in holders if r.get("image_model_sha256")})
    out["bad_examples"] = [e for r in holders for e in r["images"].get("bad_examples", [])][:10]
    return out


def id_rows(servers: list[dict]) -> dict[str, dict[str, int]]:
    """Per table over all servers: live rows at the end, and the rows admitted, keys
    filtered and rows evicted (by TTL, by capacity) during the run."""
    out: dict[str, dict[str, int]] = {}
    for s in servers:
        for table, counts in s.get("row_counts", {}).items():
            acc = out.setdefault(table, {})
            for k, v in counts.items():
                acc[k] = acc.get(k, 0) + v
    return out


def stage_seconds(results: list[dict]) -> dict[str, dict[str, float]]:
    """Mean seconds per stage over the ranks of each role."""
    out = {}
    for role in ("server", "worker"):
        ranks = [r.get("stage_s", {}) for r in results if r["role"] == role]
        names = sorted({k for r in ranks for k in r})
        out[role] = {k: sum(r.get(k, 0.0) for r in ranks) / max(len(ranks), 1) for k in names}
    return out


def summarize(results: list[dict], cfg: TrainConfig, topo: Topology, elapsed: float) -> dict:
    workers = [r for r in results if r["role"] == "worker"]
    servers = [r for r in results if r["role"] == "server"]
    by_cat: dict[str, int] = {}
    for r in results:
        for k, v in r["bytes"].items():
            by_cat[k] = by_cat.get(k, 0) + v
    steps = servers[0]["server"]["steps"]
    samples = sum(w["worker"]["samples"] for w in workers)
    w0 = next(w for w in workers if w["role_rank"] == 0)
    rejected: dict[str, int] = {}
    for w in workers:
        for k, v in w["worker"]["rows_rejected"].items():
            rejected[k] = rejected.get(k, 0) + v
    read = sum(w["worker"]["rows_read"] for w in workers)
    resumed = sum(w["worker"]["rows_resumed"] for w in workers)
    n_rejected = sum(rejected.values())
    return {"model": cfg.model, "strategy": cfg.strategy, "servers": topo.num_servers,
            "workers": topo.num_workers, "steps": steps, "samples": samples,
            "rows": {"read": read, "trained": samples, "rejected": n_rejected,
                     # read again on a resume to reach the position an earlier run stopped at
                     "resumed": resumed,
                     # read ahead by the readers when the run stopped (max_steps, a signal)
                     "not_trained": read - samples - n_rejected - resumed,
                     "rejected_by_reason": rejected,
                     "reject_examples": [m for w in workers
                                         for m in w["worker"]["reject_examples"]][:10]},
            "elapsed_s": elapsed, "samples_per_s": samples / elapsed if elapsed else 0.0,
            "bytes": by_cat, "bytes_per_step": {k: v / max(steps, 1) for k, v in by_cat.items()},
            "losses": w0["losses"], "final_step": w0["final_step"], "step_s": w0["step_s"],
            "stage_s": stage_seconds(results),
            "peak_rss_mb": {role: [r.get("peak_rss_mb") for r in sorted(
                (r for r in results if r["role"] == role), key=lambda r: r["role_rank"])]
                for role in ("server", "worker")},
            "server_rows": [s["rows"] for s in sorted(servers, key=lambda s: s["role_rank"])],
            "id_rows": id_rows(servers), "days": w0.get("days", []),
            "images": image_summary(servers, workers),
            "server_stats": [s["server"] for s in sorted(servers, key=lambda s: s["role_rank"])]}
