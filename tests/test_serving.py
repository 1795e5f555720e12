"""Export, predict, TensorBoard and warm start on a trained run."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from hvams.serve.export import export_run
from hvams.serve.predict import predict
from mpi_harness import train_ok


@pytest.fixture(scope="module")
def trained(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    tb = out.parent / "tb"
    train_ok(4, tiny_world, out, servers=2, model="dicm", batch_size=64, tensorboard=tb, log_every=5)
    return out, tb


def test_export_then_predict_reproduces_the_evaluation(trained, tiny_world, tmp_path):
    run, _ = trained
    m = export_run(run, tmp_path / "model", workers=2)
    assert m["image_counts"]["served"] == 510 and m["uses_images"]
    with np.load(tmp_path / "model" / "image_embeddings.npz") as z:
        assert z["rows"].shape == (510, 12)
    res = predict(tmp_path / "model", tiny_world / "day=02", tmp_path / "scores.parquet", 333)
    last = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][-1]
    for key in ("auc", "gauc", "logloss", "new_ad_auc"):
        assert abs(res["metrics"][key] - last[key]) < 1e-6, (key, res["metrics"][key], last[key])
    assert pq.read_table(tmp_path / "scores.parquet").num_rows == 2000
    assert res["counts"]["unknown_images"] == 0


def test_unknown_image_falls_back_and_is_counted(trained, tiny_world, tmp_path):
    run, _ = trained
    export_run(run, tmp_path / "model", workers=1)
    path = tmp_path / "model" / "image_embeddings.npz"
    with np.load(path) as z:
        keys, rows, missing = z["keys"], z["rows"], z["missing"]
    np.savez(path, keys=keys[::2], rows=rows[::2], missing=missing)  # forget half the images
    res = predict(tmp_path / "model", tiny_world / "day=02", tmp_path / "s.parquet")
    assert res["counts"]["unknown_images"] > 0 and res["rows"] == 2000


def test_tensorboard_event_file(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, tb = trained
    acc = EventAccumulator(str(tb))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("train/loss", "train/samples_per_s", "bytes_per_step/id_rows",
                "bytes_per_step/image_payload", "test/auc", "test/gauc", "test/new_ad_auc"):
        assert tag in tags, (tag, tags)
    losses = [e.value for e in acc.Scalars("train/loss")]
    assert len(losses) >= 3 and all(0 < v < 2 for v in losses)
    assert acc.Scalars("bytes_per_step/image_payload")[0].value > 0


def test_warm_start_loads_all_but_id_embeddings(trained, tiny_world, tmp_path):
    import torch

    run, _ = trained
    out = tmp_path / "warm"
    _, res = train_ok(3, tiny_world, out, servers=1, model="dicm", batch_size=64, max_steps=1,
                      warm_start=run)
    report = json.loads((out / "warm_start.json").read_text())
    src = torch.load(sorted(run.glob("ckpt-*"))[-1] / "dense.pt", weights_only=False)["model"]
    assert report["worker_model"]["loaded"] == sorted(src) and not report["worker_model"]["not_loaded"]
    assert "missing" in report["image_model"]["loaded"] and "head.0.weight" in report["image_model"]["loaded"]
    assert report["id_embeddings"].startswith("not loaded")
    assert "warm start from" in res.output


def test_predict_prints_no_warning_and_labels_the_model(trained, tiny_world, tmp_path):
    import subprocess
    import sys

    run, _ = trained
    export_run(run, tmp_path / "model", workers=1)
    res = subprocess.run([sys.executable, "-W", "always", "-m", "cli", "predict",
                          str(tmp_path / "model"), "--data", str(tiny_world / "day=02"),
                          "--out", str(tmp_path / "s.parquet")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "Warning" not in res.stderr, res.stderr
    row = next(ln for ln in res.stdout.splitlines() if ln.startswith("dicm"))
    assert int(row.split()[1]) > 0          # the checkpoint's step, not 0


def test_arriving_images_are_decoded_in_groups_bounded_by_their_pixels():
    """Small creatives share one decode-and-resize call; a large image, or one whose header
    does not read, goes alone; the groups cover every image once, in order."""
    import io

    from PIL import Image

    from hvams.serve.image_model import GROUP_PIXELS, _groups

    def png(w, h):
        buf = io.BytesIO()
        Image.new("RGB", (w, h), (200, 30, 30)).save(buf, format="PNG")
        return buf.getvalue()

    side = int(GROUP_PIXELS ** 0.5)
    blobs = [png(64, 64)] * 3 + [b"not an image"] + [png(64, 64), png(side, side + 1),
                                                      png(64, 64)]
    groups = list(_groups(blobs))
    assert groups == [(0, 3), (3, 4), (4, 5), (5, 6), (6, 7)], groups
    many = list(_groups([png(64, 64)] * 600))   # 600 x 4096 px: more than one group
    assert many[0] == (0, GROUP_PIXELS // 4096) and many[-1][1] == 600
    assert all(a == b for (_, a), (b, _) in zip(many, many[1:]))


def test_the_manifest_names_image_products_only_where_it_is_used():
    """An export written without --image-products stays readable by an hvams from before
    the option; one with it rebuilds the wider tower."""
    from hvams.config import TrainConfig
    from hvams.serve.export import MODEL_KEYS, model_config

    plain = model_config(TrainConfig(model="dicm"))
    assert "image_products" not in plain and set(plain) == set(MODEL_KEYS) - {"image_products"}
    assert model_config(TrainConfig(model="dicm", image_products=True))["image_products"] is True


def test_an_export_from_a_job_that_removes_its_checkpoint_meanwhile_reads_the_newer_one(
        trained, tmp_path, monkeypatch):
    """A job still writing checkpoints with keep_checkpoints removes the one being exported
    once its next is complete: the export reads that newer one instead; if that keeps
    happening, an error names the cause, and a file gone from a checkpoint that is still
    the newest is not taken for one."""
    import shutil

    from hvams.serve import export
    from hvams.serve.export_tables import ExportError
    from hvams.train.checkpoint import ckpt_dir, latest_complete

    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    plain = export_run(run, tmp_path / "plain", workers=1)
    read = export._tables

    def job_moves_on(d, *args):  # the job's next checkpoint is complete, then d is pruned
        step = int(d.name.split("-")[1])
        shutil.copytree(d, ckpt_dir(run, step + 1))
        shutil.rmtree(d)
        return read(d, *args)

    calls = []
    monkeypatch.setattr(export, "_tables", lambda d, *a: (calls.append(d.name), (
        job_moves_on if len(calls) == 1 else read)(d, *a))[1])
    m = export_run(run, tmp_path / "raced", workers=1)
    assert calls == [plain["checkpoint"], latest_complete(run).name] and \
        m["checkpoint"] != plain["checkpoint"]
    for name, digest in plain["files"].items():  # the same state, read from its newer copy
        if name.startswith("tables/"):
            assert m["files"][name] == digest, name
    monkeypatch.setattr(export, "_tables", job_moves_on)
    with pytest.raises(ExportError, match="removed while it was read, 3 times.*keep_checkpoints"):
        export_run(run, tmp_path / "never", workers=1)
    newest = latest_complete(run)
    monkeypatch.setattr(export, "_tables", lambda d, *a: (_ for _ in ()).throw(
        FileNotFoundError(d / "server-0.npz")))
    with pytest.raises(FileNotFoundError):
        export_run(run, tmp_path / "gone", workers=1)
    assert latest_complete(run) == newest
