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

import atexit
import os
import signal
import threading
import time

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
        ranks = (f"rank(s) {self.ranks}" if len(self.ranks) <= 8 else
                 f"{len(self.ranks)} ranks ({self.ranks[0]}, ..., {self.ranks[-1]})")
        return f"{'/'.join(self.names)} on {ranks}"


STOP = StopFlag()  # one per process, as signal handlers are


class EarlyHold:
    """``hvams train``'s checkpoint signals from its first module on (``cli/__init__``),
    before the config says which they are: for about a second, importing the command line
    and reading the config, a scheduler's SIGTERM would otherwise kill the launcher with
    143 instead of 42, and the job would not be requeued. ``hand_over`` gives the held
    signal to the real handlers; one they do not take gets its default action then."""

    SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGTERM")  # every CheckpointSignal

    def __init__(self):
        self.signum, self.active = 0, False

    def hold(self) -> None:
        for name in self.SIGNALS:
            signal.signal(getattr(signal, name), self._record)
        self.active = True
        atexit.register(self._deliver)  # a command that never hands over (--help, an error)

    def _record(self, signum, frame) -> None:
        if not self.signum:
            self.signum = signum

    def hand_over(self, taken) -> int:
        """Called once the handlers of the signals named in ``taken`` are installed: the
        others get their default action back; the held signal if they take it (0: none)."""
        if not self.active:
            return 0
        self.active = False
        for name in self.SIGNALS:
            if name not in taken and signal.getsignal(getattr(signal, name)) == self._record:
                signal.signal(getattr(signal, name), signal.SIG_DFL)
        held, self.signum = self.signum, 0
        if held and signal.Signals(held).name not in taken:
            os.kill(os.getpid(), held)  # its default action, as without the hold
            return 0
        return held

    def _deliver(self) -> None:
        if self.active and self.signum:
            self.active = False
            signal.signal(self.signum, signal.SIG_DFL)
            os.kill(os.getpid(), self.signum)


EARLY = EarlyHold()


class Forwarder:
    """The launcher's side: each checkpoint signal it gets goes to the launched mpirun as
    one that mpirun passes on to every rank (SIGUSR1 or SIGUSR2, the first configured).

    Installed before mpirun starts; a signal is held until ``ready()`` (every rank has its
    handlers: the job's topology is written), then sent, so that a signal at start-up
    does not kill a rank still importing torch."""

    def __init__(self, names, ready):
        self.ready, self.proc, self.pending, self.names = ready, None, False, list(names)
        self.relay = next((getattr(signal, n) for n in names if n in ("SIGUSR1", "SIGUSR2")),
                          None)
        if self.relay is None:
            return  # nothing mpirun would pass on: the ranks' own handlers are the only path
        for name in names:
            signal.signal(getattr(signal, name), self._handler)

    @property
    def taken(self) -> list[str]:
        """The signals this launcher takes (none when mpirun would pass none on)."""
        return [] if self.relay is None else list(self.names)

    def attach(self, proc) -> None:
        """The launcher process runs: a thread sends it each held signal once ready."""
        self.proc = proc
        if self.relay is not None:
            threading.Thread(target=self._relay, name="hvams-signal-relay", daemon=True).start()

    def _handler(self, signum, frame) -> None:
        # os.write: a second signal may interrupt this handler's own write
        os.write(2, f"hvams: {signal.Signals(signum).name}: asking every rank to checkpoint "
                    f"at the next step and exit {REQUEUE_EXIT}\n".encode())
        self.pending = True

    def _relay(self) -> None:
        while self.proc.poll() is None:
            if self.pending and self.ready():
                self.pending = False
                self.proc.send_signal(self.relay)
            time.sleep(0.05)
