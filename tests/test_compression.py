"""``allreduce_compression: fp16``: half the allreduce bytes, nearly the same training."""
import json

import numpy as np
import pytest

from mpi_harness import py, run_job

from hvams.distributed.compression import wire_bytes


def test_wire_bytes_count_fp16_as_two_bytes():
    import torch

    ts = [torch.zeros(10), torch.zeros(3, dtype=torch.float64), torch.zeros(4, dtype=torch.int64)]
    assert wire_bytes(ts, "none") == 40 + 24 + 32
    assert wire_bytes(ts, "fp16") == 20 + 6 + 32


def _run(world, out, compression):
    res = run_job(py("cli", "train", "--data", world, "--model", "dicm", "--servers", 2,
                     "--local", 4, "--batch-size", 64, "--max-steps", 5, "--no-progress",
                     "--backbone-weights", world / "backbone" / "small-cnn.pt",
                     "--allreduce-compression", compression, "--out", out), timeout=300)
    assert res.returncode == 0, res.output[-3000:]
    return json.loads((out / "summary.json").read_text())


def test_fp16_allreduce_halves_the_bytes_and_trains_alike(tiny_world, tmp_path):
    exact = _run(tiny_world, tmp_path / "none", "none")
    half = _run(tiny_world, tmp_path / "fp16", "fp16")
    for cat in ("allreduce_workers", "allreduce_servers"):  # trainable small-cnn on the servers
        assert exact["bytes"][cat] > 0
        assert half["bytes"][cat] == pytest.approx(exact["bytes"][cat] / 2)
    for cat in ("id_rows", "image_payload"):
        assert half["bytes"][cat] == exact["bytes"][cat]
    # fp16 rounds each gradient to 11 bits: the same training within a percent.
    np.testing.assert_allclose(half["losses"], exact["losses"], rtol=1e-2)
