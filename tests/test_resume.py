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
    first = _train(tiny_world, split, N)[0]["losses"]
    summary, res = _train(tiny_world, split, 2 * N, resume=True)
    assert f"latest complete checkpoint is ckpt-{N:08d}" in res.output
    assert "resuming from" in res.output and f"at step {N}" in res.output
    second = summary["losses"]
    assert first + second == full          # exact float equality, step by step
    a, b = latest_complete(straight), latest_complete(split)
    assert a.name == b.name == f"ckpt-{2 * N:08d}"
    same_checkpoint(straight, split)
    # the mid-run checkpoint of the straight run is complete and says where it was
    mid = straight / f"ckpt-{N:08d}"
    assert is_complete(mid) and load_manifest(mid)["position"]["step"] == N
    assert set(load_manifest(mid)["files"]) == {"dense.pt", "server-0.npz", "server-1.npz"}
