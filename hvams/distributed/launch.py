"""Build ``mpirun`` command lines for running hvams on this machine."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sys
import threading


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
    forward = ["PATH", "PYTHONPATH", "OMP_NUM_THREADS", "LD_LIBRARY_PATH"]
    forward += sorted(k for k in os.environ if k.startswith("HVAMS_"))
    for key in forward:
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


_DIED = re.compile(r"process rank (\d+) with PID \S+ on node (\S+) exited on signal (\d+)(?: \(([^)]*)\))?")


def explain_failure(output: str, roles: dict | None) -> str | None:
    """One line naming the rank, its role and the cause, from mpirun's report."""
    m = _DIED.search(output)
    if not m:
        return None
    rank, node, sig, name = int(m.group(1)), m.group(2), m.group(3), m.group(4) or ""
    role = "unknown role"
    if roles:
        if rank in roles.get("servers", []):
            role = f"server {roles['servers'].index(rank)}"
        elif rank in roles.get("workers", []):
            role = f"worker {roles['workers'].index(rank)}"
    return f"hvams: rank {rank} ({role}) on {node} died: signal {sig} {name}".rstrip()


def run_local(np_: int, argv: list[str], roles_file: str | None = None, forwarder=None) -> int:
    """Run ``argv`` under a local mpirun, streaming its output; explain a dead rank."""
    return run_launched(mpirun_command(np_, argv, env=local_env()), roles_file, forwarder)


def run_launched(cmd: list[str], roles_file: str | None = None, forwarder=None) -> int:
    """Run a launcher command line (mpirun and its argv), streaming its output; when a
    rank died, one line naming the rank, its role (from ``roles_file``) and its host.
    ``forwarder`` (``preemption.Forwarder``) is attached to the launcher once it runs."""
    import json
    import subprocess
    from collections import deque

    if roles_file and os.path.exists(roles_file):
        os.remove(roles_file)  # an earlier run's: this run's rank 0 writes it once all started

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    if forwarder is not None:
        forwarder.attach(proc)
    tail: deque = deque(maxlen=400)
    for line in proc.stdout:
        sys.stdout.write(line)
        tail.append(line)
    code = proc.wait()
    if code != 0:
        roles = None
        if roles_file and os.path.exists(roles_file):
            with open(roles_file) as fh:
                roles = json.load(fh)
        why = explain_failure("".join(tail), roles)
        if why:
            print(why, file=sys.stderr, flush=True)
    return code


def _exit_on_term(signum, frame):
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def group_killed_on_exit(proc):
    """Kill ``proc``'s process group (started with ``start_new_session``) when this process
    leaves the block with it still running: on an exception, or on SIGTERM (from ``timeout``
    or Slurm), which is turned into SystemExit so this cleanup runs. A new session is out of
    reach of the signal that stops this process, so without it mpirun and its ranks would
    outlive a stopped bench or test and hold the cores, or a GPU, for what runs next."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _exit_on_term)
    try:
        yield
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
