"""``hvams bench comm|speed|quality``: the benchmarks of docs/benchmarks.md."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from hvams.bench.quality import DEFAULT_MODELS as QUALITY_DEFAULT

from .common import CliError, choice, options


@click.group()
def bench():
    """Benchmarks: bytes per batch, samples/s, and model quality of the strategies."""


def _common(f):
    """Options every bench command shares: the data, the ranks, the base config."""
    return options(
        click.option("--data", required=True, type=click.Path(file_okay=False),
                     help="Data directory (a synthetic world)."),
        click.option("--out", type=click.Path(file_okay=False),
                     help="Bench directory (runs, JSON, tables)."),
        click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
                     help="YAML train config the runs start from."),
        click.option("--local", "ranks", type=int,
                     help="Ranks of each run (mpirun on this machine); default 4 (paper preset: 6)."),
        click.option("--servers", type=int, default=2, show_default=True),
        click.option("--batch-size", type=int, help="Samples per worker per step."),
        click.option("--backbone", type=choice("backbone")),
        click.option("--backbone-weights", type=click.Path(exists=True, dir_okay=False),
                     help="Default: DATA/backbone/small-cnn.pt if it exists (small-cnn only)."),
        click.option("--image-size", type=int),
        click.option("--device", type=choice("device"),
                     help="Device of every rank and of the one-process baseline."),
        click.option("--precision", type=choice("precision")),
        click.option("--timeout", type=float, default=1800, show_default=True,
                     help="Seconds one run may take before the bench fails."),
    )(f)


def _base(data, config_path, servers, batch_size, backbone, backbone_weights, image_size, device,
          precision, defaults=None, **extra):
    """The bench's config: ``defaults`` (the bench's own, beneath the --config file), the
    file, then the flags given."""
    from hvams.config import load_config
    from hvams.runtime.runtime import check_devices

    cfg = load_config(config_path, {"data": data, "servers": servers, "batch_size": batch_size,
                                    "backbone": backbone, "image_size": image_size,
                                    "device": device, "precision": precision, **extra},
                      defaults)
    check_devices(cfg)
    default_w = Path(data) / "backbone" / "small-cnn.pt"
    if backbone_weights:
        cfg.backbone_weights = backbone_weights
    elif cfg.backbone_weights is None and cfg.backbone == "small-cnn" and default_w.exists():
        cfg.backbone_weights = str(default_w)
    return cfg


def _finish(out: Path, name: str, text: str) -> None:
    command = "hvams " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    (out / f"{name}.md").write_text(f"Command: `{command}`\n\n{text}\n")
    click.echo(text)
    click.echo(f"\nwrote {out / (name + '.json')} and {out / (name + '.md')}")


def _save_result(out: Path, name: str, result: dict, fmt, chart: str | None,
                 note: str = "") -> None:
    """A bench's JSON (with the machine), its table, and with ``chart`` its chart
    (``hvams.bench.charts.<name>_chart``)."""
    from hvams.bench.jobs import save_json
    from hvams.bench.machine import machine

    m = machine()
    result["machine"] = f"{m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB{note}"
    save_json(out / f"{name}.json", result)
    _finish(out, name, fmt(result))
    if chart:
        from hvams.bench import charts

        getattr(charts, f"{name}_chart")(
            result, Path(chart), f"{result['machine']}; `hvams " + " ".join(sys.argv[1:]) + "`")
        click.echo(f"wrote {chart}")


def _paper_preset(bench_name: str, opts: dict) -> None:
    """The paper's batch shape: its world in DATA (synthesised if absent), 3,000 samples per
    worker, vgg16 cut at fc6."""
    if not (Path(opts["data"]) / "world.json").exists():
        from hvams.data.synth import preset as world_preset
        from hvams.pretrain import synthesize_world

        click.echo(f"bench {bench_name}: synthesising the paper-like world in {opts['data']} ...")
        synthesize_world(opts["data"], world_preset("paper"), overwrite=True)
    opts["batch_size"] = opts["batch_size"] or 3000
    opts["backbone"] = opts["backbone"] or "vgg16"


def _seeds(seeds: str) -> list[int]:
    try:
        return [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise CliError(f"--seeds must be comma-separated integers (got {seeds!r})") from None


def _known(given: list[str], known: list[str], what: str) -> None:
    bad = [g for g in given if g not in known]
    if bad:
        raise CliError(f"unknown {what}(s) {bad}; choose from {known}")


@bench.command()
@_common
@click.option("--steps", type=click.IntRange(min=1), default=3, show_default=True,
              help="Steps of each strategy.")
@click.option("--preset", type=click.Choice(["paper"]),
              help="paper: synthesise the paper-like world in DATA if absent; 2 servers + 4 workers, "
                   "batch 3,000 per worker, frozen vgg16 (4096-d fc6) at 32 px (paper Table 2).")
def comm(out, ranks, steps, preset, timeout, **opts):
    """Bytes per batch of store-in-worker, store-in-server and AMS (paper Table 2).

    \b
    Example:
      hvams bench comm --data data/paper --preset paper --out runs/bench/comm
      hvams bench comm --data data/demo --batch-size 512 --steps 5
    """
    from hvams.bench.comm import format_comm, run_comm

    extra = {"model": "dicm"}
    if preset == "paper":
        _paper_preset("comm", opts)
        extra["freeze_backbone"] = True
        ranks = ranks or 6  # 2 servers + 4 workers: more workers than servers, as in the paper
    cfg = _base(**opts, **extra)
    out = Path(out or "runs/bench/comm")
    ranks = ranks or 4
    result = run_comm(cfg, ranks, steps, out, timeout)
    _finish(out, "comm", format_comm(result))


@bench.command()
@_common
@click.option("--steps", type=click.IntRange(min=2), default=30, show_default=True,
              help="Steps of each run.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True,
              help="Steps left out of the rate.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Interleaved rounds.")
@click.option("--variant", "variants", multiple=True, type=click.Choice(["trainable", "frozen"]),
              help="Backbone variants (default both).")
@click.option("--no-one-process", "one_process", flag_value=False, default=True,
              help="Skip the one-process baseline.")
@click.option("--strategy", "strategies", multiple=True, type=choice("strategy"),
              help="Strategies to run (default all three).")
@click.option("--chart", type=click.Path(dir_okay=False), help="Write the samples/s chart (PNG) here.")
def speed(out, ranks, steps, warmup, rounds, variants, one_process, strategies, chart, timeout,
          **opts):
    """Samples/s of the three strategies (interleaved) and of one process.

    \b
    Example:
      hvams bench speed --data data/demo --batch-size 256 --out runs/bench/speed \\
        --chart docs/img/speed.png
    """
    from hvams.bench.comm import STRATEGIES
    from hvams.strategies import Strategy
    from hvams.bench.speed import VARIANTS, format_speed, run_speed

    cfg = _base(**opts, model="dicm")
    out = Path(out or "runs/bench/speed")
    ranks = ranks or 4
    result = run_speed(cfg, ranks, steps, rounds, warmup, out, list(variants) or list(VARIANTS),
                       one_process, timeout, [Strategy(s) for s in strategies] or list(STRATEGIES))
    _finish(out, "speed", format_speed(result))
    if chart:
        from hvams.bench.charts import speed_chart

        speed_chart(result, Path(chart), f"{result['machine']}; `hvams " + " ".join(sys.argv[1:]) + "`")
        click.echo(f"wrote {chart}")


@bench.command()
@_common
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated training seeds.")
@click.option("--models", default=",".join(QUALITY_DEFAULT), show_default=True,
              help="Comma-separated models (dicm with its aggregator; also dicm scratch, dicm "
                   "frozen, dicm tuned: the ways to a backbone).")
@click.option("--epochs", type=int)
@click.option("--train-days", help="Comma-separated day directories to train on (default: world.json's).")
@click.option("--eval-every", type=int, help="Steps between test evaluations (the AUC curve).")
@click.option("--curve-seeds", type=int,
              help="Only the first N seeds evaluate every --eval-every steps (default: all).")
@click.option("--reuse", is_flag=True,
              help="Keep finished runs of the same config in OUT (resume an interrupted bench).")
@click.option("--freeze-backbone/--train-backbone", default=None,
              help="Keep the image models' backbone fixed (the paper; the default unless "
                   "--config sets freeze_backbone) or train it end to end.")
@click.option("--image-products/--no-image-products", default=None,
              help="DICM's tower also gets ad image x pooled channels (config image_products).")
@click.option("--backbone-lr-scale", type=float,
              help="A trainable backbone learns at image_lr times this (the dicm tuned row).")
@click.option("--chart", type=click.Path(dir_okay=False),
              help="Write the AUC-over-training chart (PNG) here.")
def quality(out, ranks, seeds, models, epochs, train_days, eval_every, curve_seeds, reuse,
            freeze_backbone, image_products, backbone_lr_scale, chart, timeout, **opts):
    """Test AUC, GAUC and new-ad AUC of every model over seeds (paper Tables 3, 4, 6).

    \b
    Example:
      hvams bench quality --data data/bench --batch-size 512 --image-size 64 --eval-every 80 \\
        --out runs/bench/quality --chart docs/img/auc.png
    """
    from hvams.bench.quality import MODELS, format_quality, run_quality

    names = [m.strip() for m in models.split(",") if m.strip()]
    _known(names, list(MODELS), "model")
    seed_list = _seeds(seeds)
    cfg = _base(**opts, defaults={"freeze_backbone": True},  # the paper's, unless --config says
                epochs=epochs, eval_every=eval_every, freeze_backbone=freeze_backbone,
                image_products=image_products, backbone_lr_scale=backbone_lr_scale,
                train_days=[d.strip() for d in train_days.split(",")] if train_days else None)
    if "dicm tuned" in names and not cfg.backbone_weights:
        raise click.BadParameter("the dicm tuned row fine-tunes given weights: pass "
                                 "--backbone-weights (without them it is dicm scratch)",
                                 param_hint="--models")
    out = Path(out or "runs/bench/quality")
    ranks = ranks or 4
    result = run_quality(cfg, ranks, seed_list, names, out, timeout, curve_seeds, reuse)
    _finish(out, "quality", format_quality(result))
    if chart:
        from hvams.bench.charts import auc_chart

        auc_chart(result, Path(chart), f"{result['machine']}; `hvams " + " ".join(sys.argv[1:]) + "`")
        click.echo(f"wrote {chart}")


@bench.command()
@click.option("--data", required=True, type=click.Path(file_okay=False), help="Data directory.")
@click.option("--out", type=click.Path(file_okay=False), help="Bench directory (runs, JSON, table).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="YAML train config the runs start from (the idonly model's settings).")
@click.option("--batch-size", type=int, default=256, show_default=True,
              help="Samples per stream: the global batch is 4 of them.")
@click.option("--train-days", help="Comma-separated day directories to train on (default: world.json's).")
@click.option("--seeds", default="0,1,2", show_default=True,
              help="Comma-separated seeds: one interleaved round of every contender each.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True,
              help="Steps left out of the rate.")
@click.option("--max-steps", type=click.IntRange(min=1), help="Stop every run after this many steps.")
@click.option("--only", multiple=True, help="Run only these contenders (names as in the table).")
@click.option("--profile", metavar="FIRST:LAST",
              help="torch.profiler flat profile of TorchRec rank 0 over these steps (last round).")
@click.option("--timeout", type=float, default=1800, show_default=True,
              help="Seconds one run may take before the bench fails.")
def peer(data, out, config_path, batch_size, train_days, seeds, warmup, max_steps, only, profile,
         timeout):
    """hvams idonly against the same model on TorchRec: samples/s, AUC, memory.

    \b
    Example:
      hvams bench peer --data data/demo --out runs/bench/peer-demo
      hvams bench peer --data data/bench --train-days day=00 --out runs/bench/peer-bench
    """
    from hvams.bench.peer import CONTENDERS, format_peer, run_peer
    from hvams.config import load_config

    try:
        import torchrec  # noqa: F401
    except ImportError as exc:
        raise CliError(f"the TorchRec peer needs torchrec and fbgemm-gpu-cpu "
                       f"(requirements-peer.txt; `make setup` installs them): {exc}") from None
    names = {c.name: c for c in CONTENDERS}
    _known(list(only), list(names), "contender")
    seed_list = _seeds(seeds)
    cfg = load_config(config_path, {
        "data": data, "model": "idonly", "batch_size": batch_size, "max_steps": max_steps,
        "train_days": [d.strip() for d in train_days.split(",")] if train_days else None})
    from hvams.peer.sharding import fused_optimizer
    from hvams.train.preflight import preflight

    preflight(cfg)
    fused_optimizer(cfg)  # one the peer's kernels have, or a ConfigError now
    out = Path(out or "runs/bench/peer")
    contenders = [names[o] for o in only] if only else list(CONTENDERS)
    result = run_peer(cfg, seed_list, warmup, out, timeout, contenders, profile)
    _finish(out, "peer", format_peer(result))


@bench.command()
@_common
@click.option("--hosts", type=click.IntRange(min=2), default=3, show_default=True,
              help="Fake hosts (cluster/netns); the ranks are spread over them.")
@click.option("--rates", default="unlimited,1gbit,100mbit", show_default=True,
              help="Comma-separated link rates per host (tc units); the first is the reference.")
@click.option("--steps", type=click.IntRange(min=2), default=16, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=4, show_default=True)
@click.option("--rounds", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--variant", "variants", multiple=True, type=click.Choice(["frozen", "trainable"]),
              help="Backbone variants (default both; the paper preset: frozen).")
@click.option("--strategy", "strategies", multiple=True, type=choice("strategy"),
              help="Strategies to run (default all three).")
@click.option("--wire", "wires", multiple=True,
              type=click.Choice(["fp32", "fp16-rows", "fp16-allreduce", "fp16"]),
              help="What travels in fp16 (default fp32): rows and row gradients, Horovod's "
                   "allreduces, or both; each is run beside the others in every round.")
@click.option("--preset", type=click.Choice(["paper"]),
              help="paper: the paper's batch shape (bench comm's preset: 3,000 samples per worker, "
                   "~40 behavior images each, frozen vgg16 fc6 at 32 px).")
@click.option("--chart", type=click.Path(dir_okay=False), help="Write the slowdown chart (PNG) here.")
def network(out, ranks, hosts, rates, steps, warmup, rounds, variants, strategies, wires, preset,
            chart, timeout, **opts):
    """The three strategies on fake hosts with limited links: samples/s, bytes, slowdown.

    Needs root (network namespaces). See docs/cluster.md for the fake cluster.

    \b
    Example:
      hvams bench network --data data/demo --batch-size 256 --out runs/bench/network \\
        --chart docs/img/network.png
    """
    from hvams.bench.comm import STRATEGIES
    from hvams.bench.network import format_network, run_network

    extra = {"model": "dicm"}
    if preset == "paper":
        _paper_preset("network", opts)
        variants = variants or ("frozen",)
    cfg = _base(**opts, **extra)
    out = Path(out or "runs/bench/network")
    rate_list = [r.strip() for r in rates.split(",") if r.strip()]
    result = run_network(cfg, hosts, ranks or 6, steps, warmup, rounds, out, rate_list,
                         list(variants) or ["frozen", "trainable"], timeout,
                         list(strategies) or list(STRATEGIES), list(wires) or ["fp32"])
    _finish(out, "network", format_network(result))
    if chart:
        from hvams.bench.charts import network_chart

        network_chart(result, Path(chart), f"{result['machine']}; `hvams " + " ".join(sys.argv[1:]) + "`")
        click.echo(f"wrote {chart}")


@bench.command()
@click.option("--data", required=True, type=click.Path(file_okay=False),
              help="A daily world (hvams data synth --preset daily).")
@click.option("--out", type=click.Path(file_okay=False), help="Bench directory (runs, JSON, table).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="YAML train config the runs start from.")
@click.option("--local", "ranks", type=int, default=3, show_default=True,
              help="Ranks of each run (mpirun on this machine).")
@click.option("--servers", type=int, default=1, show_default=True)
@click.option("--model", type=choice("model"), default="idonly", show_default=True)
@click.option("--emb-dim", type=int, default=48, show_default=True,
              help="Row width: wide enough that the tables, not the interpreter, fill a "
                   "server's memory, as in production.")
@click.option("--batch-size", type=int, default=512, show_default=True)
@click.option("--days", type=click.IntRange(min=3), help="Use the first N days (default: all).")
@click.option("--setting", "settings", multiple=True,
              help="Settings to run (default all): off, ttl-7, ttl-3, capacity, min-count-2, "
                   "ttl-7+min-count-2.")
@click.option("--capacity", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="max_rows_per_shard of the capacity setting.")
@click.option("--speed-pairs", type=click.IntRange(min=0), default=3, show_default=True,
              help="Interleaved pairs of the continuing-speed check (0: skip).")
@click.option("--timeout", type=float, default=1800, show_default=True,
              help="Seconds one run may take before the bench fails.")
@click.option("--chart", type=click.Path(dir_okay=False), help="Write the per-day chart (PNG) here.")
@click.option("--reuse", is_flag=True,
              help="Keep the day runs already finished in --out with the same config (an "
                   "interrupted bench resumes); the speed and load checks always run afresh.")
def lifecycle(data, out, config_path, ranks, servers, model, emb_dim, batch_size, days, settings,
              capacity, speed_pairs, timeout, chart, reuse):
    """Retrain every day with and without row policies: memory, rows, next-day AUC.

    \b
    Example:
      hvams data synth --out data/daily --preset daily
      hvams bench lifecycle --data data/daily --out runs/bench/lifecycle \\
        --chart docs/img/lifecycle.png
    """
    from hvams.bench.lifecycle import SETTINGS, format_lifecycle, run_lifecycle
    from hvams.config import load_config
    from hvams.data.reader import list_days
    from hvams.train.preflight import preflight

    _known(list(settings), list(SETTINGS), "setting")
    cfg = load_config(config_path, {"data": data, "servers": servers, "model": model,
                                    "emb_dim": emb_dim, "batch_size": batch_size})
    preflight(cfg)
    names = [d.name for d in list_days(data)][:days]
    out = Path(out or "runs/bench/lifecycle")
    result = run_lifecycle(cfg, ranks, names, list(settings) or list(SETTINGS), capacity, out,
                           timeout, speed_pairs, reuse)
    _finish(out, "lifecycle", format_lifecycle(result))
    if chart:
        from hvams.bench.charts import lifecycle_chart

        lifecycle_chart(result, Path(chart), f"{result['machine']}; `hvams " + " ".join(sys.argv[1:]) + "`")
        click.echo(f"wrote {chart}")


def _rows(text: str) -> int:
    """1000000, 1M, 30M, 2.5M -> rows."""
    t = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(t[-1:], 1)
    try:
        n = int(float(t[:-1] if scale > 1 else t) * scale)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a row count (like 1000000, 10M, 2.5M)") from None
    if n < 1000:
        raise click.BadParameter(f"{text!r}: at least 1000 rows")
    return n


@bench.command()
@click.option("--rows", "sizes", multiple=True, default=("1M", "10M", "30M", "100M"),
              show_default=True, help="Shard sizes (repeatable; 1M, 2.5M, 1000000).")
@click.option("--ids-per-batch", type=click.IntRange(min=1), default=1_400_000, show_default=True,
              help="IDs in one mini-batch over all servers (the paper's 1.4M).")
@click.option("--servers", type=click.IntRange(min=1), default=10, show_default=True,
              help="Servers the batch's IDs are spread over.")
@click.option("--repeats", type=click.FloatRange(0, 1, max_open=True), default=0.3,
              show_default=True, help="Share of a batch's IDs that repeat another.")
@click.option("--batches", type=click.IntRange(min=1), default=9, show_default=True,
              help="Batches timed per operation (the median counts).")
@click.option("--dict-max", type=click.IntRange(min=0), default=30_000_000, show_default=True,
              help="Largest size the Python-dict baseline runs at.")
@click.option("--no-mch", is_flag=True, help="Skip the TorchRec managed-collision baseline.")
@click.option("--no-checkpoints", is_flag=True, help="Skip the checkpoint write/load timings.")
@click.option("--scratch", type=click.Path(file_okay=False),
              help="Where checkpoints are written (default: a temporary directory).")
@click.option("--out", type=click.Path(file_okay=False), help="Bench directory (JSON, table).")
@click.option("--chart", type=click.Path(dir_okay=False), help="Write the chart (PNG) here.")
def shard(sizes, ids_per_batch, servers, repeats, batches, dict_max, no_mch, no_checkpoints,
          scratch, out, chart):
    """One server's shard of a 12-d Adagrad table from 1M to 100M rows: bytes per row and
    keys/s of lookup, insert, gather and update against the machine's memory bounds, beside a
    Python dict and TorchRec's managed-collision remap; checkpoint write and load.

    \b
    Example:
      hvams bench shard --out runs/bench/shard --chart docs/img/shard.png
    """
    from hvams.bench.jobs import save_json
    from hvams.bench.shard import format_shard, run_shard_bench

    rows = [_rows(s) for s in sizes]
    if int(ids_per_batch // servers * (1 - repeats)) < 1:
        raise CliError(f"--ids-per-batch {ids_per_batch} over --servers {servers} with --repeats "
                       f"{repeats} leaves no distinct key per server and step")
    out = Path(out or "runs/bench/shard")
    out.mkdir(parents=True, exist_ok=True)
    result = run_shard_bench(rows, ids_per_batch, servers, repeats, batches, dict_max,
                             mch=not no_mch, checkpoints=not no_checkpoints,
                             scratch=Path(scratch) if scratch else None,
                             log=lambda m: click.echo(m),
                             save=lambda r: save_json(out / "shard.json", r))
    _save_result(out, "shard", result, format_shard, chart, "; one process, one thread")


@bench.command("serve")
@click.option("--export", "export_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The export to serve (hvams export).")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The world it was trained on: requests are built from its test day.")
@click.option("--day", default=None, help="Day directory of DATA to build requests from "
                                          "(default: its last day).")
@click.option("--rates", default="50,100,200,300,400", show_default=True,
              help="Request rates to drive, requests/s, comma-separated.")
@click.option("--seconds", type=click.FloatRange(1), default=10, show_default=True,
              help="Measured seconds per rate (after a 2 s calibration run).")
@click.option("--candidates", type=click.IntRange(1), default=100, show_default=True)
@click.option("--behaviors", type=click.IntRange(0), default=30, show_default=True)
@click.option("--new-images", default="0,0.1", show_default=True,
              help="Shares of candidates that bring a new image (comma-separated series).")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True,
              help="Server processes.")
@click.option("--connections", type=click.IntRange(1), default=16, show_default=True)
@click.option("--p99-bound-ms", type=click.FloatRange(0, min_open=True), default=50,
              show_default=True, help="p99 a rate must stay within to count as sustained.")
@click.option("--out", type=click.Path(file_okay=False), help="Bench directory (JSON, table).")
@click.option("--chart", type=click.Path(dir_okay=False), help="Write the chart (PNG) here.")
def serve_bench(export_dir, data_dir, day, rates, seconds, candidates, behaviors, new_images,
                workers, connections, p99_bound_ms, out, chart):
    """hvams serve under wrk at fixed request rates: p50/p90/p99 latency and the highest rate
    sustained, with all images known and with a share of new images embedded on arrival.

    \b
    Example:
      hvams bench serve --export models/demo --data data/demo --out runs/bench/serve
    """
    from hvams.bench.serve import format_serve, run_serve_bench

    try:
        rate_list = [float(x) for x in rates.split(",") if x.strip()]
        shares = [float(x) for x in new_images.split(",") if x.strip()]
    except ValueError:
        raise CliError(f"--rates {rates!r} / --new-images {new_images!r}: comma-separated "
                       f"numbers") from None
    if not rate_list or min(rate_list) <= 0 or not shares or not all(0 <= s <= 1 for s in shares):
        raise CliError("--rates needs positive rates, --new-images shares in [0, 1]")
    data_dir = Path(data_dir)
    days = sorted(d for d in data_dir.glob("day=*") if d.is_dir())
    day_dir = data_dir / day if day else (days[-1] if days else None)
    if day_dir is None or not day_dir.is_dir():
        raise CliError(f"--data {data_dir}: no day directory {day or '(day=NN)'} there")
    out = Path(out or "runs/bench/serve")
    store = data_dir / "images"
    result = run_serve_bench(Path(export_dir), day_dir, store if store.is_dir() else None, out,
                             rate_list, seconds, candidates, behaviors, shares, workers,
                             connections, p99_bound_ms, log=lambda m: click.echo(m))
    _save_result(out, "serve", result, format_serve, chart)


@bench.command("image-rate")
@click.option("--from-speed", "speed_json", type=click.Path(exists=True, dir_okay=False),
              help="A bench speed JSON: the model, size and backbone modes of its runs, each at "
                   "its AMS servers' images per step, with their image stage's rate beside.")
@click.option("--backbone", type=choice("backbone"), default="small-cnn", show_default=True)
@click.option("--image-size", type=int, default=64, show_default=True)
@click.option("--mode", "modes", multiple=True, type=click.Choice(["trainable", "frozen"]),
              help="trainable: forward, backward and Adam; frozen: forward (default trainable).")
@click.option("--batch", type=click.IntRange(min=1), default=1024, show_default=True)
@click.option("--device", type=choice("device"), default="auto", show_default=True)
@click.option("--precision", type=choice("precision"), default="auto", show_default=True)
@click.option("--seconds", type=float, default=5.0, show_default=True,
              help="Seconds of timed steps per mode.")
@click.option("--record", type=click.Path(dir_okay=False),
              help="Append each result as a results.jsonl line (see bench gpu-tables).")
@click.option("--name", default="image-rate", show_default=True, help="Its name there.")
def image_rate_cmd(speed_json, backbone, image_size, modes, batch, device, precision, seconds,
                   record, name):
    """Raw images/s of an image model on one device: the limit of the servers' image stage.

    \b
    Example:
      hvams bench image-rate --backbone resnet18 --image-size 64 --batch 2048 --device cuda
      hvams bench image-rate --from-speed runs/bench/speed/speed.json --device cuda
    """
    import json

    from hvams.bench.gpu_tables import stage_rate
    from hvams.bench.image_rate import image_rate
    from hvams.config import TrainConfig
    from hvams.runtime.runtime import check_devices

    runs = []
    if speed_json:
        try:
            speed = json.loads(Path(speed_json).read_text())
            backbone, image_size = speed["backbone"], speed["image_size"]
            for variant in speed["median"]:
                b, stage = stage_rate(speed, variant)
                if b:
                    runs.append((variant, b, stage))
        except (KeyError, ValueError, TypeError) as exc:
            raise CliError(f"{speed_json}: not a bench speed result ({exc})") from None
        if not runs:
            raise CliError(f"{speed_json}: no AMS run with images to compare with")
    else:
        runs = [(m, batch, None) for m in (modes or ("trainable",))]
    cfg = TrainConfig(data="-", backbone=backbone, image_size=image_size, device=device,
                      precision=precision).validate()
    check_devices(cfg)
    for mode, b, stage in runs:
        r = image_rate(cfg, b, mode, seconds)
        r["stage_images_per_s"] = stage
        click.echo(f"{backbone} {image_size} px {mode}, batch {b:,}: {r['images_per_s']:,.0f} "
                   f"images/s raw" + (f", {stage:,.0f} in the servers' image stage" if stage else ""))
        if record:
            with open(record, "a") as fh:
                fh.write(json.dumps({"stage": "image-rate", "name": f"{name} {mode}",
                                     "result": r}) + "\n")


@bench.command("gpu-tables")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the tables here.")
def gpu_tables(folder, out):
    """The GPU tables of docs/benchmarks.md from a device session's output folder
    (scripts/gpu_session.sh writes it; --dry-run too, on the CPU).

    \b
    Example:
      hvams bench gpu-tables runs/gpu-session --out runs/gpu-session/tables.md
    """
    from hvams.bench.gpu_tables import load_session, render

    try:
        text = render(load_session(Path(folder)))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if out:
        Path(out).write_text(text + "\n")
    click.echo(text)
