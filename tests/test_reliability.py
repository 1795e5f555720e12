"""Crash-safe checkpoints, re-sharding, counters that add up, determinism."""
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hvams.train.checkpoint import is_complete, latest_complete
from mpi_harness import metrics_of, run_train, same_checkpoint, train_ok

K = 3


def _train(world, out, servers, steps, model="din", workers=2, **keys):
    return run_train(servers + workers, world, out, servers=servers, model=model,
                     sparse_optimizer="adam", batch_size=40, max_steps=steps, **keys)


@pytest.fixture(scope="module")
def straight(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    res = _train(tiny_world, out, 2, 3 * K, checkpoint_every=K)
    assert res.returncode == 0, res.output[-3000:]
    return out


@pytest.mark.parametrize("fault", [f"rank:1:ckpt:{2 * K}:kill", f"rank:3:step:{K + 2}:kill"])
def test_crash_then_resume_equals_straight(tiny_world, tmp_path, straight, fault):
    out = tmp_path / "run"
    res = _train(tiny_world, out, 2, 3 * K, checkpoint_every=K, env={"HVAMS_FAULT": fault})
    assert res.returncode != 0 and not res.timed_out
    assert latest_complete(out).name == f"ckpt-{K:08d}"
    if ":ckpt:" in fault:  # the half-written checkpoint exists but is not complete
        torn = out / f"ckpt-{2 * K:08d}"
        assert torn.exists() and not is_complete(torn)
    res = _train(tiny_world, out, 2, 3 * K, checkpoint_every=K, resume=True)
    assert res.returncode == 0, res.output[-3000:]
    assert f"latest complete checkpoint is ckpt-{K:08d}" in res.output
    same_checkpoint(out, straight)


def test_corrupted_checkpoint_file_is_skipped(tiny_world, tmp_path, straight):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    last = latest_complete(run)
    with open(last / "server-0.npz", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00garbage\x00")
    assert latest_complete(run).name == f"ckpt-{2 * K:08d}"


@pytest.mark.parametrize("model", ["din", "dicm"])
@pytest.mark.parametrize("before,after", [(2, 3), (3, 1)])
def test_resharding_keeps_predictions(tiny_world, tmp_path, before, after, model):
    out = tmp_path / "run"
    res = _train(tiny_world, out, before, 2 * K, model=model)
    assert res.returncode == 0, res.output[-3000:]
    first = metrics_of(out)[-1]
    res = _train(tiny_world, out, after, 2 * K, resume=True, model=model)
    assert res.returncode == 0, res.output[-3000:]
    second = metrics_of(out)[-1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["servers"] == after and summary["steps"] == 0
    for key in ("auc", "gauc", "logloss", "new_ad_auc"):
        assert first[key] == second[key], (key, first[key], second[key])
    # every key landed on exactly one new owner: row counts add up to the old total
    old_rows = sum(np.load(f)["item/keys"].shape[0] for f in (latest_complete(out)).glob("server-*.npz")
                   if int(f.stem.split("-")[1]) < before)
    assert sum(r["item"] for r in summary["server_rows"]) == old_rows


def _bad_rows_world(tiny_world, tmp_path):
    world = tmp_path / "world"
    shutil.copytree(tiny_world, world)
    day = sorted(world.glob("day=00/part-*.parquet"))[0]
    t = pq.ParquetFile(day).read()
    click = t["click"].to_pylist()
    ads = t["ad_id"].to_pylist()
    for r in (5, 77, 300):
        click[r] = 3
    ads[123] = -9
    t = t.set_column(t.schema.get_field_index("click"), "click", pa.array(click, t["click"].type))
    t = t.set_column(t.schema.get_field_index("ad_id"), "ad_id", pa.array(ads, t["ad_id"].type))
    pq.write_table(t, day, row_group_size=512)
    return world


def test_counters_add_up_with_skipped_rows(tiny_world, tmp_path):
    world = _bad_rows_world(tiny_world, tmp_path)
    res = run_train(3, world, tmp_path / "bad", servers=1, batch_size=100)
    assert res.returncode != 0 and "row 5, field 'click': label outside {0, 1}" in res.output
    s, _ = train_ok(3, world, tmp_path / "run", servers=1, batch_size=100, on_bad_row="skip")
    rows = s["rows"]
    assert rows["read"] == 4000 and rows["rejected"] == 4 and rows["trained"] == 3996
    assert rows["read"] == rows["trained"] + rows["rejected"] and rows["not_trained"] == 0
    assert rows["rejected_by_reason"] == {"label outside {0, 1}": 3, "negative id": 1}


def test_same_seed_same_metrics(tiny_world, tmp_path):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        summary, _ = train_ok(4, tiny_world, out, servers=2, model="dicm", batch_size=64)
        runs.append(((out / "metrics.jsonl").read_text(), summary["losses"]))
    assert runs[0] == runs[1]


def test_the_rows_line_adds_up_when_a_run_stops_early():
    """Readers read ahead: a run stopped by max_steps read rows it never trained, and the
    summary's rows line says so instead of an equation that does not hold."""
    from hvams.train.report import format_bytes_table

    base = {"model": "idonly", "strategy": "ams", "servers": 1, "workers": 2, "steps": 3,
            "samples": 600, "elapsed_s": 1.0, "samples_per_s": 600.0, "bytes": {"control": 10}}
    full = format_bytes_table({**base, "rows": {"read": 604, "trained": 600, "rejected": 4,
                                                "rejected_by_reason": {"negative id": 4},
                                                "not_trained": 0}})
    assert "rows: read 604 = trained 600 + rejected 4 {'negative id': 4}" in full
    assert "not trained" not in full
    early = format_bytes_table({**base, "rows": {"read": 1024, "trained": 600, "rejected": 0,
                                                 "rejected_by_reason": {}, "not_trained": 424}})
    assert "rows: read 1024 = trained 600 + rejected 0 + read ahead, not trained 424" in early
