"""Build ``mpirun`` command lines for running hvams on this machine."""
from __future__ import annotations

import os
import shutil
import sys


def mpirun_command(np_: int, argv: list[str], env: dict[str, str] | None = None,
                   mpmd: list[tuple[int, dict[str, str]]] | None = None,
                   tag_output: bool = False) -> list[str]:
    """``mpirun`` argv that runs ``argv`` on ``np_`` local ranks.

    Oversubscribed and unbound, because tests and ``--local`` runs put more
    ranks than cores on one machine. ``mpmd`` splits the ranks into groups
    with their own environment (``-np k -x VAR=... argv : ...``).
    ``tag_output`` prefixes each line with its rank (tests parse it).
    """
    mpirun = shutil.which("mpirun") or "mpirun"
    cmd = [mpirun, "--oversubscribe", "--bind-to", "none",
           # Containers often forbid the cross-memory-attach single copy.
           "--mca", "btl_vader_single_copy_mechanism", "none"]
    if tag_output:
        cmd.append("--tag-output")
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    for key in sorted(env or {}):
        cmd += ["-x", f"{key}={env[key]}"]
    for key in ("PATH", "PYTHONPATH", "OMP_NUM_THREADS", "HVAMS_SERVERS", "LD_LIBRARY_PATH"):
        if key in os.environ and key not in (env or {}):
            cmd += ["-x", key]
    if not mpmd:
        return cmd + ["-np", str(np_)] + list(argv)
    groups = []
    for count, group_env in mpmd:
        part = ["-np", str(count)]
        for key in sorted(group_env):
            part += ["-x", f"{key}={group_env[key]}"]
        groups.append(part + list(argv))
    out = cmd + groups[0]
    for part in groups[1:]:
        out += [":"] + part
    return out


def local_env(threads_per_rank: int = 1) -> dict[str, str]:
    """Environment for local multi-rank runs: one BLAS/OpenMP thread per rank."""
    return {"OMP_NUM_THREADS": str(threads_per_rank), "MKL_NUM_THREADS": str(threads_per_rank)}


def python_argv(module: str, *args: str) -> list[str]:
    """argv that runs ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]
