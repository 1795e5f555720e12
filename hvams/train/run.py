"""Entry point of a training job: every rank runs ``run_training(cfg)``.

Servers run the passive server loop; workers run the training loop and send
the commands (train/eval/checkpoint/stop). All ranks meet at the world
barrier in ``finish`` before exiting.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..data.reader import worker_chunks, day_files
from ..data.schema import Schema
from ..distributed.failfast import Watchdog, install_abort_hook, maybe_inject_fault
from ..distributed.reports import write_report
from ..distributed.topology import Topology, build_topology, finish
from ..embedding.shard import EmbeddingShard
from ..models import build_model
from ..protocol.accounting import ByteCounter
from ..protocol.messages import Phase
from ..imaging.embed import PixelEmbedder
from ..imaging.local import LocalImages
from ..imaging.source import ImageSource
from ..models.image import build_image_model
from ..roles.channels import EmbeddingChannel, id_channel, image_channel
from ..roles.image_channels import AmsImageChannel, PixelChannel
from ..store.lmdb_store import ImageStore, read_manifest
from ..roles.server import ServerLoop
from ..roles.worker_client import StepClient
from . import checkpoint as ckpt
from . import warm_start
from .plan import lr_scale, resolve_days
from .report import format_bytes_table, format_metrics_table, Progress
from .tensorboard import TensorBoardLog
from .worker import Position, WorkerTrainer, epoch_batches


def channel_specs(cfg: TrainConfig, schema: Schema) -> list:
    """The channels of this run, in the fixed order servers and workers share."""
    specs = [id_channel(t, cfg.emb_dim) for t in schema.tables]
    if cfg.uses_images and cfg.strategy != "store-in-worker":
        P = read_manifest(cfg.images_dir)["partitions"]
        if cfg.strategy == "ams":
            specs.append(image_channel(P, cfg.emb_dim))
        elif cfg.freeze_backbone:      # store-in-server: cached backbone features + flag
            specs.append(image_channel(P, _feature_dim(cfg) + 1, np.float32, trainable=False))
        else:                          # store-in-server: decoded pixels + validity byte
            specs.append(image_channel(P, 3 * cfg.image_size ** 2 + 1, np.uint8, trainable=False))
    return specs


def _feature_dim(cfg: TrainConfig) -> int:
    return build_image_model(cfg).feature_dim


def _image_source(cfg: TrainConfig, server: int | None, num_servers: int) -> ImageSource:
    store = ImageStore(cfg.images_dir, server=server, num_servers=num_servers)
    return ImageSource(store, cfg.image_size, cfg.pixel_cache, cfg.max_pixels)


def _server_channels(cfg, schema, topo, specs, resume_dir, counter):
    shards, channels = {}, []
    for spec in specs:
        if spec.name == "image":
            source = _image_source(cfg, topo.role_rank, topo.num_servers)
            if cfg.strategy == "ams":
                embedder = PixelEmbedder(build_image_model(cfg), cfg.feature_cache)
                ch = AmsImageChannel(spec, source, embedder, topo, counter, cfg.image_lr)
                if resume_dir is not None and (resume_dir / "image.pt").exists():
                    ch.load(torch.load(resume_dir / "image.pt", weights_only=False))
            else:
                embedder = (PixelEmbedder(build_image_model(cfg), cfg.feature_cache)
                            if cfg.freeze_backbone else None)
                ch = PixelChannel(spec, source, embedder)
            channels.append(ch)
            continue
        shard = EmbeddingShard(spec.name, spec.dim, cfg.sparse_optimizer, cfg.sparse_lr,
                               cfg.seed, cfg.init_scale)
        if resume_dir is not None:
            me, S = topo.role_rank, topo.num_servers
            keys, rows, slots, step = ckpt.load_owned_rows(
                resume_dir, spec.name, lambda k: spec.route(k, S) == me)
            if len(keys):
                shard.load(keys, rows, slots, step)
            shard.step = step
        shards[spec.name] = shard
        channels.append(EmbeddingChannel(spec, shard))
    return shards, channels


def _checkpoint_collect(topo: Topology, directory: Path, files: dict, meta: dict | None) -> None:
    gathered = topo.world.gather((files, meta), root=0)
    if topo.rank == 0:
        all_files, all_meta = {}, {}
        for f, m in gathered:
            all_files.update(f)
            all_meta.update(m or {})
        ckpt.write_manifest(directory, all_files, all_meta)


def _total_rows(days) -> int:
    return sum(sum(c.hi - c.lo for c in worker_chunks(day_files(d), 0, 1)) for d in days)


def _warm_report(topo, cfg, run_dir, resume_dir, part: dict) -> None:
    """Gather what each role loaded; rank 0 writes warm_start.json (a world collective)."""
    if not cfg.warm_start or resume_dir is not None:
        return
    parts = topo.world.gather(part, root=0)
    if topo.rank == 0:
        report = warm_start.write_report(run_dir, warm_start.warm_start_source(cfg.warm_start), parts)
        n = {k: len(v["loaded"]) for k, v in report.items() if isinstance(v, dict)}
        print(f"hvams: warm start from {report['source']}: loaded {n}; ID embeddings start fresh",
              flush=True)


def run_server(cfg, schema, topo, specs, counter, resume_dir, run_dir, train_days, tb):
    shards, channels = _server_channels(cfg, schema, topo, specs, resume_dir, counter)
    image = next((ch for ch in channels if isinstance(ch, (AmsImageChannel, PixelChannel))), None)
    warm = {}
    if cfg.warm_start and resume_dir is None and isinstance(image, AmsImageChannel):
        warm = warm_start.warm_server(warm_start.warm_start_source(cfg.warm_start), image)
    _warm_report(topo, cfg, run_dir, resume_dir, warm if topo.role_rank == 0 else {})
    progress = None
    if topo.role_rank == 0:
        total = _total_rows(train_days) * cfg.epochs
        progress = Progress(total, cfg.progress, cfg.log_every)

    def on_checkpoint(step):
        d = ckpt.ckpt_dir(run_dir, step)
        files = ckpt.save_shards(d, topo.role_rank, shards,
                                 fault=lambda: maybe_inject_fault(topo.rank, step, "ckpt"))
        if topo.role_rank == 0 and isinstance(image, AmsImageChannel):
            files.update(ckpt.save_torch(d, "image.pt", image.state()))
        _checkpoint_collect(topo, d, files, None)

    def on_step(step, n):
        if progress:
            progress.update(step, n)
        tb.after_step(step)

    loop = ServerLoop(topo, channels, counter, lambda s: lr_scale(s, cfg), on_checkpoint, on_step)
    loop.run()
    if progress:
        progress.close()
    out = {"server": loop.stats, "rows": {t: len(s) for t, s in shards.items()}}
    if image is not None:
        out["images"] = image.stats()
        if isinstance(image, AmsImageChannel):
            out["image_model_sha256"] = state_digest(image.embedder.model.state_dict())
    return out


def state_digest(state: dict) -> str:
    """sha256 over a state dict's tensors (bit-identity checks across ranks)."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def _local_images(cfg: TrainConfig) -> LocalImages | None:
    if not cfg.uses_images or cfg.strategy == "ams":
        return None
    embedder = PixelEmbedder(build_image_model(cfg), cfg.feature_cache)
    source = _image_source(cfg, None, 1) if cfg.strategy == "store-in-worker" else None
    return LocalImages(embedder, cfg.image_size, source)


