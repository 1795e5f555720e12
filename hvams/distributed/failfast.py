"""Fail fast: no rank may outlive a failure of another, or wait forever.

* ``install_abort_hook``: an uncaught exception prints the rank, its role and
  the cause, then ``MPI_Abort`` ends the whole job (mpirun kills the rest).
* ``Watchdog``: the training loop calls ``beat()`` at every protocol step. A
  rank that sees no beat for ``timeout`` seconds is stuck in a collective
  whose peer is gone (killed, hung, lost node); it names itself, the step it
  waits in, and aborts the job. mpirun also aborts a job whose rank dies, so
  this is the bound for launchers that do not (srun, some schedulers).
* Stacks: before this rank aborts, and when the launcher terminates it because
  another rank aborted (SIGTERM), faulthandler writes every thread's Python
  stack to stderr, so a hang in the field can be read from the log. The
  SIGTERM dump is armed once the first step's exchange completes, not at start-up: a rank
  stopped at start-up is almost always stopped for another rank's user error
  (whose output must stay one clear line), its stacks say nothing, and a dump
  in signal context while the main thread is importing (torch imports lazily)
  can crash in CPython's frame walk and print a C backtrace.
* ``HVAMS_FAULT``: test-only fault injection (``rank:R:step:N:kind``, kind =
  ``raise``, ``kill``, ``hang`` or ``pause``), so tests can fail a rank at an exact
  step; ``pause`` holds the job at that step until this rank gets a checkpoint
  signal (at most 120 s), so a test can signal it mid-run at a known step.
"""
from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time
import traceback


def _abort(code: int = 1) -> None:
    from mpi4py import MPI

    sys.stdout.flush()
    sys.stderr.write("hvams: Python stacks of this rank before MPI_Abort:\n")
    sys.stderr.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    MPI.COMM_WORLD.Abort(code)


def abort_quietly(code: int) -> None:
    """End the job for a user's mistake: no stacks, the message was printed."""
    from mpi4py import MPI

    sys.stdout.flush()
    sys.stderr.flush()
    MPI.COMM_WORLD.Abort(code)


_HOOKED = False


def abort_hook_installed() -> bool:
    """Whether this process is a rank of a started job (its errors end the whole job)."""
    return _HOOKED


def install_abort_hook(describe) -> None:
    """Uncaught exception on this rank -> one clear message -> abort the job."""
    global _HOOKED
    _HOOKED = True

    def hook(exc_type, exc, tb):
        sys.stderr.write(f"hvams: {describe()} failed: {exc_type.__name__}: {exc}\n")
        if getattr(exc, "user_error", False):  # bad input: the message says it all
            sys.stderr.flush()
            abort_quietly(2)
        traceback.print_exception(exc_type, exc, tb, file=sys.stderr)
        _abort(1)

    sys.excepthook = hook


def _dump_stacks_on_sigterm() -> None:
    # mpirun/srun terminate the other ranks of an aborted job: let each say where it was.
    faulthandler.register(signal.SIGTERM, file=sys.stderr, all_threads=True, chain=True)


class Watchdog:
    """Aborts the job when this rank makes no progress for ``timeout`` seconds."""

    def __init__(self, describe, timeout: float, dump_on_sigterm: bool = True):
        self.describe, self.timeout = describe, timeout
        self.last = time.monotonic()
        self.where = "start-up"
        self._armed = not dump_on_sigterm  # SIGTERM may be a checkpoint signal instead
        self._stop = threading.Event()
        self._thread = None
        if timeout and timeout > 0:
            self._thread = threading.Thread(target=self._run, name="hvams-watchdog", daemon=True)
            self._thread.start()

    def beat(self, where: str) -> None:
        self.last = time.monotonic()
        self.where = where

    def running(self, where: str) -> None:
        """A beat after an exchange every rank took part in: the job is past start-up."""
        self.beat(where)
        if not self._armed:  # from here on a SIGTERM dumps this rank's stacks
            self._armed = True
            _dump_stacks_on_sigterm()

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout / 4)):
            idle = time.monotonic() - self.last
            if idle > self.timeout:
                sys.stderr.write(
                    f"hvams: {self.describe()} made no progress for {idle:.0f} s in {self.where}: "
                    "a peer rank is gone or stuck; aborting the job\n")
                _abort(1)

    def stop(self) -> None:
        self._stop.set()


def maybe_inject_fault(rank: int, step: int, where: str = "step") -> None:
    """Fail this rank at ``step`` if ``HVAMS_FAULT`` says so (tests only).

    ``rank:R:step:N:kind`` fires at the start of training step N;
    ``rank:R:ckpt:N:kind`` fires halfway through writing checkpoint N;
    ``rank:R:eval:N:kind`` at the start of the evaluation at step N.
    """
    spec = os.environ.get("HVAMS_FAULT")
    if not spec:
        return
    parts = spec.split(":")
    if len(parts) != 5 or parts[0] != "rank" or parts[2] not in ("step", "ckpt", "eval"):
        raise ValueError(f"HVAMS_FAULT must look like rank:R:step|ckpt|eval:N:raise|kill|hang|pause, "
                         f"not {spec!r}")
    if int(parts[1]) != rank or parts[2] != where or int(parts[3]) != step:
        return
    if parts[4] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if parts[4] == "hang":
        time.sleep(10 ** 6)
    if parts[4] == "pause":
        from .preemption import STOP

        print(f"hvams: test fault: rank {rank} (pid {os.getpid()}) paused at {where} {step} "
              "until a checkpoint signal", flush=True)
        end = time.monotonic() + 120
        while not STOP.signum and time.monotonic() < end:
            time.sleep(0.02)
        return
    raise RuntimeError(f"injected fault at step {step} (HVAMS_FAULT)")
