"""``hvams train``: its options are the config keys that have one (``hvams.config``)."""
from __future__ import annotations

import os
import sys

import click

from .common import CliError, train_options


@click.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="YAML config; flags override its keys.")
@train_options
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
    from hvams.config import load_config
    from hvams.train.preflight import preflight

    cfg = load_config(config_path, flags)
    from hvams.distributed.preemption import EARLY, REQUEUE_EXIT, STOP, Forwarder

    if not (local_np or launch):
        STOP.install(cfg.checkpoint_signals)  # a rank: before torch's import, which is slow
        if held := EARLY.hand_over(cfg.checkpoint_signals):
            STOP._raise(held, None)
    preflight(cfg)
    if local_np or launch:
        import shlex

        from hvams.distributed.launch import run_launched, run_local

        if local_np and launch:
            raise CliError("--local and --launch exclude each other")
        os.makedirs(cfg.out, exist_ok=True)
        resolved = os.path.abspath(os.path.join(cfg.out, "config.requested.yaml"))
        cfg.save(resolved)
        argv = [sys.executable, "-m", "cli", "train", "--config", resolved]
        roles = os.path.join(cfg.out, "topology.json")
        # the ranks have their handlers once rank 0 has written the topology
        relay = Forwarder(cfg.checkpoint_signals, lambda: os.path.exists(roles))
        if held := EARLY.hand_over(relay.taken):
            relay._handler(held, None)
        code = (run_local(local_np, argv, roles, relay) if local_np else
                run_launched(shlex.split(launch) + argv, roles, relay))
        raise SystemExit(code if code in (0, REQUEUE_EXIT) else 1)
    from hvams.train.run import run_training

    run_training(cfg)
