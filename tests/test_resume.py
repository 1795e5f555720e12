"""N steps, resume, N more == 2N straight, bit for bit; checkpoints are complete."""

from hvams.train.checkpoint import is_complete, latest_complete, load_manifest
from mpi_harness import same_checkpoint, train_ok

N = 4


def _train(data, out, steps, **keys):
    return train_ok(4, data, out, timeout=240, servers=2, model="din", sparse_optimizer="adam",
                    batch_size=48, max_steps=steps, **keys)


def test_resume_is_bit_exact(tiny_world, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    full = _train(tiny_world, straight, 2 * N, checkpoint_every=N)[0]["losses"]
    stopped = _train(tiny_world, split, N)[0]
    first = stopped["losses"]
    summary, res = _train(tiny_world, split, 2 * N, resume=True)
    assert f"latest complete checkpoint is ckpt-{N:08d}" in res.output
    assert "resuming from" in res.output and f"at step {N}" in res.output
    second = summary["losses"]
    # the rows add up: the stopped run read ahead, the resumed one re-read what it skipped
    rows, again = stopped["rows"], summary["rows"]
    assert rows["trained"] == again["trained"] == N * 48 * 2 and rows["resumed"] == 0
    assert rows["not_trained"] > 0 and again["resumed"] == N * 48 * 2
    for r in (rows, again):
        assert r["read"] == r["trained"] + r["rejected"] + r["resumed"] + r["not_trained"]
    assert f"resumed past {N * 48 * 2} (trained before the restart)" in res.output
    assert first + second == full          # exact float equality, step by step
    a, b = latest_complete(straight), latest_complete(split)
    assert a.name == b.name == f"ckpt-{2 * N:08d}"
    same_checkpoint(straight, split)
    # the mid-run checkpoint of the straight run is complete and says where it was
    mid = straight / f"ckpt-{N:08d}"
    assert is_complete(mid) and load_manifest(mid)["position"]["step"] == N
    assert set(load_manifest(mid)["files"]) == {"dense.pt", "server-0.npz", "server-1.npz"}


def test_a_backbone_scale_moved_from_1_is_refused_naming_it(tiny_world, tmp_path):
    """A trainable backbone has its own optimizer group exactly when backbone_lr_scale is not
    1: a resume (servers and workers load the saved optimizers) and an init_from (checked
    before start) that move it from 1 both stop with the key named, no traceback. Another
    non-1 scale continues."""
    from mpi_harness import run_train

    keys = dict(servers=2, model="dicm", batch_size=16, timeout=240)
    run = tmp_path / "run"
    train_ok(4, tiny_world, run, max_steps=2, backbone_lr_scale=0.5, **keys)
    ok, _ = train_ok(4, tiny_world, run, max_steps=3, backbone_lr_scale=0.25, resume=True, **keys)
    assert ok["steps"] == 1
    for how in ({"resume": True, "out": run}, {"init_from": run, "out": tmp_path / "next"}):
        out = how.pop("out")
        bad = run_train(4, tiny_world, out, max_steps=4, backbone_lr_scale=1.0, **how, **keys)
        assert bad.returncode == 2, bad.output[-3000:]
        assert "backbone_lr_scale" in bad.output and "Traceback" not in bad.output, \
            bad.output[-3000:]
