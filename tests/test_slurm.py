"""The batch scripts on a real one-node Slurm (installed and started by the test)."""
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starting slurmctld/slurmd/munged needs root")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm")
    script = ROOT / "cluster/slurm/local-cluster.sh"
    res = subprocess.run(["bash", str(script), "start", str(state), "4"], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    env = dict(os.environ, SLURM_CONF=str(state / "slurm.conf"),
               PATH=f"{ROOT / '.venv/bin'}:{os.environ['PATH']}")
    yield env, state
    subprocess.run(["bash", str(script), "stop", str(state)], timeout=60)
    # the daemons we started are gone
    for d in ("slurmctld", "slurmd"):
        pid = (state / f"{d}.pid").read_text().strip() if (state / f"{d}.pid").exists() else None
        if pid:
            assert not Path(f"/proc/{pid}").exists() or _wait_gone(pid), d


def _wait_gone(pid):
    import time
    for _ in range(50):
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("launcher", ["mpirun", "srun"])
def test_sbatch_trains_tiny(slurm, tiny_world, tmp_path, launcher):
    env, state = slurm
    out = tmp_path / "run"
    env = dict(env, HVAMS_DATA=str(tiny_world), HVAMS_OUT=str(out), HVAMS_LAUNCHER=launcher,
               HVAMS_EXTRA="--batch-size 64")
    log = tmp_path / "job.out"
    res = subprocess.run(["sbatch", "--wait", "-o", str(log), str(ROOT / "cluster/slurm/train.sbatch")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    text = log.read_text() if log.exists() else ""
    assert res.returncode == 0, res.stdout + res.stderr + text[-3000:]
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics and metrics[-1]["n"] == 2000 and 0.5 < metrics[-1]["auc"] < 1
    assert json.loads((out / "summary.json").read_text())["steps"] > 0
    if launcher == "mpirun":  # then export + predict as a second job
        env2 = dict(env, HVAMS_RUN=str(out), HVAMS_TEST_DAY=str(tiny_world / "day=02"))
        res = subprocess.run(["sbatch", "--wait", "-o", str(tmp_path / "exp.out"),
                              str(ROOT / "cluster/slurm/export.sbatch")], cwd=ROOT, env=env2,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, (tmp_path / "exp.out").read_text()[-3000:]
        assert (out / "export" / "scores.parquet").exists()


def _job_field(env, job, name):
    out = subprocess.run(["scontrol", "show", "job", str(job)], env=env, capture_output=True,
                         text=True, timeout=30).stdout
    return next((w.split("=", 1)[1] for w in out.split() if w.startswith(name + "=")), None)


def _wait_for(what, timeout, poll=0.5):
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = what()
        if got:
            return got
        time.sleep(poll)
    return None


def test_signalled_job_checkpoints_requeues_resumes_and_equals_straight(slurm, tiny_world,
                                                                         tmp_path):
    """The batch shell gets SIGUSR1 (as --signal=B:USR1@180 sends it before the time limit;
    here scancel sends it at a step the test holds the job at): the ranks checkpoint and
    exit 42, the script requeues the job, its next run resumes and finishes, and the model
    equals an uninterrupted run's, bit for bit."""
    from mpi_harness import run_train, same_model

    env, _ = slurm
    keys = dict(servers=2, model="din", batch_size=40, placement="spread")
    straight = tmp_path / "straight"
    res = run_train(4, tiny_world, straight, timeout=240, **keys)
    assert res.returncode == 0, res.output[-3000:]
    out, log = tmp_path / "run", tmp_path / "job.out"
    env = dict(env, HVAMS_DATA=str(tiny_world), HVAMS_OUT=str(out), HVAMS_MODEL="din",
               HVAMS_EXTRA="--batch-size 40 --servers 2", HVAMS_FAULT="rank:2:step:20:pause")
    job = subprocess.run(["sbatch", "--parsable", "-o", str(log),
                          str(ROOT / "cluster/slurm/train.sbatch")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60).stdout.strip()
    text = lambda: log.read_text() if log.exists() else ""  # noqa: E731
    assert _wait_for(lambda: "paused at step 20" in text(), 180), text()[-3000:]
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, check=True, timeout=30)
    # back in the queue; it waits out its credential's lifetime (cred_expire, 10 s here)
    assert _wait_for(lambda: _job_field(env, job, "Restarts") == "1", 120), text()[-3000:]
    state = _wait_for(lambda: (s := _job_field(env, job, "JobState")) not in
                      ("PENDING", "RUNNING", "REQUEUED", "COMPLETING") and s, 300)
    output = text()
    assert state == "COMPLETED" and _job_field(env, job, "ExitCode") == "0:0", output[-4000:]
    assert "every rank stops after 21 steps" in output
    assert f"job {job} checkpointed on a signal: requeued" in output
    assert "(restart 1)" in output and "latest complete checkpoint is ckpt-00000021" in output
    runs = [ln for ln in output.splitlines() if ln.startswith("run: din")]
    assert len(runs) == 2 and "21 steps, 1680 samples" in runs[0] and \
        "29 steps, 2320 samples" in runs[1], runs
    same_model(out, straight)
