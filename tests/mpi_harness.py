"""Run Python entry points under real ``mpirun``/``horovodrun`` from pytest.

Every job runs in its own process group and is killed whole on a timeout, so
a hung collective fails the test instead of stalling the suite.
"""
from __future__ import annotations

import os
import tempfile
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from hvams.distributed.launch import group_killed_on_exit, local_env, mpirun_command
from hvams.distributed.reports import read_reports

ROOT = Path(__file__).resolve().parents[1]
TAG = re.compile(r"^\[(\d+),(\d+)\]<(stdout|stderr)>:(.*)$")


@dataclass
class MPIResult:
    """Exit status and per-rank output of one multi-rank job."""

    returncode: int
    output: str
    timed_out: bool

    def rank_lines(self, rank: int, stream: str | None = None) -> list[str]:
        lines = []
        for line in self.output.splitlines():
            m = TAG.match(line)
            if m and int(m.group(2)) == rank and (stream is None or m.group(3) == stream):
                lines.append(m.group(4))
        return lines

    report_dir: str | None = None

    def reports(self, name: str) -> dict[int, dict]:
        """The JSON report ``name`` each rank wrote (see hvams.distributed.reports)."""
        return read_reports(self.report_dir, name) if self.report_dir else {}


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(local_env())
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def run_job(cmd: list[str], timeout: float, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> MPIResult:
    """Run ``cmd`` in a new session; on timeout kill its whole process group.

    Ranks write reports to a fresh ``HVAMS_REPORT_DIR`` unless ``env`` names one.
    """
    env = dict(env or {})
    env.setdefault("HVAMS_REPORT_DIR", tempfile.mkdtemp(prefix="hvams-reports-"))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env(env), cwd=str(cwd or ROOT), start_new_session=True)
    with group_killed_on_exit(proc):   # also when pytest itself is stopped
        try:
            out, _ = proc.communicate(timeout=timeout)
            return MPIResult(proc.returncode, out, False, env["HVAMS_REPORT_DIR"])
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            return MPIResult(-9, out, True, env["HVAMS_REPORT_DIR"])


def run_mpi(np_: int, argv: list[str], timeout: float = 120, env: dict[str, str] | None = None,
            mpmd: list[tuple[int, dict[str, str]]] | None = None) -> MPIResult:
    """``mpirun -np np_ --oversubscribe argv`` with a hard timeout."""
    env = dict(env or {})
    env.setdefault("HVAMS_REPORT_DIR", tempfile.mkdtemp(prefix="hvams-reports-"))
    # -x carries the report dir to every rank, also across nodes.
    return run_job(mpirun_command(np_, argv, env=env, mpmd=mpmd, tag_output=True), timeout, env)


def run_horovodrun(np_: int, argv: list[str], timeout: float = 120,
                   env: dict[str, str] | None = None) -> MPIResult:
    """``horovodrun -np np_ -H localhost:np_ argv`` with a hard timeout."""
    horovodrun = shutil.which("horovodrun", path=str(Path(sys.executable).parent)) or "horovodrun"
    extra = dict(env or {})
    extra.setdefault("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
    cmd = [horovodrun, "-np", str(np_), "-H", f"localhost:{np_}", "--mpi",
           "--mpi-args=--oversubscribe --tag-output", *argv]
    return run_job(cmd, timeout, extra)


def py(module: str, *args: str) -> list[str]:
    """argv for ``python -m module args`` with the test interpreter."""
    return [sys.executable, "-m", module, *map(str, args)]


def train_argv(data, out, *extra, **keys) -> list[str]:
    """argv of ``python -m cli train --data DATA --out OUT`` with a flag per config key given
    (``batch_size=64`` -> ``--batch-size 64``; a boolean key's own flag for True/False; None
    is left out), then ``extra``. No progress bar unless ``progress=True``."""
    from dataclasses import fields

    from hvams.config import TrainConfig, flags_of, key_of

    keys.setdefault("progress", False)
    known = {f.name: f for f in fields(TrainConfig)}
    args = ["--data", data, "--out", out]
    for name, value in keys.items():
        f = known[name]
        if value is None:
            continue
        k = key_of(f)
        if k.on or k.off:
            flag = k.on if value else k.off
            if flag:
                args.append(flag)
            continue
        args += [flags_of(f)[0], value]
    return py("cli", "train", *args, *extra)


def run_train(ranks: int, data, out, *extra, timeout: float = 300, env=None, local=False,
              **keys) -> MPIResult:
    """``hvams train`` on ``ranks`` ranks: started by mpirun here, or with ``local=True`` by
    hvams itself (``--local``, as a user starts it)."""
    if local:
        return run_job(train_argv(data, out, "--local", ranks, *extra, **keys), timeout, env)
    return run_mpi(ranks, train_argv(data, out, *extra, **keys), timeout, env)


def train_ok(ranks: int, data, out, *extra, **kw) -> tuple[dict, MPIResult]:
    """``run_train`` that must succeed: (its summary.json, the job's result)."""
    import json

    res = run_train(ranks, data, out, *extra, **kw)
    assert res.returncode == 0 and not res.timed_out, res.output[-4000:]
    return json.loads((Path(out) / "summary.json").read_text()), res


def metrics_of(out) -> list[dict]:
    """The records of a run's metrics.jsonl."""
    import json

    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def final_checkpoint(run):
    """The newest complete checkpoint of a run: its directory, dense.pt, and every array of
    its server files by ``FILE:NAME``."""
    import numpy as np
    import torch

    from hvams.train.checkpoint import latest_complete

    d = latest_complete(run)
    dense = torch.load(d / "dense.pt", weights_only=False)
    arrays = {}
    for f in sorted(d.glob("server-*.npz")):
        with np.load(f) as z:
            arrays.update({f"{f.name}:{k}": z[k] for k in z.files})
    return d, dense, arrays


def same_checkpoint(a, b):
    """The newest complete checkpoints of runs ``a`` and ``b``: the same step, the same
    dense model and position, the same server arrays, bit for bit."""
    import numpy as np
    import torch

    (na, da, aa), (nb, db, ab) = final_checkpoint(a), final_checkpoint(b)
    assert na.name == nb.name
    for k in da["model"]:
        assert torch.equal(da["model"][k], db["model"][k]), k
    assert da["position"] == db["position"]
    assert aa.keys() == ab.keys()
    for k in aa:
        assert np.array_equal(aa[k], ab[k]), k


def same_model(a, b):
    """``same_checkpoint``, and the runs' final test metrics are equal."""
    same_checkpoint(a, b)
    ma, mb = metrics_of(a)[-1], metrics_of(b)[-1]
    assert (ma["auc"], ma["logloss"], ma["step"]) == (mb["auc"], mb["logloss"], mb["step"])
