"""A checkpoint signal mid-run: every rank stops at the same step, checkpoints, exits 42;
``--resume auto`` then finishes equal to an uninterrupted run, every row trained once."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hvams.distributed.preemption import REQUEUE_EXIT
from hvams.train.checkpoint import is_complete, latest_complete, load_manifest
from mpi_harness import _env, metrics_of, run_train, same_model, train_argv

AT = 20  # the step the job is held at until the signal comes (tiny: 25 steps a day)
KEYS = dict(servers=2, model="din", sparse_optimizer="adam", batch_size=40)


@pytest.fixture(scope="module")
def straight(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    res = run_train(4, tiny_world, out, timeout=240, **KEYS)
    assert res.returncode == 0, res.output[-3000:]
    return out


class Held:
    """A job started in its own session, held at step ``at`` (of training, or the start of
    the evaluation there) by rank ``rank``'s test fault until a checkpoint signal reaches
    that rank (``rank=None``: not held); its output goes to a file."""

    def __init__(self, cmd, log: Path, rank: int | None, at: int = AT, where: str = "step"):
        self.log, self.marker = log, f"paused at {where} {at} "
        env = _env({} if rank is None else {"HVAMS_FAULT": f"rank:{rank}:{where}:{at}:pause"})
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)

    def paused_pid(self, timeout=180) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in self.log.read_text().splitlines():
                if self.marker in line:
                    return int(line.split("(pid ")[1].split(")")[0])
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            time.sleep(0.2)
        raise AssertionError("the job never reached the held step:\n" + self.log.read_text())

    def wait(self, timeout=180) -> tuple[int, str, float]:
        t0 = time.monotonic()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise AssertionError("hung after the signal:\n" + self.log.read_text()[-3000:])
        return code, self.log.read_text(), time.monotonic() - t0


def _stopped_at(out, output, steps):
    assert f"every rank stops after {steps} steps" in output, output[-3000:]
    assert f"exit code {REQUEUE_EXIT}" in output
    last = latest_complete(out)
    assert last.name == f"ckpt-{steps:08d}" and is_complete(last)
    assert load_manifest(last)["position"]["step"] == steps
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_early"]["step"] == steps
    return summary


def test_sigterm_to_the_launcher_checkpoints_and_resume_auto_equals_straight(
        tiny_world, tmp_path, straight):
    out = tmp_path / "run"
    job = Held(train_argv(tiny_world, out, "--local", 4, **KEYS), tmp_path / "first.log", 2)
    job.paused_pid()
    os.kill(job.proc.pid, signal.SIGTERM)        # the launcher, as a scheduler would
    code, output, took = job.wait()
    assert code == REQUEUE_EXIT, output[-3000:]
    # mpirun passed it on to every rank; the held one's flag is in the next header
    assert "mpirun: Forwarding signal 10" in output and "SIGUSR1 on rank(s) [" in output
    first = _stopped_at(out, output, AT + 1)     # the step in flight finished, no more
    assert not (out / "metrics.jsonl").exists()  # stopped before the test evaluation
    res = run_train(4, tiny_world, out, "--resume", "auto", local=True, timeout=240, **KEYS)
    assert res.returncode == 0, res.output[-3000:]
    assert f"latest complete checkpoint is ckpt-{AT + 1:08d}" in res.output
    second = json.loads((out / "summary.json").read_text())
    whole = json.loads((straight / "summary.json").read_text())
    # every row once: nothing skipped, nothing trained twice, no step recomputed
    assert first["samples"] + second["samples"] == whole["samples"]
    assert first["steps"] + second["steps"] == whole["steps"]
    assert first["losses"] + second["losses"] == whole["losses"]
    same_model(out, straight)


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tiny_world, tmp_path):
    """SIGUSR1 reaches one worker only (twice: the second lands while the job stops); the
    others learn it from the step header. Under plain mpirun, delta checkpoints."""
    from hvams.distributed.launch import local_env, mpirun_command

    out = tmp_path / "run"
    argv = train_argv(tiny_world, out, checkpoint_mode="delta", checkpoint_every=8, **KEYS)
    job = Held(mpirun_command(4, argv, env=local_env()), tmp_path / "job.log", 3)
    pid = job.paused_pid()
    os.kill(pid, signal.SIGUSR1)
    time.sleep(0.05)
    os.kill(pid, signal.SIGUSR1)
    code, output, _ = job.wait()
    assert code == REQUEUE_EXIT, output[-3000:]
    assert "SIGUSR1 on rank(s) [3]" in output
    _stopped_at(out, output, AT + 1)
    assert load_manifest(latest_complete(out)).get("chain"), "a delta on the chain so far"


def test_a_signal_during_evaluation_stops_after_it(tiny_world, tmp_path):
    """The signal comes as the evaluation at step 10 starts: it runs to its end (its record
    is written), every rank stops there; the resumed run's metrics equal a straight run's."""
    keys = dict(KEYS, eval_every=10)
    straight, out = tmp_path / "straight", tmp_path / "run"
    res = run_train(4, tiny_world, straight, timeout=240, **keys)
    assert res.returncode == 0, res.output[-3000:]
    job = Held(train_argv(tiny_world, out, "--local", 4, **keys), tmp_path / "job.log", 3,
               at=10, where="eval")
    job.paused_pid()
    os.kill(job.proc.pid, signal.SIGUSR1)
    code, output, _ = job.wait()
    assert code == REQUEUE_EXIT, output[-3000:]
    _stopped_at(out, output, 10)
    assert [m["step"] for m in metrics_of(out)] == [10]
    res = run_train(4, tiny_world, out, "--resume", "auto", local=True, timeout=240, **keys)
    assert res.returncode == 0, res.output[-3000:]
    assert metrics_of(out) == metrics_of(straight)
    same_model(out, straight)


def test_a_signal_at_start_up_is_held_until_every_rank_can_take_it(tiny_world, tmp_path,
                                                                   straight):
    """SIGTERM reaches the launcher while its ranks are still importing: it holds the signal
    until every rank has its handlers, and the job stops after its first step."""
    out = tmp_path / "run"
    job = Held(train_argv(tiny_world, out, "--local", 4, **KEYS), tmp_path / "job.log", None)
    # mpirun started (the launcher's relay is installed before it); not any other child,
    # such as the ldconfig that a library lookup at import may run before the relay exists
    mpirun = lambda: subprocess.run(["pgrep", "-P", str(job.proc.pid), "mpirun"],  # noqa: E731
                                    capture_output=True, text=True).stdout.split()
    end = time.monotonic() + 60
    while not mpirun() and time.monotonic() < end:
        time.sleep(0.02)
    assert mpirun(), job.log.read_text()[-3000:]
    assert not (out / "topology.json").exists()  # no rank has started yet
    os.kill(job.proc.pid, signal.SIGTERM)
    code, output, _ = job.wait()
    assert code == REQUEUE_EXIT, output[-3000:]
    # sent once rank 0 wrote the topology: the ranks have not trained yet, or barely
    steps = int(output.split("every rank stops after ")[1].split()[0])
    assert 1 <= steps <= 3, output[-3000:]
    _stopped_at(out, output, steps)
    res = run_train(4, tiny_world, out, "--resume", "auto", local=True, timeout=240, **KEYS)
    assert res.returncode == 0, res.output[-3000:]
    same_model(out, straight)


def _signalled_at_once(argv: list[str]) -> list[str]:
    """``argv`` (a ``python -m cli ...`` command) as a process that sends itself SIGTERM
    right after importing ``cli``, before click, the config or any handler of its own."""
    code = ("import os, signal, sys; sys.argv = ['hvams', *sys.argv[1:]]; import cli; "
            "os.kill(os.getpid(), signal.SIGTERM); from cli.main import main; main()")
    assert argv[1:3] == ["-m", "cli"]
    return [argv[0], "-c", code, *argv[3:]]


def test_a_sigterm_in_the_launchers_first_second_still_exits_42(tiny_world, tmp_path):
    """A scheduler's SIGTERM while the launcher is still importing its command line: held
    from ``cli``'s first line, handed to the relay, and the job stops after its first steps."""
    out = tmp_path / "run"
    job = Held(_signalled_at_once(train_argv(tiny_world, out, "--local", 4, **KEYS)),
               tmp_path / "job.log", None)
    code, output, _ = job.wait()
    assert code == REQUEUE_EXIT, output[-3000:]
    assert "SIGTERM: asking every rank to checkpoint" in output
    steps = int(output.split("every rank stops after ")[1].split()[0])
    assert 1 <= steps <= 3, output[-3000:]
    _stopped_at(out, output, steps)


