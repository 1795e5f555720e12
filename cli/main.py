"""``hvams``: the command line of the hvams trainer (exit codes: ``cli.common``)."""
from __future__ import annotations

import click

from hvams import __version__

from .bench_cmds import bench
from .common import EXIT_STACK, CliError, Group, choice, options
from .data_cmds import data
from .images_cmds import images
from .serve_cmds import export_cmd, predict_cmd, serve_cmd
from .train_cmd import train


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hvams")
def main():
    """hvams: train image-aware CTR models (DICM) on an Advanced Model Server.

    \b
    Example:
      hvams data synth --out data/demo --preset demo
      hvams train --data data/demo --local 4 --servers 2 --model dicm --out runs/dicm
    """


@main.command()
@options(
    click.option("--json", "as_json", is_flag=True, help="Print the report as JSON."),
    click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
                 help="YAML train config whose device keys to resolve."),
    click.option("--device", type=choice("device"), help="As in hvams train."),
    click.option("--server-device", type=choice("server_device")),
    click.option("--worker-device", type=choice("worker_device")),
    click.option("--precision", type=choice("precision")),
)
def info(as_json, config_path, **devices):
    """Show torch, torchvision, Horovod, MPI and the device each role would use.

    Exits 3 when Horovod lacks PyTorch or MPI support, 2 when a device asked
    for is not on this machine.

    \b
    Example:
      hvams info
      hvams info --device cuda --worker-device cpu
    """
    import json

    from hvams.config import load_config
    from hvams.info import format_info, stack_info, stack_ok
    from hvams.runtime.runtime import check_devices

    report = stack_info()
    cfg = load_config(config_path, {"data": "-", **devices})
    report["devices"] = {role: rt.describe() for role, rt in check_devices(cfg).items()}
    click.echo(json.dumps(report, indent=2) if as_json else format_info(report))
    ok, why = stack_ok(report)
    if not ok:
        raise CliError(why, EXIT_STACK)


@main.command()
@click.option("--servers", type=int, default=None, envvar="HVAMS_SERVERS",
              help="Number of server ranks (default: $HVAMS_SERVERS or 1).")
@click.option("--placement", type=choice("placement"), default="block",
              show_default=True, help="Which ranks become servers.")
@click.option("--local", "local_np", type=int, default=None,
              help="Start mpirun with this many ranks on this machine.")
def smoke(servers, placement, local_np):
    """Check the rank split, both Horovod process sets and mpi4py traffic.

    \b
    Example:
      hvams smoke --local 4 --servers 2
      mpirun -np 4 hvams smoke --servers 2 --placement spread
    """
    if local_np:
        import subprocess

        from hvams.distributed.launch import local_env, mpirun_command, python_argv

        argv = python_argv("hvams.distributed.smoke", str(servers or 1), placement)
        raise SystemExit(subprocess.call(mpirun_command(local_np, argv, env=local_env())))
    from hvams.distributed.smoke import run_smoke

    run_smoke(servers, placement)


for command in (train, data, images, export_cmd, predict_cmd, serve_cmd, bench):
    main.add_command(command)
