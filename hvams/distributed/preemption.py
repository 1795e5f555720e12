"""Checkpoint and stop on the scheduler's signal: time limits, preemption, requeue.

A signal in ``checkpoint_signals`` only raises a flag on the rank that got it
(one rank or all: Slurm signals the batch shell, mpirun forwards SIGUSR1 to
every rank, Kubernetes signals each process). The flag travels in the next step
header (``Exchange.headers``), and every rank sees every rank's flag in the same
exchange, so all of them agree on the same step without a message of their own.
The workers then finish the step in flight, write a checkpoint of the step after
it, stop the servers, and every rank exits with ``REQUEUE_EXIT``. A second signal
only raises the raised flag again: the checkpoint in progress is written as any
other (temporary names, renames, the manifest last).

The launcher (``hvams train --local/--launch``) forwards its own checkpoint
signals to mpirun as SIGUSR1 or SIGUSR2, which mpirun passes on to every rank;
a SIGTERM sent to mpirun itself kills the job.
"""
from __future__ import annotations

import signal
import sys

REQUEUE_EXIT = 42  # "checkpointed on a signal: resume me" (cluster/slurm/train.sbatch requeues)


class StopFlag:
    """This process's checkpoint signal, and whether the job agreed to stop on one."""

    def __init__(self):
        self.signum = 0            # the first checkpoint signal this rank got (0: none)
        self.agreed = False        # some rank's flag came back in a step header
        self.agreed_step = None    # the step of that header
        self.ranks: list[int] = []  # the ranks whose flag it carried
        self.names: list[str] = []  # and their signals

    def install(self, names) -> None:
        """Raise the flag on each signal of ``names`` (SIGUSR1, SIGUSR2, SIGTERM)."""
        for name in names:
            signal.signal(getattr(signal, name), self._raise)

    def _raise(self, signum, frame) -> None:
        # no printing here: a write interrupted by this handler may not be re-entered
        if not self.signum:
            self.signum = signum

    def observe(self, flags, step: int) -> None:
        """The flags (one signal number per source rank) of a completed header exchange."""
        if self.agreed or not any(flags):
            return
        self.agreed, self.agreed_step = True, step
        self.ranks = [r for r, f in enumerate(flags) if f]
        self.names = sorted({signal.Signals(int(flags[r])).name for r in self.ranks})

    def describe(self) -> str:
        ranks = self.ranks if len(self.ranks) <= 8 else f"{len(self.ranks)} ranks"
        return f"{'/'.join(self.names)} on rank(s) {ranks}"


STOP = StopFlag()  # one per process, as signal handlers are


class Forwarder:
    """The launcher's side: each checkpoint signal it gets goes to ``proc`` (mpirun) as one
    that mpirun passes on to every rank (SIGUSR1 or SIGUSR2, the first configured). Until
    ``ready()`` (every rank has its handlers: the job's topology is written), a signal is
    held and sent then, so a signal at start-up does not kill a rank still importing."""

    def __init__(self, proc, names, ready):
        self.proc, self.ready, self.pending = proc, ready, False
        self.relay = next((getattr(signal, n) for n in names if n in ("SIGUSR1", "SIGUSR2")),
                          None)
        if self.relay is None:
            return  # nothing mpirun would pass on: the ranks' own handlers are the only path
        for name in names:
            signal.signal(getattr(signal, name), self._handler)

    def _handler(self, signum, frame) -> None:
        sys.stderr.write(f"hvams: {signal.Signals(signum).name}: asking every rank to "
                         f"checkpoint at the next step and exit {REQUEUE_EXIT}\n")
        self.pending = True
        self.poll()

    def poll(self) -> None:
        """Send a held signal once the ranks are ready (the launcher calls this per line)."""
        if self.pending and self.proc.poll() is None and self.ready():
            self.pending = False
            self.proc.send_signal(self.relay)