def run_worker(cfg, schema, topo, specs, counter, resume_dir, run_dir, train_days, test_day, tb):
    model = build_model(cfg, schema)
    client = StepClient(topo, specs, counter)
    local = _local_images(cfg)
    warm = {}
    if cfg.warm_start and resume_dir is None:
        warm = warm_start.warm_worker(warm_start.warm_start_source(cfg.warm_start), model, local)
    _warm_report(topo, cfg, run_dir, resume_dir, warm if topo.role_rank == 0 else {})
    trainer = WorkerTrainer(cfg, schema, model, client, topo, local)
    pos = Position()
    if resume_dir is not None:
        state = torch.load(resume_dir / "dense.pt", weights_only=False)
        model.load_state_dict(state["model"])
        if local is not None:
            local.model.load_state_dict(state["image_model"])
        trainer.opt.load_state_dict(state["optimizer"])
        pos = Position(**state["position"])
        if topo.role_rank == 0:
            print(f"hvams: resuming from {resume_dir} at step {pos.step}", flush=True)
    metrics_path = run_dir / "metrics.jsonl"

    def checkpoint():
        client.command(Phase.CHECKPOINT, pos.step)
        d = ckpt.ckpt_dir(run_dir, pos.step)
        files, meta = {}, None
        if topo.role_rank == 0:
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / ".dense.pt.tmp"
            torch.save({"model": model.state_dict(), "optimizer": trainer.opt.state_dict(),
                        "position": vars(pos).copy(),
                        "image_model": local.model.state_dict() if local else None}, tmp)
            tmp.replace(d / "dense.pt")
            files = {"dense.pt": ckpt.sha256(d / "dense.pt")}
            meta = {"step": pos.step, "position": vars(pos).copy(), "servers": topo.num_servers,
                    "workers": topo.num_workers, "model": cfg.model, "config": cfg.to_dict()}
        _checkpoint_collect(topo, d, files, meta)
        return d

    def run_eval(epoch):
        res = trainer.evaluate_day(test_day, pos.step)
        if res is not None:
            record = {"epoch": epoch, "step": pos.step, "split": "test", "day": test_day.name, **res}
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            print(format_metrics_table([record], cfg.model), flush=True)
            tb.metrics(record, pos.step)
        return res

    last_ckpt = (pos.step, resume_dir) if resume_dir is not None else None
    stopped = False
    start_epoch, start_day, start_skip = pos.epoch, pos.day, pos.steps_in_day
    readers = []
    for epoch in range(start_epoch, cfg.epochs):
        first_day = start_day if epoch == start_epoch else 0
        for d in range(first_day, len(train_days)):
            skip = start_skip if (epoch == start_epoch and d == start_day) else 0
            reader = trainer_reader(cfg, schema, topo, train_days[d])
            readers.append(reader)
            it = epoch_batches(reader, skip)
            pos.epoch, pos.day, pos.steps_in_day = epoch, d, skip
            while True:
                if cfg.max_steps is not None and pos.step >= cfg.max_steps:
                    stopped = True
                    break
                if not trainer.train_step(next(it, None), pos):
                    break
                tb.add_step(trainer.losses[-1], trainer.last_n)
                tb.after_step(pos.step - 1)
                if cfg.checkpoint_every and pos.step % cfg.checkpoint_every == 0:
                    last_ckpt = (pos.step, checkpoint())
            if stopped:
                break
        if stopped:
            break
        pos.epoch, pos.day, pos.steps_in_day = epoch + 1, 0, 0
        run_eval(epoch)
    if stopped:
        run_eval(pos.epoch)
    if last_ckpt is None or last_ckpt[0] != pos.step:
        checkpoint()
    client.command(Phase.STOP, pos.step)
    losses = np.array(trainer.losses, np.float64)
    total = np.zeros_like(losses)
    topo.role_comm.Allreduce(losses, total)
    rejected = {}
    for r in readers:
        for k, v in r.stats.items():
            if k.startswith("rejected:"):
                rejected[k[9:]] = rejected.get(k[9:], 0) + v
    out = {"worker": {"samples": trainer.samples, "steps": len(losses),
                      "rows_read": sum(r.stats["rows_read"] for r in readers),
                      "rows_yielded": sum(r.stats["rows_yielded"] for r in readers),
                      "rows_rejected": rejected,
                      "reject_examples": [m for r in readers for m in r.rejects][:10]},
           "losses": total.tolist(), "final_step": pos.step}
    if local is not None:
        out["images"] = local.stats()
        out["image_model_sha256"] = state_digest(local.model.state_dict())
    return out