def test_an_early_signal_that_is_no_checkpoint_signal_keeps_its_default_action(tiny_world,
                                                                              tmp_path):
    """Held, then given back: without SIGTERM among ``checkpoint_signals`` the launcher dies
    of it as before; so does ``train --help`` (it never hands over); other commands do not
    hold signals at all."""
    cfg = tmp_path / "no-signals.yaml"
    cfg.write_text("checkpoint_signals: []\n")
    argvs = {"no checkpoint signal": train_argv(tiny_world, tmp_path / "run", "--local", 2,
                                                "--config", cfg, **KEYS),
             "help": [sys.executable, "-m", "cli", "train", "--help"],
             "another command": [sys.executable, "-m", "cli", "data", "--help"]}
    for case, argv in argvs.items():
        res = subprocess.run(_signalled_at_once(argv), capture_output=True, text=True,
                             env=_env({}), timeout=120)
        assert res.returncode == -signal.SIGTERM, (case, res.returncode, res.stderr[-2000:])
        assert "Traceback" not in res.stderr, case
    assert not (tmp_path / "run" / "topology.json").exists()   # no rank ever started


def test_a_signal_in_the_day_end_exchange_stops_before_the_day_ends(tiny_world, tmp_path,
                                                                   straight):
    """Held at step 25, the first day's last, empty exchange (25 steps a day): the job
    stops before DAY_END, and the resumed run ends that day (its rows age once)."""
    out = tmp_path / "run"
    job = Held(train_argv(tiny_world, out, "--local", 4, **KEYS), tmp_path / "job.log", 2,
               at=25)
    job.paused_pid()
    os.kill(job.proc.pid, signal.SIGTERM)
    code, output, _ = job.wait()
    assert code == REQUEUE_EXIT, output[-3000:]
    _stopped_at(out, output, 25)
    assert "day=00 ended" not in output
    res = run_train(4, tiny_world, out, "--resume", "auto", local=True, timeout=240, **KEYS)
    assert res.returncode == 0, res.output[-3000:]
    assert res.output.count("day=00 ended at step 25") == 1, res.output[-3000:]
    same_model(out, straight)
