"""A failing rank ends the whole job quickly, with a message naming rank, role and cause."""
import random
import time

import pytest

from mpi_harness import run_job, run_train, train_argv

STEP = random.Random(7).randint(2, 9)  # "a random step", fixed per run of the suite


def _local_train(world, out, fault, *extra, **keys):
    t0 = time.monotonic()
    res = run_train(4, world, out, *extra, local=True, timeout=120, env={"HVAMS_FAULT": fault},
                    servers=2, model="idonly", batch_size=32, **keys)
    return res, time.monotonic() - t0


@pytest.mark.parametrize("rank,role", [(1, "server 1"), (3, "worker 1")])
def test_sigkill_of_a_rank_ends_the_job(tiny_world, tmp_path, rank, role):
    res, elapsed = _local_train(tiny_world, tmp_path / "run", f"rank:{rank}:step:{STEP}:kill")
    assert not res.timed_out and res.returncode != 0, res.output[-3000:]
    assert elapsed < 30, f"took {elapsed:.1f} s"
    assert f"hvams: rank {rank} ({role}) on" in res.output and "died: signal 9" in res.output, \
        res.output[-3000:]


def test_exception_on_a_rank_ends_the_job(tiny_world, tmp_path):
    res, elapsed = _local_train(tiny_world, tmp_path / "run", f"rank:2:step:{STEP}:raise")
    assert res.returncode != 0 and elapsed < 30
    assert "rank 2/4 worker 0" in res.output and "RuntimeError: injected fault" in res.output


def test_watchdog_bounds_a_hang(tiny_world, tmp_path):
    # SIGTERM not a checkpoint signal: the ranks the launcher terminates dump their stacks
    conf = tmp_path / "run.yaml"
    conf.write_text("checkpoint_signals: [SIGUSR1]\n")
    res, elapsed = _local_train(tiny_world, tmp_path / "run", f"rank:0:step:{STEP}:hang",
                                "--config", conf, step_timeout=5)
    assert not res.timed_out and res.returncode != 0, res.output[-3000:]
    assert elapsed < 30, f"took {elapsed:.1f} s"
    assert "made no progress for" in res.output and "aborting the job" in res.output
    # the hung rank's Python stack (faulthandler) shows where it hung, before MPI_Abort
    assert "Python stacks of this rank before MPI_Abort" in res.output
    assert "(most recent call first)" in res.output and "maybe_inject_fault" in res.output, \
        res.output[-3000:]
    # and the other ranks' too (their own watchdogs, or the launcher's SIGTERM)
    assert res.output.count("Current thread 0x") >= 2, res.output[-3000:]


def _can_unshare_mounts() -> bool:
    import subprocess

    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _can_unshare_mounts(), reason="needs mount namespaces (root): unshare -m")
def test_a_run_directory_not_shared_by_every_host_is_named(tiny_world, tmp_path):
    """One rank (on fake host 'lonely') gets its own empty file system at OUT, as on a host
    without the shared disk: every rank stops at start-up, and the message names the key,
    the rank and its host."""
    from hvams.distributed.launch import mpirun_command

    out = tmp_path / "run"
    out.mkdir()
    argv = train_argv(tiny_world, out, servers=2, model="idonly", batch_size=32)
    cmd = mpirun_command(4, argv, mpmd=[(3, {}), (1, {"HVAMS_NODE": "lonely"})])
    last = len(cmd) - len(argv)  # the last group's argv: run it in a mount namespace of its own
    cmd[last:] = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs none "$0" && exec "$@"', str(out),
                  *argv]
    res = run_job(cmd, timeout=180)
    assert not res.timed_out and res.returncode != 0, res.output[-3000:]
    assert "config key 'out'" in res.output and "is not shared: ranks [3] on lonely" in res.output, \
        res.output[-3000:]
    assert "Traceback" not in res.output, res.output[-3000:]
    assert not (out / "summary.json").exists()  # nothing trained
