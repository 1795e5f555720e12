"""``hvams train``."""
from __future__ import annotations

import os
import sys

import click

from hvams.config import BACKBONES

from .main import EXIT_USAGE, main


def _rank() -> int:
    for var in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


@main.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="YAML config; flags override its keys.")
@click.option("--data", help="Data directory (schema.json, day=NN/).")
@click.option("--out", help="Run directory (config, metrics, checkpoints).")
@click.option("--images", help="Image store (default DATA/images).")
@click.option("--model", type=click.Choice(["idonly", "din", "dicm", "din+img"]))
@click.option("--servers", type=int, help="Server ranks (the rest are workers).")
@click.option("--placement", type=click.Choice(["block", "spread"]))
@click.option("--batch-size", type=int, help="Samples per worker per step.")
@click.option("--epochs", type=int)
@click.option("--max-steps", type=int, help="Stop after this many steps.")
@click.option("--lr", type=float, help="Dense (worker) learning rate.")
@click.option("--sparse-optimizer", type=click.Choice(["adagrad", "adam", "sgd"]))
@click.option("--sparse-lr", type=float, help="Server-side embedding learning rate.")
@click.option("--emb-dim", type=int)
@click.option("--seed", type=int)
@click.option("--aggregator", type=click.Choice(["mqap", "attentive", "sum", "max", "concat"]))
@click.option("--strategy", type=click.Choice(["ams", "store-in-server", "store-in-worker"]))
@click.option("--backbone", type=click.Choice(list(BACKBONES)),
              help="true-attributes: the quality ceiling, reads the world's truth, not pixels.")
@click.option("--backbone-weights", type=click.Path(exists=True, dir_okay=False),
              help="Backbone weights (state dict), e.g. DATA/backbone/small-cnn.pt; for "
                   "true-attributes the truth table (default DATA/truth/items.parquet).")
@click.option("--freeze-backbone/--train-backbone", default=None,
              help="Keep the backbone fixed (features cached per image) and train the head.")
@click.option("--image-lr", type=float, help="Learning rate of the shared image model.")
@click.option("--image-size", type=int, help="Side in pixels the images are resized to.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]),
              help="Where every rank computes (auto: CUDA where a GPU is visible).")
@click.option("--server-device", type=click.Choice(["auto", "cpu", "cuda"]),
              help="Device of the servers (overrides --device).")
@click.option("--worker-device", type=click.Choice(["auto", "cpu", "cuda"]),
              help="Device of the workers (overrides --device).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp64"]),
              help="auto: bf16 autocast on CUDA, fp32 on the CPU; fp64 for verification.")
@click.option("--cache-bytes", type=int,
              help="Bytes of decoded pixels + frozen features a rank caches "
                   "(default: 40%% of free GPU memory on CUDA, unbounded on the CPU).")
@click.option("--allreduce-compression", type=click.Choice(["none", "fp16"]),
              help="fp16: Horovod's gradient allreduces (workers' dense model, servers' image "
                   "model) in fp16 on the wire, half the bytes.")
@click.option("--row-compression", type=click.Choice(["none", "fp16"]),
              help="fp16: ID rows, image embeddings and their gradients between servers and "
                   "workers in fp16 on the wire, half the bytes.")
@click.option("--checkpoint-every", type=int, help="Checkpoint every K steps (0: at the end only).")
@click.option("--resume", is_flag=True, default=None, help="Continue from the latest complete checkpoint.")
@click.option("--on-bad-row", type=click.Choice(["error", "skip"]))
@click.option("--tensorboard", type=click.Path(file_okay=False), help="TensorBoard log directory.")
@click.option("--warm-start", type=click.Path(exists=True, file_okay=False),
              help="Start from RUN_DIR's model, except its ID embeddings (partial warm-up).")
@click.option("--log-every", type=int, help="Steps between progress lines and TensorBoard points.")
@click.option("--eval-every", type=int, help="Steps between test evaluations (0: after each epoch).")
@click.option("--no-progress", "progress", flag_value=False, default=None)
@click.option("--step-timeout", type=float,
              help="Seconds without progress before a rank aborts the job (fail fast).")
@click.option("--local", "local_np", type=int, help="Start mpirun with N ranks on this machine.")
@click.option("--launch", metavar="COMMAND",
              help="Start the job with this launcher command line, to which hvams appends its "
                   "own, e.g. 'cluster/netns/mpirun.sh 6 --map-by node' or 'mpirun -np 8 "
                   "--hostfile hosts'; a dead rank is then named with its role and host.")
def train(config_path, local_np, launch, **flags):
    """Train a CTR model on servers + workers (run under mpirun/horovodrun/srun).

    \b
    Example:
      hvams train --data data/demo --local 4 --servers 2 --model dicm --out runs/dicm
      mpirun -np 8 hvams train --config run.yaml --servers 2
      horovodrun -np 4 hvams train --data data/demo --servers 1 --model din --out runs/din
    """
    from hvams.config import ConfigError, load_config

    from hvams.train.preflight import preflight

    try:
        cfg = load_config(config_path, flags)
        preflight(cfg)
    except ConfigError as exc:
        if _rank() == 0:
            click.echo(f"hvams: error: {exc}", err=True)
        raise SystemExit(EXIT_USAGE)
    if local_np or launch:
        import shlex

        from hvams.distributed.launch import run_launched, run_local

        if local_np and launch:
            click.echo("hvams: error: --local and --launch exclude each other", err=True)
            raise SystemExit(EXIT_USAGE)
        os.makedirs(cfg.out, exist_ok=True)
        resolved = os.path.abspath(os.path.join(cfg.out, "config.requested.yaml"))
        cfg.save(resolved)
        argv = [sys.executable, "-m", "cli", "train", "--config", resolved]
        roles = os.path.join(cfg.out, "topology.json")
        code = (run_local(local_np, argv, roles) if local_np else
                run_launched(shlex.split(launch) + argv, roles))
        raise SystemExit(1 if code else 0)
    from hvams.train.run import run_training

    run_training(cfg)
