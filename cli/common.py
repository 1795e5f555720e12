"""What every ``hvams`` command shares: exit codes, choices, config options, the error line.

Exit codes: 0 success; 1 a run failed; 2 bad usage, config or input;
3 the software stack is incomplete (see ``hvams info``).

An exception with ``user_error = True`` (a config key, a file, a row the user
can fix) reaches ``Group.invoke`` and becomes one line, ``hvams: error:
MESSAGE``, and its ``exit_code`` (default 2), without a traceback. Commands
raise; none prints the line itself. Once a rank of a training job has started
(``failfast.install_abort_hook``), its errors are the job's: they go on to the
abort hook, which names the rank and stops every rank.
"""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import fields

import click

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STACK = 0, 1, 2, 3


class CliError(Exception):
    """A usage mistake found by the command line itself."""

    user_error = True

    def __init__(self, message: str, exit_code: int = EXIT_USAGE):
        super().__init__(message)
        self.exit_code = exit_code


def launched_rank() -> int:
    """This process's rank when a launcher started it (else 0): under mpirun every rank
    runs the command line, and only the first reports a mistake."""
    for var in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


class Group(click.Group):
    """A click group whose commands' user errors end as one line and an exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as exc:
            from hvams.distributed.failfast import abort_hook_installed

            if not getattr(exc, "user_error", False) or abort_hook_installed():
                raise
            if launched_rank() == 0:
                click.echo(f"hvams: {getattr(exc, 'what', 'error')}: {exc}", err=True)
            raise SystemExit(getattr(exc, "exit_code", EXIT_USAGE)) from None


@contextlib.contextmanager
def reported(*types):
    """Exceptions of ``types`` raised inside are the user's input being wrong: reported as
    ``CliError`` (for library calls whose plain ValueError/OSError names the bad input)."""
    try:
        yield
    except types as exc:
        raise CliError(str(exc)) from None


# --- choices and options derived from TrainConfig ---

def choice(name: str) -> click.Choice:
    """The click type of config key ``name``'s choices."""
    from hvams.config import choices

    return click.Choice(list(choices(name)))


_PATHS = {"file": dict(exists=True, dir_okay=False), "dir": dict(exists=True, file_okay=False),
          "out-dir": dict(file_okay=False)}


def _option(f):
    from hvams.config import choices, flags_of, key_of, type_name, _TYPES

    k, flags = key_of(f), flags_of(f)
    help_text = k.help
    if k.on and k.off:
        return click.option(f"{k.on}/{k.off}", f.name, default=None, help=help_text)
    if k.on and k.on_values:  # ``--resume`` alone, or ``--resume auto``
        return click.option(k.on, f.name, is_flag=False, flag_value="true", default=None,
                            type=click.Choice(["true", *k.on_values]), help=help_text)
    if k.on:
        return click.option(k.on, f.name, is_flag=True, default=None, help=help_text)
    if k.off:
        return click.option(k.off, f.name, flag_value=False, default=None, help=help_text)
    if choices(f.name):
        kind = choice(f.name)
    elif k.path:
        kind = click.Path(**_PATHS[k.path])
    else:
        kind = {"int": int, "float": float, "str": str}[type_name(_TYPES[f.name]).split(" |")[0]]
    return click.option(*flags, f.name, type=kind, help=help_text)


def train_options(command):
    """Add an option for every ``TrainConfig`` key that has one, in the config's order."""
    from hvams.config import TrainConfig, flags_of

    for f in reversed(fields(TrainConfig)):
        if flags_of(f):
            command = _option(f)(command)
    return command


def options(*decorators):
    """Apply click option decorators in the order they are listed."""
    return lambda f: functools.reduce(lambda acc, o: o(acc), reversed(decorators), f)
