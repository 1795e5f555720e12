"""``hvams``: the command line of the hvams trainer.

Exit codes: 0 success; 1 a run failed; 2 bad usage, config or input;
3 the software stack is incomplete (see ``hvams info``).
"""
from __future__ import annotations

import click

from hvams import __version__

EXIT_FAILED, EXIT_USAGE, EXIT_STACK = 1, 2, 3


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hvams")
def main():
    """hvams: train image-aware CTR models (DICM) on an Advanced Model Server.

    \b
    Example:
      hvams data synth --out data/demo --preset demo
      hvams train --data data/demo --local 4 --servers 2 --model dicm --out runs/dicm
    """


DEVICE = click.Choice(["auto", "cpu", "cuda"])


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="YAML train config whose device keys to resolve.")
@click.option("--device", type=DEVICE, help="As in hvams train.")
@click.option("--server-device", type=DEVICE)
@click.option("--worker-device", type=DEVICE)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp64"]))
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

    from hvams.config import ConfigError, load_config
    from hvams.info import format_info, stack_info, stack_ok
    from hvams.runtime.runtime import check_devices

    report = stack_info()
    try:
        cfg = load_config(config_path, {"data": "-", **devices})
        report["devices"] = {role: rt.describe() for role, rt in check_devices(cfg).items()}
    except ConfigError as exc:
        click.echo(f"hvams: error: {exc}", err=True)
        raise SystemExit(EXIT_USAGE)
    click.echo(json.dumps(report, indent=2) if as_json else format_info(report))
    ok, why = stack_ok(report)
    if not ok:
        click.echo(f"hvams: error: {why}", err=True)
        raise SystemExit(EXIT_STACK)


@main.command()
@click.option("--servers", type=int, default=None, envvar="HVAMS_SERVERS",
              help="Number of server ranks (default: $HVAMS_SERVERS or 1).")
@click.option("--placement", type=click.Choice(["block", "spread"]), default="block",
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


def _register():
    # Sub-command modules attach themselves to ``main`` on import.
    from . import bench_cmds, data_cmds, serve_cmds, train_cmd  # noqa: F401


_register()
