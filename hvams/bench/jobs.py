"""Run one training job for a benchmark: a local mpirun of ``hvams train``."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

from ..config import TrainConfig
from ..distributed.launch import group_killed_on_exit, local_env, mpirun_command, python_argv


class BenchError(RuntimeError):
    """A benchmark job failed; the message names the job and its log."""

    user_error = True   # the log's tail says it all: reported without a traceback
    exit_code = 1       # a run failed
    what = "bench failed"


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# Keys that do not change a run's result: a finished run with the same config otherwise is reused.
# "out" is where the run was found, so a bench directory that was moved is still reused.
NOT_RESULT_KEYS = ("progress", "step_timeout", "log_every", "sync_stages", "out")


def timed_config(cfg: TrainConfig, steps: int, out: Path) -> TrainConfig:
    """``cfg`` for a bench run of ``steps`` training steps into ``out``: no evaluation or
    checkpoints, and enough passes that a day shorter than ``steps`` still gives them all."""
    return replace(cfg, max_steps=steps, epochs=max(cfg.epochs, steps), evaluate=False,
                   checkpoint_every=0, out=str(out))


def job_config(cfg: TrainConfig, timeout: float) -> TrainConfig:
    # A first step may legitimately take long (e.g. vgg16 features of every image on a CPU);
    # the job's own timeout bounds a hang, so the per-step watchdog only needs to outlast it.
    return replace(cfg, progress=False, sync_stages=True,
                   step_timeout=max(cfg.step_timeout, timeout)).validate()


def _result(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    metrics_path = out / "metrics.jsonl"
    metrics = ([json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
               if metrics_path.exists() else [])
    return {"summary": summary, "metrics": metrics, "out": str(out)}


def finished_run(cfg: TrainConfig, timeout: float) -> dict | None:
    """The result of an earlier, complete run of the same config in ``cfg.out``, if any."""
    out = Path(cfg.out)
    if not (out / "summary.json").exists() or not (out / "job-config.yaml").exists():
        return None
    import yaml

    old = yaml.safe_load((out / "job-config.yaml").read_text())
    new = job_config(cfg, timeout).to_dict()
    if any(old.get(k) != v for k, v in new.items() if k not in NOT_RESULT_KEYS):
        return None
    return _result(out)


def train_job(cfg: TrainConfig, ranks: int, timeout: float, reuse: bool = False,
              launch: list[str] | None = None, env: dict[str, str] | None = None) -> dict:
    """Run ``cfg`` on ``ranks`` local ranks (or with the launcher command line ``launch``,
    e.g. the fake cluster's mpirun, with ``env`` added to the environment); its
    summary.json and metrics.jsonl records.

    The run directory ``cfg.out`` is emptied first (metrics.jsonl appends), unless
    ``reuse`` and it holds a finished run of the same config (an interrupted bench resumes).
    The job's output goes to ``RUN_DIR/job.log``; a failure or a timeout
    raises BenchError with the log's tail.
    """
    if reuse:
        done = finished_run(cfg, timeout)
        if done is not None:
            print(f"  reusing the finished run in {cfg.out}", flush=True)
            return done
    out = Path(cfg.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cfg = job_config(cfg, timeout)
    cfg.save(out / "job-config.yaml")
    argv = python_argv("cli", "train", "--config", str((out / "job-config.yaml").resolve()))
    cmd = [*launch, *argv] if launch else mpirun_command(ranks, argv, env=local_env())
    run_logged(cmd, out, timeout, "hvams train", {**os.environ, **env} if env else None)
    return _result(out)


def run_logged(cmd: list[str], out: Path, timeout: float, what: str, env=None) -> None:
    """Run ``cmd`` with its output in ``out/job.log``; BenchError with the log's tail on a
    failure or after ``timeout`` seconds (the whole process group is killed)."""
    log = out / "job.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        with group_killed_on_exit(proc):
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                code = None
        if code is None:
            raise BenchError(f"{out}: no result after {timeout:.0f} s; log {log}:\n{_tail(log)}")
    if code != 0:
        raise BenchError(f"{out}: {what} exited {code}; log {log}:\n{_tail(log)}")


def save_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
