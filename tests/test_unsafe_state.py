"""A pickle that would run code, planted in a checkpoint, a warm-start run and an export
source, is refused with a clear error, and its code never runs (weights_only loading)."""
import json
import sys

import pytest
import torch

from hvams.train import checkpoint as ckpt
from mpi_harness import run_job, run_train, train_ok


class Payload:
    """Unpickling this calls open(marker, "w"): the proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def planted(tiny_world, tmp_path_factory):
    """A finished run whose newest checkpoint's dense.pt is a malicious pickle (manifest
    updated, so the checkpoint still counts as complete)."""
    base = tmp_path_factory.mktemp("unsafe")
    run = base / "run"
    train_ok(2, tiny_world, run, timeout=180, servers=1, model="idonly", batch_size=32,
             max_steps=2)
    d = ckpt.latest_complete(run)
    marker = base / "PWNED"
    torch.save({"model": Payload(marker)}, d / "dense.pt")
    manifest = json.loads((d / ckpt.MANIFEST).read_text())
    manifest["files"]["dense.pt"] = ckpt.checksum(d / "dense.pt")
    (d / ckpt.MANIFEST).write_text(json.dumps(manifest))
    assert ckpt.latest_complete(run) == d
    return run, marker


def test_loader_refuses_without_running_the_code(planted):
    run, marker = planted
    with pytest.raises(ckpt.UnsafeStateError, match="refused to load"):
        ckpt.load_torch(ckpt.latest_complete(run) / "dense.pt")
    assert not marker.exists()


def _train(world, out, **keys):
    return run_train(2, world, out, timeout=180, servers=1, model="idonly", batch_size=32,
                     max_steps=4, **keys)


def test_resume_from_a_planted_checkpoint_is_refused(tiny_world, planted):
    run, marker = planted
    res = _train(tiny_world, run, resume=True)
    assert res.returncode != 0 and not res.timed_out
    assert "UnsafeStateError" in res.output and "refused to load" in res.output
    assert "Traceback" not in res.output, res.output[-3000:]
    assert not marker.exists()


def test_warm_start_from_a_planted_run_is_refused(tiny_world, planted, tmp_path):
    run, marker = planted
    res = _train(tiny_world, tmp_path / "new", warm_start=run)
    assert res.returncode != 0 and not res.timed_out
    assert "refused to load" in res.output and "Traceback" not in res.output, res.output[-3000:]
    assert not marker.exists()


def test_export_of_a_planted_run_is_refused(planted, tmp_path):
    run, marker = planted
    res = run_job([sys.executable, "-m", "cli", "export", str(run), "--out", str(tmp_path / "x")],
                  timeout=120)
    assert res.returncode == 2, res.output
    assert "hvams: error:" in res.output and "refused to load" in res.output
    assert "Traceback" not in res.output and not marker.exists()
