"""The restore step: a run's parts are built fresh, then this applies what the run starts from.

Every source lives here and nowhere else:

* **resume** (``--resume``): the run's own newest complete checkpoint: ID rows
  with their optimizer slots and table steps (each server reads the rows it
  owns now, so another server count works), the image model and its optimizer
  where the strategy keeps them, the dense model, its optimizer and the
  training position.
* **continue** (``--init-from RUN_DIR|CKPT_DIR``, daily training): everything
  a resume loads, from another run's checkpoint, but the run trains its own
  days from their start; its step (the learning-rate schedule) goes on from
  the model's. Settings that decide the state's shapes must match (``check_init``).
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..config import ConfigError, TrainConfig, load_config
from ..embedding.key_index import KeyIndex
from ..runtime.precision import wire_dtype
from ..strategies import strategy_for
from ..strategies.base import load_matching
from . import checkpoint as ckpt
from . import shard_files


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
    def schema(self) -> dict | None:
        """The schema it trained on, where the checkpoint records it."""
        return ckpt.load_manifest(self.directory).get("schema")

    @property
    def precision_dtype(self):
        return wire_dtype(self.config.precision)

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


def init_source(path: str | Path, verify: bool = True) -> Path:
    """The checkpoint ``--init-from`` names: a complete checkpoint directory, or a run
    directory's newest complete one. ``verify=False`` (the start-up checks, which read only
    the manifest) takes the newest with a manifest and leaves the checksums to the run."""
    path = Path(path)
    if (path / ckpt.MANIFEST).exists():
        why = ckpt.incomplete_because(path) if verify else None
        if why:
            raise ConfigError(f"config key 'init_from': {path} is not a complete checkpoint "
                              f"({why})")
        return path
    if not verify:
        with_manifest = [d for d in sorted(path.glob("ckpt-*")) if (d / ckpt.MANIFEST).exists()]
        d = with_manifest[-1] if with_manifest else None
    else:
        d = ckpt.latest_complete(path)
    if d is None:
        raise ConfigError(f"config key 'init_from': {path} holds no complete checkpoint")
    return d


# Settings that decide the shapes of what a checkpoint holds: a run continues only with the
# same ones. Others (learning rates, days, server and worker counts, row policies) may change.
INIT_KEYS = ("model", "emb_dim", "mlp", "attention", "aggregator", "concat_behaviors",
             "image_products", "backbone", "head", "freeze_backbone", "strategy",
             "sparse_optimizer")
# what shapes only the image path: a model without images (idonly, din) has none of it
IMAGE_INIT_KEYS = ("aggregator", "concat_behaviors", "image_products", "backbone", "head",
                   "freeze_backbone", "strategy")


def check_groups(saved: dict, opt, where) -> None:
    """A ConfigError naming ``backbone_lr_scale`` where a saved optimizer state has another
    number of parameter groups than ``opt`` (a trainable backbone has its own group exactly
    when the scale is not 1)."""
    theirs, ours = len(saved["param_groups"]), len(opt.param_groups)
    if theirs != ours:
        raise ConfigError(f"config key 'backbone_lr_scale': the optimizer state in {where} has "
                          f"{theirs} parameter group(s), this run's has {ours}; a trainable "
                          "backbone continues with a scale of 1 on both sides or on neither")


def check_init(cfg: TrainConfig, schema) -> Path:
    """The checkpoint ``cfg.init_from`` names, after checking it can be continued: a
    ConfigError naming the setting and both values where not."""
    d = init_source(cfg.init_from, verify=False)
    saved = SavedRun(d)
    theirs, ours = saved.config.to_dict(), cfg.to_dict()
    keys = INIT_KEYS
    if theirs.get("id_admission_min_count", 0) > 1 or theirs.get("id_admission_by_table"):
        keys += ("admission_sketch_width", "admission_sketch_depth")  # sketches it saved
    if not cfg.uses_images:
        keys = tuple(k for k in keys if k not in IMAGE_INIT_KEYS)
    for key in keys:
        if theirs.get(key) != ours[key]:
            raise ConfigError(f"config key 'init_from': {d} was trained with {key} "
                              f"{theirs[key]!r}, this run has {key} {ours[key]!r}; a model "
                              f"continues only with the same {key}")
    split = [c["backbone_lr_scale"] != 1.0 for c in (theirs, ours)]
    # (a validated config freezes true-attributes)
    if cfg.uses_images and not cfg.freeze_backbone and split[0] != split[1]:  # 1 group or 2
        raise ConfigError(f"config key 'init_from': {d} was trained with backbone_lr_scale "
                          f"{theirs['backbone_lr_scale']!r}, this run has "
                          f"{ours['backbone_lr_scale']!r}; a trainable backbone continues with "
                          "a scale of 1 on both sides or on neither (its optimizer's groups)")
    if saved.precision_dtype != wire_dtype(cfg.precision):
        raise ConfigError(f"config key 'init_from': {d} holds {saved.precision_dtype} rows, "
                          f"this run's precision {cfg.precision!r} keeps "
                          f"{wire_dtype(cfg.precision)} rows")
    their_schema = saved.schema
    if their_schema is not None and their_schema != json.loads(schema.to_json()):
        diff = sorted({f["name"] for f in their_schema["fields"]} ^
                      {f.name for f in schema.fields}) or "field kinds, roles or tables"
        raise ConfigError(f"config key 'init_from': {d} was trained on another schema than "
                          f"{Path(cfg.data) / 'schema.json'} (they differ in {diff})")
    return d


@dataclass(frozen=True)
class Start:
    """What a run starts from: nothing, its own checkpoint, or another run's model."""

    resume: Path | None = None   # --resume: this run's newest complete checkpoint
    warm: Path | None = None     # --warm-start: the source run's newest complete checkpoint
    init: Path | None = None     # --init-from: the checkpoint this run continues

    @property
    def state(self) -> Path | None:
        """The checkpoint whose whole state this run loads (resume or continue)."""
        return self.resume or self.init


