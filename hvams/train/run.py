"""Entry point of a training job: every rank runs ``run_training(cfg)``.

It makes the rank's ``Job``; servers then run the passive server loop
(``hvams.server``), workers the training loop that sends the commands: train,
eval, checkpoint, stop (``hvams.worker``). All ranks meet at the world
barrier in ``finish``.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..config import NODE_FIELD, TrainConfig
from ..data.schema import Schema
from ..distributed.failfast import Watchdog, install_abort_hook
from ..distributed.preemption import REQUEUE_EXIT, STOP
from ..distributed.reports import write_report
from ..distributed.topology import build_topology, fail_all, finish, start_horovod
from ..protocol import timing
from ..protocol.accounting import ByteCounter
from ..runtime import Runtime, role_runtime
from ..runtime.memory import peak_rss_mb
from ..server.run import run_server
from ..strategies import strategy_for
from ..worker.run import run_worker
from .job import Job, channel_specs
from .plan import resolve_days
from .report import format_bytes_table
from .restore import choose_start
from .summary import summarize
from .tensorboard import TensorBoardLog


def _lists(folder: Path, name: str) -> bool:
    try:  # listing, not stat: it revalidates a cached directory on NFS
        return name in os.listdir(folder)
    except OSError:
        return False


def _require_shared_run_dir(topo, run_dir: Path) -> None:
    """Every rank writes into the run directory (a server its checkpoint shard), so across
    hosts it must be one shared directory: each rank must see the config.yaml rank 0 wrote.
    Otherwise stop every rank at start-up, naming a host that cannot see it."""
    deadline = time.monotonic() + 20  # a network file system may show a new file late
    while not (ok := _lists(run_dir, "config.yaml")) and time.monotonic() < deadline:
        time.sleep(0.5)
    seen = topo.world.allgather(ok)
    blind = [r for r, ok in enumerate(seen) if not ok]
    if blind:
        hosts = sorted({topo.nodes[r] for r in blind})
        if topo.rank == 0:
            print(f"hvams: error: config key 'out': run directory {run_dir} is not shared: ranks "
                  f"{blind} on {', '.join(hosts)} do not see the config.yaml that rank 0 wrote "
                  f"on {topo.nodes[0]}. Every rank writes there (checkpoint shards, metrics): "
                  "put it on a file system all hosts share", file=sys.stderr, flush=True)
        finish(topo)  # every rank reached the same verdict: meet, stop Horovod, exit
        sys.exit(2)


def place_rank(cfg: TrainConfig, topo) -> Runtime:
    """This rank's runtime, made current, with its GPU's sharing count and its role's
    gradient path from every rank's device (``runtime.layout``)."""
    from ..runtime.device import DeviceError
    from ..runtime.layout import gradient_paths, place, ranks_on_gpu

    rt = role_runtime(cfg, topo.role, topo.local_rank)
    table = place(topo.world, topo.node, topo.role, rt.device)
    try:
        paths = gradient_paths(table, cfg.allreduce_path)
    except DeviceError as exc:
        fail_all(topo.world, str(exc))   # the same table on every rank: the same verdict
    topo.gradient_path = paths[topo.role]
    rt = replace(rt, sharing=ranks_on_gpu(table, topo.rank))
    rt.activate()
    return rt


def run_training(cfg: TrainConfig) -> dict | None:
    """Run the job on this rank; world rank 0 returns the run summary."""
    STOP.install(cfg.checkpoint_signals)
    topo = build_topology(cfg.servers, cfg.placement, init_horovod=False)
    install_abort_hook(topo.describe)
    watchdog = Watchdog(topo.describe, cfg.step_timeout,
                        dump_on_sigterm="SIGTERM" not in cfg.checkpoint_signals)
    schema = Schema.load(cfg.data)
    train_days, test_day = resolve_days(cfg)
    # the resolved split is saved, so config.yaml says which days trained and tested
    cfg = replace(cfg, train_days=[d.name for d in train_days], test_day=test_day.name)
    run_dir = Path(cfg.out)
    if topo.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.yaml")
        print(f"hvams: train days {cfg.train_days}, test day {cfg.test_day}", flush=True)
        roles = {"servers": topo.server_ranks, "workers": topo.worker_ranks, "nodes": topo.nodes}
        (run_dir / "topology.json").write_text(json.dumps(roles))
        print(f"hvams: {topo.size} ranks: servers {topo.server_ranks}, workers {topo.worker_ranks}",
              flush=True)
    topo.world.Barrier()
    _require_shared_run_dir(topo, run_dir)
    if cfg.images and NODE_FIELD in cfg.images:  # a store placed per host (hvams images place)
        cfg = replace(cfg, images=cfg.images.replace(NODE_FIELD, topo.node))
    start = choose_start(cfg, run_dir, topo.world)
    rt = place_rank(cfg, topo)   # before Horovod starts: NCCL binds to the current GPU
    start_horovod(topo)
    if rt.is_cuda and cfg.sync_stages:
        timing.set_sync(torch.cuda.synchronize)
    if topo.role_rank == 0:
        print(f"hvams: {topo.role}s on {rt.describe()}", flush=True)
    strategy = strategy_for(cfg)
    specs = channel_specs(cfg, schema, strategy)
    counter = ByteCounter()
    counter.watchdog = watchdog
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    tb = TensorBoardLog(topo, cfg.tensorboard, cfg.log_every, counter)
    job = Job(cfg, schema, topo, rt, strategy, specs, counter, run_dir, train_days, test_day, tb,
              start)
    result = run_server(job) if topo.is_server else run_worker(job)
    tb.close()
    elapsed = time.perf_counter() - t0
    result.update({"role": topo.role, "role_rank": topo.role_rank, "device": rt.describe(),
                   "bytes": counter.snapshot(),
                   "elapsed_s": elapsed, "stage_s": timing.snapshot(), "peak_rss_mb": peak_rss_mb()})
    gathered = topo.world.gather(result, root=0)
    summary = None
    if topo.rank == 0:
        summary = summarize(gathered, cfg, topo, elapsed)
        if result["stopped_early"]:
            summary["stopped_early"] = {"signals": STOP.names, "ranks": STOP.ranks,
                                        "step": summary.get("final_step")}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        print(format_bytes_table(summary), flush=True)
    write_report("train", topo.rank, {"role": topo.role, **{k: v for k, v in result.items()
                                                           if k not in ("losses", "step_s")}})
    watchdog.stop()
    finish(topo)
    if result["stopped_early"]:  # every rank: the servers heard it in the workers' STOP
        if topo.rank == 0:
            print(f"hvams: stopped early on {STOP.describe()}, checkpoint written; exit code "
                  f"{REQUEUE_EXIT}: run again with --resume to continue", flush=True)
        raise SystemExit(REQUEUE_EXIT)
    if STOP.agreed and topo.rank == 0:
        print(f"hvams: {STOP.describe()} came as the run was ending: it finished", flush=True)
    return summary