def trainer_reader(cfg, schema, topo, day):
    from ..data.reader import DayReader

    return DayReader(day, schema, cfg.batch_size, topo.role_rank, topo.num_workers, cfg.prefetch,
                     cfg.on_bad_row)


def run_training(cfg: TrainConfig) -> dict | None:
    """Run the job on this rank; world rank 0 returns the run summary."""
    topo = build_topology(cfg.servers, cfg.placement)
    install_abort_hook(topo.describe)
    watchdog = Watchdog(topo.describe, cfg.step_timeout)
    schema = Schema.load(cfg.data)
    train_days, test_day = resolve_days(cfg)
    run_dir = Path(cfg.out)
    if topo.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.yaml")
        roles = {"servers": topo.server_ranks, "workers": topo.worker_ranks}
        (run_dir / "topology.json").write_text(json.dumps(roles))
        print(f"hvams: {topo.size} ranks: servers {topo.server_ranks}, workers {topo.worker_ranks}",
              flush=True)
    topo.world.Barrier()
    resume_dir = ckpt.latest_complete(run_dir) if cfg.resume else None
    if cfg.resume and resume_dir is None and topo.rank == 0:
        print(f"hvams: --resume: no complete checkpoint in {run_dir}; starting fresh", flush=True)
    elif resume_dir is not None and topo.rank == 0:
        print(f"hvams: --resume: latest complete checkpoint is {resume_dir.name}", flush=True)
    specs = channel_specs(cfg, schema)
    counter = ByteCounter()
    counter.watchdog = watchdog
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    tb = TensorBoardLog(topo, cfg.tensorboard, cfg.log_every, counter)
    if topo.is_server:
        result = run_server(cfg, schema, topo, specs, counter, resume_dir, run_dir, train_days, tb)
    else:
        result = run_worker(cfg, schema, topo, specs, counter, resume_dir, run_dir, train_days,
                            test_day, tb)
    tb.close()
    elapsed = time.perf_counter() - t0
    result.update({"role": topo.role, "role_rank": topo.role_rank, "bytes": counter.snapshot(),
                   "elapsed_s": elapsed})
    gathered = topo.world.gather(result, root=0)
    summary = None
    if topo.rank == 0:
        summary = summarize(gathered, cfg, topo, elapsed)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        print(format_bytes_table(summary), flush=True)
    write_report("train", topo.rank, {"role": topo.role, **{k: v for k, v in result.items()
                                                           if k != "losses"}})
    watchdog.stop()
    finish(topo)
    return summary


