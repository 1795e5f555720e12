"""Partial warm start (paper Table 5): everything but the ID embeddings.

The worker model and the shared image model take every tensor of matching
name and shape from another run's newest complete checkpoint; optimizers and
all ID embedding tables start fresh (new dates bring new IDs, and the paper
found full warm-up worse). What was loaded is written to
``RUN_DIR/warm_start.json``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from . import checkpoint as ckpt


def _load_matching(module: torch.nn.Module, state: dict) -> tuple[list[str], list[str]]:
    own = module.state_dict()
    take = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    module.load_state_dict(take, strict=False)
    return sorted(take), sorted(k for k in own if k not in take)


def warm_start_source(run_dir: str) -> Path:
    d = ckpt.latest_complete(run_dir)
    if d is None:
        raise FileNotFoundError(f"--warm-start {run_dir}: no complete checkpoint there")
    return d


def warm_worker(source: Path, model, local_images) -> dict:
    dense = ckpt.load_torch(source / "dense.pt")
    loaded, fresh = _load_matching(model, dense["model"])
    out = {"worker_model": {"loaded": loaded, "not_loaded": fresh}}
    if local_images is not None:
        state = dense.get("image_model") or _ams_image(source)
        if state is not None:
            il, ifresh = _load_matching(local_images.model, state)
            out["image_model"] = {"loaded": il, "not_loaded": ifresh}
    return out


def _ams_image(source: Path):
    path = source / "image.pt"
    return ckpt.load_torch(path)["model"] if path.exists() else None


def warm_server(source: Path, image_channel) -> dict:
    state = _ams_image(source)
    if state is None:
        dense = ckpt.load_torch(source / "dense.pt")
        state = dense.get("image_model")
    if state is None:
        return {}
    loaded, fresh = _load_matching(image_channel.embedder.model, state)
    return {"image_model": {"loaded": loaded, "not_loaded": fresh}}


def write_report(run_dir: Path, source: Path, parts: list[dict]) -> dict:
    report = {"source": str(source), "id_embeddings": "not loaded (start fresh)"}
    for p in parts:
        report.update(p or {})
    (Path(run_dir) / "warm_start.json").write_text(json.dumps(report, indent=1))
    return report


def gather_report(topo, cfg, run_dir, resume_dir, part: dict) -> None:
    """Gather what each role loaded; rank 0 writes warm_start.json (a world collective)."""
    if not cfg.warm_start or resume_dir is not None:
        return
    parts = topo.world.gather(part, root=0)
    if topo.rank == 0:
        report = write_report(run_dir, warm_start_source(cfg.warm_start), parts)
        n = {k: len(v["loaded"]) for k, v in report.items() if isinstance(v, dict)}
        print(f"hvams: warm start from {report['source']}: loaded {n}; ID embeddings start fresh",
              flush=True)
