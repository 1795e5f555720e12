"""The device script's dry run: its stages on the CPU at tiny sizes, with the outputs a lease
returns, so the script cannot rot between leases; the tables render from them."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_device_script_runs_every_stage_on_the_cpu_and_its_tables_render(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "HVAMS_GPU_WORK": str(tmp_path / "work"),
           "HVAMS_PY": sys.executable}
    res = subprocess.run(["bash", "scripts/gpu_session.sh", "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    log = (out / "session.log").read_text() if (out / "session.log").exists() else ""
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + log[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"versions.txt", "pytest.txt", "results.jsonl", "tables.md",
                                "planned.txt"} <= set(files), files
    assert "torch" in (out / "versions.txt").read_text()
    assert (out / "pytest.txt").read_text().startswith("3 passed"), (out / "pytest.txt").read_text()
    planned = (out / "planned.txt").read_text()
    assert [line.split()[0] for line in planned.splitlines()] == [
        "versions", "build", "tests", "speed", "rate"]
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["name"]) for r in recs] == [
        ("speed", "small-cnn-1x1"), ("speed", "small-cnn-2x2"),
        ("image-rate", "small-cnn-1x1 trainable"), ("image-rate", "small-cnn-2x2 trainable")]
    one, two = recs[0]["result"], recs[1]["result"]
    assert (one["servers"], one["workers"], two["servers"], two["workers"]) == (1, 1, 2, 2)
    assert set(one["median"]["trainable"]) == {"ams", "store-in-server", "store-in-worker",
                                               "one process"}
    assert set(two["median"]["trainable"]) == {"ams", "store-in-worker"}
    assert all(v > 0 for r in (one, two) for v in r["median"]["trainable"].values())
    for r in recs[2:]:
        assert r["result"]["images_per_s"] > 0 and r["result"]["stage_images_per_s"] > 0
    tables = (out / "tables.md").read_text()
    for heading in ("Samples/s per strategy", "dedup factor", "image stage against the raw rate",
                    "CUDA tests: `3 passed"):
        assert heading in tables, heading
    assert "| small-cnn-2x2 | small-cnn | 32 | trainable | 2 + 2 |" in tables
    # the renderer is a command of its own, on the same folder
    again = subprocess.run([sys.executable, "-m", "cli", "bench", "gpu-tables",
                            str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.strip() == tables.strip()
