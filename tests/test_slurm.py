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
