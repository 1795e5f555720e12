"""The distributed run equals the single-process reference (losses and parameters)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hvams.config import TrainConfig
from hvams.data.schema import Schema
from mpi_harness import py, run_mpi
from reference import Reference, global_batches

STEPS = 6


def _dist_state(run_dir: Path):
    summary = json.loads((run_dir / "summary.json").read_text())
    ckpt = sorted(run_dir.glob("ckpt-*"))[-1]
    dense = torch.load(ckpt / "dense.pt", weights_only=False)["model"]
    tables: dict[str, dict[int, np.ndarray]] = {}
    for path in ckpt.glob("server-*.npz"):
        with np.load(path) as z:
            for name in z.files:
                if name.endswith("/keys"):
                    t = name[:-5]
                    rows = z[f"{t}/rows"]
                    for i, k in enumerate(z[name]):
                        assert int(k) not in tables.setdefault(t, {}), "key on two servers"
                        tables[t][int(k)] = rows[i]
    return summary, dense, tables


def close(got, exp, what):
    """Relative tolerance 1e-5, measured against the tensor's scale.

    Servers sum a key's gradients per worker, then over workers; the reference
    sums them in another order. Adagrad/Adam divide by sqrt(sum g^2), which
    magnifies that float32 rounding on rows whose gradients nearly cancel, so
    an element near zero is compared at the scale of its tensor.
    """
    np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-5 * float(np.abs(exp).max()),
                               err_msg=what)


def train_args(data, out, servers, model="idonly", **extra):
    args = ["train", "--data", str(data), "--out", str(out), "--servers", str(servers),
            "--model", model, "--batch-size", "64", "--max-steps", str(STEPS), "--no-progress"]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return py("cli", *args)


@pytest.mark.parametrize("servers,workers,model,opt", [
    (1, 1, "idonly", "adagrad"), (2, 2, "idonly", "adagrad"), (1, 3, "din", "adam"),
    (3, 1, "din", "adagrad"), (2, 2, "din", "adam")])
def test_distributed_equals_reference(tiny_world, tmp_path, servers, workers, model, opt):
    out = tmp_path / "run"
    res = run_mpi(servers + workers, train_args(tiny_world, out, servers, model,
                                                sparse_optimizer=opt), timeout=240)
    assert res.returncode == 0, res.output[-4000:]
    summary, dense, tables = _dist_state(out)
    cfg = TrainConfig(data=str(tiny_world), model=model, batch_size=64, max_steps=STEPS,
                      sparse_optimizer=opt)
    schema = Schema.load(tiny_world)
    ref = Reference(cfg, schema, global_batches(cfg, schema, workers, STEPS))
    ref_losses = ref.train()
    assert summary["steps"] == STEPS and len(summary["losses"]) == STEPS
    np.testing.assert_allclose(summary["losses"], ref_losses, rtol=1e-5)
    for name, value in ref.model.state_dict().items():
        close(dense[name].numpy(), value.numpy(), name)
    for t in ref.keys:
        want = ref.table_rows(t)
        assert set(tables[t]) == set(want), t
        got = np.stack([tables[t][k] for k in sorted(want)])
        exp = np.stack([want[k] for k in sorted(want)])
        close(got, exp, t)
    # every server holds only the keys it owns
    assert len(summary["server_rows"]) == servers
