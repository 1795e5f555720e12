"""``allreduce_compression: fp16``: half the allreduce bytes, nearly the same training."""
import numpy as np
import pytest

from mpi_harness import run_train, train_ok

from hvams.protocol.compression import Compression


def test_wire_bytes_count_fp16_as_two_bytes():
    import torch

    ts = [torch.zeros(10), torch.zeros(3, dtype=torch.float64), torch.zeros(4, dtype=torch.int64)]
    assert Compression("none").allreduce_bytes(ts) == 40 + 24 + 32
    assert Compression("fp16").allreduce_bytes(ts) == 20 + 6 + 32


def _run(world, out, compression):
    return train_ok(4, world, out, local=True, model="dicm", servers=2, batch_size=64, max_steps=5,
                    backbone_weights=world / "backbone" / "small-cnn.pt",
                    allreduce_compression=compression)[0]


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


# --- row_compression: rows and row gradients between servers and workers ---

from hvams.protocol.wire import WireOverflow, from_wire, grad_scale, to_wire


def test_fp16_on_the_wire_narrows_floats_only():
    assert Compression.FP16.row_dtype(np.float32) == np.float16
    assert Compression.FP16.row_dtype(np.float64) == np.float16
    assert Compression.FP16.row_dtype(np.uint8) == np.uint8        # pixels stay exact
    assert Compression.NONE.row_dtype(np.float32) == np.float32


def test_scaled_gradients_survive_fp16_where_plain_ones_underflow():
    g = np.array([[2e-8, -2e-7, 1e-5]], np.float32)   # mean-loss gradients of a big batch
    n = 4096
    plain = from_wire(to_wire(g, np.float16, "gradients", "ad_id"), np.float32)
    assert plain[0, 0] == 0.0                          # below fp16's subnormals: lost
    assert grad_scale(np.float16, np.float32, n) == n
    back = from_wire(to_wire(g, np.float16, "gradients", "ad_id", scale=n), np.float32) / n
    np.testing.assert_allclose(back, g, rtol=1e-3)


def test_a_value_too_large_for_fp16_names_the_channel():
    rows = np.array([[1.0, 7e4]], np.float32)
    with pytest.raises(WireOverflow, match="rows of channel 'ad_id'.*row_compression: none"):
        to_wire(rows, np.float16, "rows", "ad_id")
    assert to_wire(rows, np.float32, "rows", "ad_id") is rows        # exact mode: no copy, no check


def _run_rows(world, out, compression, steps=5, **keys):
    return train_ok(4, world, out, local=True, model="dicm", servers=2, batch_size=64,
                    max_steps=steps, backbone_weights=world / "backbone" / "small-cnn.pt",
                    row_compression=compression, **keys)[0]


ROW_CATEGORIES = ("id_rows", "id_grads", "image_payload", "image_grads")


def test_fp16_rows_halve_the_row_bytes_and_train_alike(tiny_world, tmp_path):
    exact = _run_rows(tiny_world, tmp_path / "none", "none")
    half = _run_rows(tiny_world, tmp_path / "fp16", "fp16")
    for cat in ROW_CATEGORIES:
        assert exact["bytes"][cat] > 0, cat
        assert half["bytes"][cat] == pytest.approx(exact["bytes"][cat] / 2), cat
    for cat in ("id_keys", "image_keys", "allreduce_workers", "allreduce_servers"):
        assert half["bytes"][cat] == exact["bytes"][cat], cat
    # 11 significant bits per row and (scaled) gradient: the same training within a percent.
    np.testing.assert_allclose(half["losses"], exact["losses"], rtol=1e-2)


def test_fp16_rows_halve_store_in_server_features_not_pixels(tiny_world, tmp_path):
    frozen = {"strategy": "store-in-server", "freeze_backbone": True}
    exact = _run_rows(tiny_world, tmp_path / "none", "none", **frozen)
    half = _run_rows(tiny_world, tmp_path / "fp16", "fp16", **frozen)
    assert half["bytes"]["image_payload"] == pytest.approx(exact["bytes"]["image_payload"] / 2)
    np.testing.assert_allclose(half["losses"], exact["losses"], rtol=1e-2)
    pixels = _run_rows(tiny_world, tmp_path / "px", "fp16", strategy="store-in-server", steps=2)
    exact_px = _run_rows(tiny_world, tmp_path / "px0", "none", strategy="store-in-server", steps=2)
    assert pixels["bytes"]["image_payload"] == exact_px["bytes"]["image_payload"]


def test_rows_too_large_for_fp16_stop_the_job_with_a_clear_message(tiny_world, tmp_path):
    cfg = tmp_path / "big.yaml"
    cfg.write_text("init_scale: 100000.0\nrow_compression: fp16\n")  # rows beyond fp16's 65504
    res = run_train(2, tiny_world, tmp_path / "run", "--config", cfg, local=True, servers=1,
                    batch_size=64, max_steps=2)
    assert res.returncode != 0
    assert "do not fit fp16" in res.output and "row_compression: none" in res.output
    assert "Traceback" not in res.output
