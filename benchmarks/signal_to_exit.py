"""Seconds from a checkpoint signal to the job's exit, as `make demo` trains.

Starts ``hvams train --local 4 --servers 2`` on the demo world (the demo's settings), holds it
at step ``--at`` with the test fault ``pause`` (so the signal lands mid-run at a known step),
sends SIGTERM to ``hvams train``, and times until it exits (code 42): the step in flight, the
checkpoint, the stop, MPI's teardown.

    .venv/bin/python benchmarks/signal_to_exit.py --model idonly --model dicm --repeat 2
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def once(data: Path, model: str, at: int, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(ROOT / ".venv/bin/hvams"), "train", "--data", str(data), "--local", "4",
           "--servers", "2", "--batch-size", "128", "--no-progress", "--model", model,
           "--out", str(out)]
    if model in ("dicm", "din+img"):
        cmd += ["--backbone-weights", str(data / "backbone/small-cnn.pt"), "--freeze-backbone"]
    env = dict(os.environ, HVAMS_FAULT=f"rank:2:step:{at}:pause", OMP_NUM_THREADS="1")
    log = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
        while f"paused at step {at} " not in log.read_text():
            if proc.poll() is not None:
                raise SystemExit(f"the run ended before step {at}:\n{log.read_text()[-2000:]}")
            time.sleep(0.05)
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait()
        took = time.monotonic() - t0
    size = sum(f.stat().st_size for f in out.glob(f"ckpt-{at + 1:08d}/*"))
    return {"model": model, "signal_to_exit_s": round(took, 2), "exit": code,
            "checkpoint_mb": round(size / 1e6, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT / "data/demo")
    ap.add_argument("--model", action="append")
    ap.add_argument("--at", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "runs/bench/signal")
    args = ap.parse_args()
    for _ in range(args.repeat):
        for model in args.model or ["dicm"]:
            print(once(args.data, model, args.at, args.out / model), flush=True)


if __name__ == "__main__":
    main()