def choose_start(cfg: TrainConfig, run_dir: Path, world) -> Start:
    """The run's start, chosen by world rank 0 (it verifies the checkpoints once) and sent
    to every rank, so all load the same ones. A run that has checkpoints of its own resumes
    them (a requeued job), else it continues from ``init_from``, else it warm-starts."""
    start = None
    if world.Get_rank() == 0:
        resume = ckpt.latest_complete(
            run_dir, log=lambda why: print(f"hvams: --resume: {why}", flush=True)
        ) if cfg.resume else None
        if cfg.resume:
            print(f"hvams: --resume: latest complete checkpoint is {resume.name}" if resume else
                  f"hvams: --resume: no complete checkpoint in {run_dir}; starting fresh",
                  flush=True)
        init = init_source(cfg.init_from) if cfg.init_from and resume is None else None
        if init is not None:
            print(f"hvams: --init-from: continuing the model of {init}", flush=True)
        warm = warm_start_source(cfg.warm_start) if cfg.warm_start and resume is None else None
        start = Start(resume, warm, init)
    return world.bcast(start, root=0)


def restore_tables(directory: Path, shards: dict, routes: dict, me: int, servers: int) -> bool:
    """Server ``me`` of ``servers``: the rows it owns of each table in checkpoint
    ``directory``, with their slots, bookkeeping and clocks, into its fresh ``shards``.
    Whether the shards now hold exactly what its file ``server-me`` holds, row order
    included (as many servers wrote it, and kept the same per-row arrays), so that the
    next checkpoint may be a delta on it."""
    with ThreadPoolExecutor(1) as beside:  # numpy and file reads let go of the GIL
        for table, shard in shards.items():
            # the clock first: rows without bookkeeping of their own count as used now
            shard.load_clock(*shard_files.load_clock(directory, table, me, servers))
            _restore_rows(directory, shard, routes[table], me, servers, beside)
    if ckpt.load_manifest(directory).get("servers") != servers:
        return False
    mine = shard_files.ServerFile(shard_files.chain_paths(directory, f"server-{me}.npz"))
    return all(_holds_exactly(s, mine, t) for t, s in shards.items())


def _holds_exactly(shard, saved, table: str) -> bool:
    """Whether ``shard`` holds what ``saved`` (a ServerFile) holds of ``table``: the same
    per-row arrays and dtypes, and the same keys in the same row order."""
    names = saved.names(table) if saved.has(table) else []
    if set(names) != set(shard.row_array_names()):
        return False
    state = shard.state(copy=False)
    if any(saved.like(table, name).dtype != state[name].dtype for name in names):
        return False
    return saved.count(table) == len(shard) and np.array_equal(saved.keys(table), state["keys"])


def _restore_rows(directory: Path, shard, route, me: int, servers: int, beside) -> None:
    index = []  # an empty shard's key index, built by ``beside`` while the rows are read

    def start_index(keys):
        if not len(shard):
            index.append(beside.submit(KeyIndex.of, keys))

    owned = shard_files.load_owned_rows(directory, shard.table, lambda k: route(k, servers) == me,
                                 on_keys=start_index)
    if len(owned.keys):
        shard.load(owned.keys, owned.rows, owned.slots, owned.step, owned.meta,
                   index=index[0].result() if index else None)
    shard.step = owned.step


def restore_server(job, shards: dict, image) -> Path | None:
    """Apply ``job.start`` to this server's fresh shards and image channel; the checkpoint of
    this run whose ``server-S.npz`` the shards now equal (a delta may follow it), if any."""
    start, strategy, topo = job.start, job.strategy, job.topo
    report, same = {}, False
    if start.state is not None:
        same = restore_tables(start.state, shards, {spec.name: spec.route for spec in job.specs},
                              topo.role_rank, topo.num_servers)
        if image is not None:
            strategy.restore_server(image, start.state, job.rt.device)
    elif start.warm is not None and image is not None:
        report = strategy.warm_server(image, SavedRun(start.warm))
    _warm_report(job, report if topo.role_rank == 0 else {})
    return start.resume if same and start.resume is not None else None


def restore_worker(job, trainer):
    """Apply ``job.start`` to this worker's fresh trainer; the position to train from."""
    from ..worker.position import Position, resplit

    start, topo, cfg = job.start, job.topo, job.cfg
    pos = Position(workers=topo.num_workers, batch_size=cfg.batch_size)
    report = {}
    if start.state is not None:
        state = ckpt.load_torch(start.state / "dense.pt", job.rt.device)
        trainer.model.load_state_dict(state["model"])
        job.strategy.restore_worker(trainer.images, state)
        check_groups(state["optimizer"], trainer.opt, start.state)
        trainer.opt.load_state_dict(state["optimizer"])
        saved = Position(**state["position"])
        for group, lr in zip(trainer.opt.param_groups, trainer.base_lrs):
            group["base_lr"] = lr  # this run's learning rates (the servers' come from cfg too)
    if start.init is not None:  # the model's step goes on; this run's days start afresh
        pos = Position(step=saved.step, workers=topo.num_workers, batch_size=cfg.batch_size,
                       run_start=saved.step)
    elif start.resume is not None:
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
