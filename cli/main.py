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


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def info(as_json):
    """Show torch, torchvision, Horovod and MPI as hvams sees them.

    Exits 3 when Horovod lacks PyTorch or MPI support.

    \b
    Example:
      hvams info
    """
    import json

    from hvams.info import format_info, stack_info, stack_ok

    report = stack_info()
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
