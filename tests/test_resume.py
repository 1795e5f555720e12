"""N steps, resume, N more == 2N straight, bit for bit; checkpoints are complete."""
import numpy as np
import torch

from hvams.train.checkpoint import is_complete, latest_complete, load_manifest
from mpi_harness import train_ok

N = 4


def _train(data, out, steps, **keys):
    return train_ok(4, data, out, timeout=240, servers=2, model="din", sparse_optimizer="adam",
                    batch_size=48, max_steps=steps, **keys)


def _state(ckpt):
    dense = torch.load(ckpt / "dense.pt", weights_only=False)
    arrays = {}
    for path in sorted(ckpt.glob("server-*.npz")):
        with np.load(path) as z:
            arrays.update({f"{path.name}:{k}": z[k] for k in z.files})
    return dense, arrays


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
    (da, aa), (db, ab) = _state(a), _state(b)
    for k in da["model"]:
        assert torch.equal(da["model"][k], db["model"][k]), k
    assert da["position"] == db["position"]
    assert aa.keys() == ab.keys()
    for k in aa:
        assert np.array_equal(aa[k], ab[k]), k
    # the mid-run checkpoint of the straight run is complete and says where it was
    mid = straight / f"ckpt-{N:08d}"
    assert is_complete(mid) and load_manifest(mid)["position"]["step"] == N
    assert set(load_manifest(mid)["files"]) == {"dense.pt", "server-0.npz", "server-1.npz"}
