"""The restore step: a run's parts are built fresh, then this applies what the run starts from.

Every source lives here and nowhere else:

* **resume** (``--resume``): the run's own newest complete checkpoint: ID rows
  with their optimizer slots and table steps (each server reads the rows it
  owns now, so another server count works), the image model and its optimizer
  where the strategy keeps them, the dense model, its optimizer and the
  training position.
* **warm start** (``--warm-start RUN_DIR``, paper Table 5): the worker model and
  the image model take every tensor of matching name and shape from another
  run's newest complete checkpoint; optimizers and all ID tables start fresh
  (new dates bring new IDs, and the paper found full warm-up worse). What was
  loaded is written to ``RUN_DIR/warm_start.json``.

``restore_server`` and ``restore_worker`` are called once per rank, after the
builders; each ends in the same world collective (the warm-start report).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..config import TrainConfig, load_config
from ..strategies import strategy_for
from ..strategies.base import load_matching
from . import checkpoint as ckpt


class SavedRun:
    """Another run's checkpoint, read as that run's own strategy saved it."""

    def __init__(self, directory: Path):
        self.directory = directory

    @cached_property
    def config(self) -> TrainConfig:
        """The config the run trained with: its manifest's, else its run directory's."""
        saved = ckpt.load_manifest(self.directory).get("config")
        if saved is None:
            saved = load_config(self.directory.parent / "config.yaml").to_dict()
        known = set(TrainConfig.__dataclass_fields__)
        return TrainConfig(**{k: v for k, v in saved.items() if k in known})

    @cached_property
    def dense(self) -> dict:
        return ckpt.load_torch(self.directory / "dense.pt")

    @cached_property
    def image_weights(self) -> dict | None:
        """Its image model's tensors, wherever its strategy kept them (None: it had none)."""
        return strategy_for(self.config).image_weights(self.directory)


def warm_start_source(run_dir: str) -> Path:
    d = ckpt.latest_complete(run_dir)
    if d is None:
        raise FileNotFoundError(f"--warm-start {run_dir}: no complete checkpoint there")
    return d


@dataclass(frozen=True)
class Start:
    """What a run starts from: nothing, its own checkpoint, or another run's model."""

    resume: Path | None = None   # --resume: this run's newest complete checkpoint
    warm: Path | None = None     # --warm-start: the source run's newest complete checkpoint


def choose_start(cfg: TrainConfig, run_dir: Path, rank: int) -> Start:
    """The run's start; world rank 0 says which (every rank decides the same)."""
    resume = ckpt.latest_complete(run_dir) if cfg.resume else None
    if rank == 0 and cfg.resume:
        print(f"hvams: --resume: latest complete checkpoint is {resume.name}" if resume else
              f"hvams: --resume: no complete checkpoint in {run_dir}; starting fresh", flush=True)
    warm = warm_start_source(cfg.warm_start) if cfg.warm_start and resume is None else None
    return Start(resume, warm)


def restore_server(job, shards: dict, image) -> None:
    """Apply ``job.start`` to this server's fresh shards and image channel."""
    start, strategy, topo = job.start, job.strategy, job.topo
    report = {}
    if start.resume is not None:
        me, S = topo.role_rank, topo.num_servers
        routes = {spec.name: spec.route for spec in job.specs}
        for table, shard in shards.items():
            route = routes[table]
            keys, rows, slots, step = ckpt.load_owned_rows(start.resume, table,
                                                           lambda k: route(k, S) == me)
            if len(keys):
                shard.load(keys, rows, slots, step)
            shard.step = step
        if image is not None:
            strategy.restore_server(image, start.resume, job.rt.device)
    elif start.warm is not None and image is not None:
        report = strategy.warm_server(image, SavedRun(start.warm))
    _warm_report(job, report if topo.role_rank == 0 else {})


def restore_worker(job, trainer):
    """Apply ``job.start`` to this worker's fresh trainer; the position to train from."""
    from ..worker.position import Position, resplit

    start, topo, cfg = job.start, job.topo, job.cfg
    pos = Position(workers=topo.num_workers, batch_size=cfg.batch_size)
    report = {}
    if start.resume is not None:
        state = ckpt.load_torch(start.resume / "dense.pt", job.rt.device)
        trainer.model.load_state_dict(state["model"])
        job.strategy.restore_worker(trainer.images, state)
        trainer.opt.load_state_dict(state["optimizer"])
        saved = Position(**state["position"])
        days = job.train_days
        pos = resplit(saved, cfg, topo.num_workers, days[min(saved.day, len(days) - 1)])
        trainer.checkpointed_at = pos.step
        if topo.role_rank == 0:
            print(f"hvams: resuming from {start.resume} at step {pos.step}", flush=True)
            if pos.day_ranges is not None and saved.day_ranges != pos.day_ranges:
                left = sum(b - a for a, b in pos.day_ranges)
                print(f"hvams: --resume: {saved.workers} -> {topo.num_workers} workers mid-day: "
                      f"the day's {left} untrained rows are split among the {topo.num_workers}",
                      flush=True)
    elif start.warm is not None:
        source = SavedRun(start.warm)
        report = {"worker_model": load_matching(trainer.model, source.dense["model"]),
                  **job.strategy.warm_worker(trainer.images, source)}
    _warm_report(job, report if topo.role_rank == 0 else {})
    return pos


def _warm_report(job, part: dict) -> None:
    """Gather what each role loaded; rank 0 writes warm_start.json (a world collective)."""
    if job.start.warm is None:
        return
    parts = job.topo.world.gather(part, root=0)
    if job.topo.rank == 0:
        report = {"source": str(job.start.warm), "id_embeddings": "not loaded (start fresh)"}
        for p in parts:
            report.update(p or {})
        (Path(job.run_dir) / "warm_start.json").write_text(json.dumps(report, indent=1))
        n = {k: len(v["loaded"]) for k, v in report.items() if isinstance(v, dict)}
        print(f"hvams: warm start from {report['source']}: loaded {n}; ID embeddings start fresh",
              flush=True)
