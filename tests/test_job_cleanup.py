"""A bench stopped by SIGTERM (``timeout``, Slurm, the device script's stage bounds) takes its
job with it: the job runs in a session of its own, out of reach of that signal."""
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


def test_a_bench_stopped_by_sigterm_kills_its_job(tmp_path):
    code = ("from pathlib import Path; from hvams.bench.jobs import run_logged; "
            f"run_logged(['sleep', '300'], Path({str(tmp_path)!r}), 600, 'sleep')")
    bench = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    deadline = time.time() + 60
    while not _children(bench.pid) and time.time() < deadline:
        time.sleep(0.2)
    (job,) = _children(bench.pid)
    assert os.getsid(job) == job != os.getsid(bench.pid)  # its own session
    bench.terminate()
    assert bench.wait(timeout=30) == 128 + 15
    deadline = time.time() + 10
    while Path(f"/proc/{job}").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{job}").exists(), "the job outlived the bench"