def image_summary(servers: list[dict], workers: list[dict]) -> dict | None:
    """Image counters over all ranks: requested = served + missing + corrupt."""
    holders = [r for r in servers + workers if r.get("images")]
    if not holders:
        return None
    keys = ("requested", "served", "decoded", "missing", "corrupt", "backbone_runs")
    out = {k: sum(r["images"].get(k, 0) for r in holders) for k in keys}
    out["unique_per_server_total"] = sum(s["server"]["unique"].get("image", 0) for s in servers)
    out["requested_by_workers_total"] = sum(s["server"]["requested"].get("image", 0) for s in servers)
    pc = [r["images"]["pixel_cache"] for r in holders if "pixel_cache" in r["images"]]
    hits, misses = sum(p["hits"] for p in pc), sum(p["misses"] for p in pc)
    out["pixel_cache_hit_rate"] = hits / (hits + misses) if hits + misses else 0.0
    fc = [r["images"]["feature_cache"] for r in holders if "feature_cache" in r["images"]]
    fh, fm = sum(f["hits"] for f in fc), sum(f["misses"] for f in fc)
    out["feature_cache_hit_rate"] = fh / (fh + fm) if fh + fm else None
    out["model_sha256"] = sorted({r["image_model_sha256"] for r in holders if r.get("image_model_sha256")})
    out["bad_examples"] = [e for r in holders for e in r["images"].get("bad_examples", [])][:10]
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
    return {"model": cfg.model, "strategy": cfg.strategy, "servers": topo.num_servers,
            "workers": topo.num_workers, "steps": steps, "samples": samples,
            "rows": {"read": sum(w["worker"]["rows_read"] for w in workers),
                     "trained": samples, "rejected": sum(rejected.values()),
                     "rejected_by_reason": rejected,
                     "reject_examples": [m for w in workers
                                         for m in w["worker"]["reject_examples"]][:10]},
            "elapsed_s": elapsed, "samples_per_s": samples / elapsed if elapsed else 0.0,
            "bytes": by_cat, "bytes_per_step": {k: v / max(steps, 1) for k, v in by_cat.items()},
            "losses": w0["losses"], "final_step": w0["final_step"],
            "server_rows": [s["rows"] for s in sorted(servers, key=lambda s: s["role_rank"])],
            "images": image_summary(servers, workers),
            "server_stats": [s["server"] for s in sorted(servers, key=lambda s: s["role_rank"])]}
