"""Run one training job for a benchmark: a local mpirun of ``hvams train``."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from dataclasses import replace
from pathlib import Path

from ..config import TrainConfig
from ..distributed.launch import local_env, mpirun_command, python_argv


class BenchError(RuntimeError):
    """A benchmark job failed; the message names the job and its log."""


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def train_job(cfg: TrainConfig, ranks: int, timeout: float) -> dict:
    """Run ``cfg`` on ``ranks`` local ranks; its summary.json and metrics.jsonl records.

    The run directory ``cfg.out`` is emptied first (metrics.jsonl appends).
    The job's output goes to ``RUN_DIR/job.log``; a failure or a timeout
    raises BenchError with the log's tail.
    """
    out = Path(cfg.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cfg = replace(cfg, progress=False).validate()
    cfg.save(out / "job-config.yaml")
    log = out / "job.log"
    cmd = mpirun_command(ranks, python_argv("cli", "train", "--config", str(out / "job-config.yaml")),
                         env=local_env())
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise BenchError(f"{out}: no result after {timeout:.0f} s; log {log}:\n{_tail(log)}")
    if code != 0:
        raise BenchError(f"{out}: hvams train exited {code}; log {log}:\n{_tail(log)}")
    summary = json.loads((out / "summary.json").read_text())
    metrics_path = out / "metrics.jsonl"
    metrics = ([json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
               if metrics_path.exists() else [])
    return {"summary": summary, "metrics": metrics, "out": str(out)}


def save_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
