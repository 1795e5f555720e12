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
    dense = torch.load(ckpt / "dense.pt", weights_only=False)
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
    """Same parameters up to float32 noise.

    Workers sum gradients per worker and then over workers (Horovod, servers);
    the reference sums the global batch in one pass. The rounding differs at
    ~1e-7, and Adam/Adagrad divide by sqrt(sum g^2), which magnifies it on
    entries whose gradients nearly cancel. So each tensor is compared as a
    whole: relative error (Frobenius) <= 3e-5, and no element off by more than
    1e-3 of the tensor's scale. A real bug is far outside this:
    ``test_check_detects_a_one_percent_error`` shows a 1% learning-rate slip fails it.
    """
    got, exp = np.asarray(got, np.float64), np.asarray(exp, np.float64)
    scale = float(np.abs(exp).max()) or 1.0
    rel = float(np.linalg.norm(got - exp) / max(np.linalg.norm(exp), 1e-30))
    worst = float(np.abs(got - exp).max()) / scale
    assert rel <= 3e-5 and worst <= 1e-3, f"{what}: relative error {rel:.2e}, worst element {worst:.2e}"


def train_args(data, out, servers, model="idonly", batch=64, steps=STEPS, **extra):
    args = ["train", "--data", str(data), "--out", str(out), "--servers", str(servers),
            "--model", model, "--batch-size", str(batch), "--max-steps", str(steps), "--no-progress"]
    for k, v in extra.items():
        if v is True:
            args.append(f"--{k.replace('_', '-')}")
        else:
            args += [f"--{k.replace('_', '-')}", str(v)]
    return py("cli", *args)


def check_against_reference(world, out, workers, steps, summary, dense, tables, **cfg_kw):
    cfg = TrainConfig(data=str(world), max_steps=steps, **cfg_kw)
    return compare(cfg, workers, steps, summary, dense, tables)


def compare(cfg, workers, steps, summary, dense, tables):
    world = cfg.data
    schema = Schema.load(world)
    ref = Reference(cfg, schema, global_batches(cfg, schema, workers, steps))
    ref_losses = ref.train()
    assert summary["steps"] == steps and len(summary["losses"]) == steps
    np.testing.assert_allclose(summary["losses"], ref_losses, rtol=1e-5)
    for name, value in ref.model.state_dict().items():
        close(dense["model"][name].numpy(), value.numpy(), name)
    for t in ref.keys:
        want = ref.table_rows(t)
        assert set(tables[t]) == set(want), t
        got = np.stack([tables[t][k] for k in sorted(want)])
        exp = np.stack([want[k] for k in sorted(want)])
        close(got, exp, t)
    return ref


@pytest.mark.parametrize("servers,workers,model,opt", [
    (1, 1, "idonly", "adagrad"), (2, 2, "idonly", "adagrad"), (1, 3, "din", "adam"),
    (3, 1, "din", "adagrad"), (2, 2, "din", "adam")])
def test_distributed_equals_reference(tiny_world, tmp_path, servers, workers, model, opt):
    out = tmp_path / "run"
    res = run_mpi(servers + workers, train_args(tiny_world, out, servers, model,
                                                sparse_optimizer=opt), timeout=240)
    assert res.returncode == 0, res.output[-4000:]
    summary, dense, tables = _dist_state(out)
    check_against_reference(tiny_world, out, workers, STEPS, summary, dense, tables, model=model,
                            batch_size=64, sparse_optimizer=opt)
    assert len(summary["server_rows"]) == servers


def test_check_detects_a_one_percent_error(tiny_world, tmp_path):
    """Negative control: the comparison above fails for a reference 1% off."""
    out = tmp_path / "run"
    res = run_mpi(4, train_args(tiny_world, out, 2, "idonly"), timeout=240)
    assert res.returncode == 0, res.output[-4000:]
    summary, dense, tables = _dist_state(out)
    cfg = TrainConfig(data=str(tiny_world), max_steps=STEPS, model="idonly", batch_size=64)
    compare(cfg, 2, STEPS, summary, dense, tables)
    cfg.sparse_lr *= 1.01
    with pytest.raises(AssertionError):
        compare(cfg, 2, STEPS, summary, dense, tables)


IMG_STEPS = 4
# every strategy on every topology (mqap), every aggregator and din+img on (2, 2), and
# the frozen backbone with its feature cache on the servers and on the workers.
IMAGE_CASES = (
    [(s, w, "dicm", "mqap", strat, False) for strat in ("ams", "store-in-server", "store-in-worker")
     for s, w in ((1, 1), (2, 2), (1, 3), (3, 1))]
    + [(2, 2, "dicm", agg, "ams", False) for agg in ("attentive", "sum", "max", "concat")]
    + [(2, 2, "din+img", "mqap", "ams", False),
       (2, 2, "dicm", "mqap", "ams", True), (2, 2, "dicm", "mqap", "store-in-server", True)])


@pytest.mark.parametrize("servers,workers,model,agg,strategy,frozen", IMAGE_CASES)
def test_dicm_equals_reference(tiny_world, tmp_path, servers, workers, model, agg, strategy, frozen):
    out = tmp_path / "run"
    extra = {"aggregator": agg, "strategy": strategy}
    if frozen:
        extra["freeze_backbone"] = True
    res = run_mpi(servers + workers, train_args(tiny_world, out, servers, model, batch=32,
                                                steps=IMG_STEPS, **extra), timeout=300)
    assert res.returncode == 0, res.output[-4000:]
    summary, dense, tables = _dist_state(out)
    ref = check_against_reference(tiny_world, out, workers, IMG_STEPS, summary, dense, tables,
                                  model=model, batch_size=32, aggregator=agg, strategy=strategy,
                                  freeze_backbone=frozen)
    # the shared image model: identical on every rank that holds it, and equal to the reference
    ckpt = sorted(out.glob("ckpt-*"))[-1]
    state = (torch.load(ckpt / "image.pt", weights_only=False)["model"] if strategy == "ams"
             else dense["image_model"])
    for name, value in ref.image_model.state_dict().items():
        close(state[name].numpy(), value.numpy(), "image_model." + name)
    assert len(summary["images"]["model_sha256"]) == 1, summary["images"]["model_sha256"]
    img = summary["images"]
    assert img["missing"] == img["corrupt"] == 0
    assert img["requested"] == img["served"]
