"""The distributed run equals the single-process reference (losses and parameters)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hvams.config import TrainConfig
from hvams.data.schema import Schema
from mpi_harness import run_mpi, train_argv
from hvams.reference import OneProcess as Reference, global_batches

STEPS = 6
IMG_STEPS = 4
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
# Every equivalence case runs on the CPU (CI) and, where a GPU is visible, on CUDA.
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
# Bounds of ``close`` per precision: (relative Frobenius error, worst element / scale).
# bf16 rounds every matmul/conv input to 8 significant bits (relative 2^-9), so two runs
# that batch the same samples differently differ by ~1e-3 in activations; Adam then moves
# each weight by about lr per step whatever the gradient's size, and Adagrad's first step on
# an ID row is lr * g/|g| per element, so an element whose summed gradient is within bf16
# noise of zero moves by +-lr in one run and -+lr in the other. Measured on the CPU over
# seeds 0-4 (2+2 ranks, mqap, 4 steps): losses within 4.3e-4, worker and image models within
# 4.2e-3 (worst element 0.043), ID tables within 0.19 (worst 0.78). The bounds below leave a
# 2.5-7x margin; the ID tables are held to little more than "same keys, same ballpark",
# and the losses, which every parameter feeds, carry most of the bf16 test's power.
BOUNDS = {"fp32": (3e-5, 1e-3), "fp64": (1e-10, 1e-8), "bf16": (2e-2, 0.2),
          "bf16-ids": (0.5, 1.5)}
LOSS_RTOL = {"fp32": 1e-5, "fp64": 1e-12, "bf16": 3e-3}


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


def close(got, exp, what, precision="fp32"):
    """Same parameters up to float noise.

    Workers sum gradients per worker and then over workers (Horovod, servers);
    the reference sums the global batch in one pass. The rounding differs at
    ~1e-7, and Adam/Adagrad divide by sqrt(sum g^2), which magnifies it on
    entries whose gradients nearly cancel. So each tensor is compared as a
    whole: relative error (Frobenius) <= 3e-5, and no element off by more than
    1e-3 of the tensor's scale. A real bug is far outside this:
    ``test_check_detects_a_one_percent_error`` shows a 1% learning-rate slip fails it.
    In fp64 the noise is ~1e-16, and the bounds are 10^5 times tighter.
    """
    max_rel, max_worst = BOUNDS[precision]
    got, exp = np.asarray(got, np.float64), np.asarray(exp, np.float64)
    scale = float(np.abs(exp).max()) or 1.0
    rel = float(np.linalg.norm(got - exp) / max(np.linalg.norm(exp), 1e-30))
    worst = float(np.abs(got - exp).max()) / scale
    assert rel <= max_rel and worst <= max_worst, \
        f"{what}: relative error {rel:.2e}, worst element {worst:.2e} ({precision})"


def train_args(data, out, servers, model="idonly", batch=64, steps=STEPS, **extra):
    return train_argv(data, out, servers=servers, model=model, batch_size=batch, max_steps=steps,
                      **extra)


def check_against_reference(world, out, workers, steps, summary, dense, tables, **cfg_kw):
    cfg = TrainConfig(data=str(world), max_steps=steps, **cfg_kw)
    return compare(cfg, workers, steps, summary, dense, tables)


def compare(cfg, workers, steps, summary, dense, tables):
    world = cfg.data
    schema = Schema.load(world)
    ref = Reference(cfg, schema, global_batches(cfg, schema, workers, steps))
    ref_losses = ref.train()
    p = ref.rt.precision.name
    assert summary["steps"] == steps and len(summary["losses"]) == steps
    np.testing.assert_allclose(summary["losses"], ref_losses, rtol=LOSS_RTOL[p])
    for name, value in ref.model.state_dict().items():
        close(dense["model"][name].numpy(), value.cpu().numpy(), name, p)
    for t in ref.keys:
        want = ref.table_rows(t)
        assert set(tables[t]) == set(want), t
        got = np.stack([tables[t][k] for k in sorted(want)])
        exp = np.stack([want[k] for k in sorted(want)])
        close(got, exp, t, "bf16-ids" if p == "bf16" else p)
    return ref


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("servers,workers,model,opt", [
    (1, 1, "idonly", "adagrad"), (2, 2, "idonly", "adagrad"), (1, 3, "din", "adam"),
    (3, 1, "din", "adagrad"), (2, 2, "din", "adam")])
def test_distributed_equals_reference(tiny_world, tmp_path, servers, workers, model, opt, device):
    out = tmp_path / "run"
    res = run_mpi(servers + workers, train_args(tiny_world, out, servers, model,
                                                sparse_optimizer=opt, device=device,
                                                precision="fp32"), timeout=240)
    assert res.returncode == 0, res.output[-4000:]
    summary, dense, tables = _dist_state(out)
    check_against_reference(tiny_world, out, workers, STEPS, summary, dense, tables, model=model,
                            batch_size=64, sparse_optimizer=opt, device=device, precision="fp32")
    assert len(summary["server_rows"]) == servers


@pytest.mark.parametrize("model,agg,precision,knob", [
    ("idonly", "mqap", "fp32", "sparse_lr"),      # the ID path, fp32 bounds
    ("dicm", "max", "fp64", "image_lr")])         # the image path, fp64 bounds (max aggregator)
def test_check_detects_a_one_percent_error(tiny_world, tmp_path, model, agg, precision, knob):
    """Negative control: the comparison above fails for a reference 1% off."""
    out = tmp_path / "run"
    image = model == "dicm"
    batch, steps = (32, IMG_STEPS) if image else (64, STEPS)
    extra = {"aggregator": agg, "precision": precision} if image else {}
    res = run_mpi(4, train_args(tiny_world, out, 2, model, batch=batch, steps=steps, **extra),
                  timeout=240)
    assert res.returncode == 0, res.output[-4000:]
    summary, dense, tables = _dist_state(out)
    cfg = TrainConfig(data=str(tiny_world), max_steps=steps, model=model, batch_size=batch,
                      aggregator=agg, precision=precision)
    compare(cfg, 2, steps, summary, dense, tables)
    setattr(cfg, knob, getattr(cfg, knob) * 1.01)
    with pytest.raises(AssertionError):
        compare(cfg, 2, steps, summary, dense, tables)


# every strategy on every topology (mqap), every aggregator and din+img on (2, 2), and
# the frozen backbone with its feature cache on the servers and on the workers.
IMAGE_CASES = (
    [(s, w, "dicm", "mqap", strat, False) for strat in ("ams", "store-in-server", "store-in-worker")
     for s, w in ((1, 1), (2, 2), (1, 3), (3, 1))]
    + [(2, 2, "dicm", agg, "ams", False) for agg in ("attentive", "sum", "max", "concat")]
    + [(2, 2, "din+img", "mqap", "ams", False),
       (2, 2, "dicm", "mqap", "ams", True), (2, 2, "dicm", "mqap", "store-in-server", True)])


def precision_of(agg: str, frozen: bool) -> str:
    """fp64 where a gradient has a kink that float32 noise can cross.

    ``max`` routes each (sample, dim) gradient to the arg-max behavior, so float32 noise
    (~1e-7) between two near-tied behaviors can send a whole gradient to the other row; that is
    a discontinuity, not an error, and no bound on a smooth difference survives it (measured
    here: seeds 0, 1 and 5 of 0-6 broke the fp32 bound, by up to 450x). A trainable backbone's
    ReLUs (millions of pre-activations a step) are such switches too: one within noise of zero
    passes its gradient in one run and not in the other, and a flat image region repeats that
    pre-activation over many pixels. Measured on (2, 2) AMS mqap, seeds 0-3, pixels from the
    float and the uint8 resize: seven runs within 5e-7 of the reference, one (uint8, seed 0) at
    6.3e-5, past the fp32 bound; the same run in fp64 is within 1e-10. With float64 noise
    (~1e-16) a flip needs a tie closer than ~1e-15; the max seeds above stayed within 1.5e-13
    of the reference, and the fp64 bounds are 10^5 times tighter than fp32's. A frozen backbone
    passes no gradient through its ReLUs: fp32 there."""
    return "fp64" if agg == "max" or not frozen else "fp32"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("servers,workers,model,agg,strategy,frozen", IMAGE_CASES)
def test_dicm_equals_reference(tiny_world, tmp_path, servers, workers, model, agg, strategy, frozen,
                               device):
    out = tmp_path / "run"
    precision = precision_of(agg, frozen)
    extra = {"aggregator": agg, "strategy": strategy, "device": device, "precision": precision}
    if frozen:
        extra["freeze_backbone"] = True
    res = run_mpi(servers + workers, train_args(tiny_world, out, servers, model, batch=32,
                                                steps=IMG_STEPS, **extra), timeout=300)
    assert res.returncode == 0, res.output[-4000:]
    summary, dense, tables = _dist_state(out)
    ref = check_against_reference(tiny_world, out, workers, IMG_STEPS, summary, dense, tables,
                                  model=model, batch_size=32, aggregator=agg, strategy=strategy,
                                  freeze_backbone=frozen, device=device, precision=precision)
    # the shared image model: identical on every rank that holds it, and equal to the reference
    ckpt = sorted(out.glob("ckpt-*"))[-1]
    state = (torch.load(ckpt / "image.pt", weights_only=False)["model"] if strategy == "ams"
             else dense["image_model"])
    for name, value in ref.image_model.state_dict().items():
        close(state[name].numpy(), value.cpu().numpy(), "image_model." + name, precision)
    assert len(summary["images"]["model_sha256"]) == 1, summary["images"]["model_sha256"]
    check_images(summary)


@pytest.mark.parametrize("strategy", ["ams", "store-in-server"])
def test_true_attribute_ceiling_equals_reference(tiny_world, tmp_path, strategy):
    """The quality ceiling's image path (keys -> true attributes -> head) trains the same
    distributed as in one process: on the servers (AMS) and on the workers."""
    out = tmp_path / "run"
    extra = {"aggregator": "mqap", "strategy": strategy, "backbone": "true-attributes",
             "freeze_backbone": True, "precision": "fp32"}
    res = run_mpi(4, train_args(tiny_world, out, 2, "dicm", batch=32, steps=IMG_STEPS, **extra),
                  timeout=300)
    assert res.returncode == 0, res.output[-4000:]
    summary, dense, tables = _dist_state(out)
    ref = check_against_reference(tiny_world, out, 2, IMG_STEPS, summary, dense, tables,
                                  model="dicm", batch_size=32, aggregator="mqap", strategy=strategy,
                                  backbone="true-attributes", freeze_backbone=True, precision="fp32")
    state = ckpt_image_state(out) if strategy == "ams" else dense["image_model"]
    assert set(state) == set(ref.image_model.state_dict())  # the truth table is not state
    for name, value in ref.image_model.state_dict().items():
        close(state[name].numpy(), value.cpu().numpy(), "image_model." + name)
    assert summary["images"].get("decoded", 0) == 0  # no image was read or decoded


def check_images(summary):
    img = summary["images"]
    assert img["missing"] == img["corrupt"] == 0
    assert img["requested"] == img["served"]


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_equals_reference_within_bf16_bounds(tiny_world, tmp_path, device):
    """bf16 autocast (the CUDA default; CPU autocast here) against the one-process reference
    in bf16, within the bf16 bounds above."""
    out = tmp_path / "run"
    extra = {"aggregator": "mqap", "strategy": "ams", "device": device, "precision": "bf16"}
    res = run_mpi(4, train_args(tiny_world, out, 2, "dicm", batch=32, steps=IMG_STEPS, **extra),
                  timeout=300)
    assert res.returncode == 0, res.output[-4000:]
    summary, dense, tables = _dist_state(out)
    ref = check_against_reference(tiny_world, out, 2, IMG_STEPS, summary, dense, tables,
                                  model="dicm", batch_size=32, aggregator="mqap", strategy="ams",
                                  device=device, precision="bf16")
    image = ckpt_image_state(out)
    for name, value in ref.image_model.state_dict().items():
        close(image[name].numpy(), value.cpu().numpy(), "image_model." + name, "bf16")
    check_images(summary)


def ckpt_image_state(out):
    return torch.load(sorted(out.glob("ckpt-*"))[-1] / "image.pt", weights_only=False)["model"]


@pytest.mark.parametrize("strategy", ["ams", "store-in-server", "store-in-worker"])
def test_fine_tuning_scale_and_image_products_equal_reference(tiny_world, tmp_path, strategy):
    """A trainable backbone at a tenth of the head's learning rate (its own Adam group: on
    the servers under AMS, on the workers otherwise) and the tower's image
    products train the same distributed as in one process; a reference without the scale
    does not match (the option takes effect where the image model trains)."""
    out = tmp_path / "run"
    extra = {"aggregator": "mqap", "strategy": strategy, "precision": "fp64",
             "backbone_lr_scale": 0.1, "image_products": True}
    res = run_mpi(4, train_args(tiny_world, out, 2, "dicm", batch=32, steps=IMG_STEPS, **extra),
                  timeout=300)
    assert res.returncode == 0, res.output[-4000:]
    summary, dense, tables = _dist_state(out)
    cfg = TrainConfig(data=str(tiny_world), max_steps=IMG_STEPS, model="dicm", batch_size=32,
                      **extra)
    ref = compare(cfg, 2, IMG_STEPS, summary, dense, tables)
    state = ckpt_image_state(out) if strategy == "ams" else dense["image_model"]
    for name, value in ref.image_model.state_dict().items():
        close(state[name].numpy(), value.cpu().numpy(), "image_model." + name, "fp64")
    cfg.backbone_lr_scale = 1.0
    ref = Reference(cfg, Schema.load(tiny_world), global_batches(cfg, Schema.load(tiny_world),
                                                                 2, IMG_STEPS))
    ref.train()
    with pytest.raises(AssertionError):
        for name, value in ref.image_model.state_dict().items():
            close(state[name].numpy(), value.cpu().numpy(), "image_model." + name, "fp64")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("servers,workers,strategy", [(2, 2, "ams"), (1, 2, "store-in-worker")])
def test_channels_last_chunked_backbone_equals_reference(tiny_world, tmp_path, servers, workers,
                                                         strategy, device):
    """The image model channels_last, as on CUDA, on the CPU too: its convolution weights'
    gradients are then strided, which Horovod refuses ("Tensor is required to be
    contiguous"), so this job fails unless every gradient is made contiguous before the
    servers' (AMS) or the workers' (store-in-worker) allreduce. The trainable backbone also
    runs in chunks of 4 images, each recomputed in backward. Both equal the reference."""
    out = tmp_path / "run"
    extra = {"aggregator": "mqap", "strategy": strategy, "device": device, "precision": "fp64",
             "memory_format": "channels-last", "backbone_chunk": 4}
    res = run_mpi(servers + workers, train_args(tiny_world, out, servers, "dicm", batch=32,
                                                steps=IMG_STEPS, **extra), timeout=300)
    assert res.returncode == 0, res.output[-4000:]
    summary, dense, tables = _dist_state(out)
    ref = check_against_reference(tiny_world, out, workers, IMG_STEPS, summary, dense, tables,
                                  model="dicm", batch_size=32, aggregator="mqap",
                                  strategy=strategy, device=device, precision="fp64",
                                  memory_format="channels-last", backbone_chunk=4)
    assert ref.rt.channels_last and ref.embedder.chunk == 4
    state = ckpt_image_state(out) if strategy == "ams" else dense["image_model"]
    for name, value in ref.image_model.state_dict().items():
        close(state[name].numpy(), value.cpu().numpy(), "image_model." + name, "fp64")
    assert len(summary["images"]["model_sha256"]) == 1
    check_images(summary)
