"""Device selection, precision and host<->device transfer (hvams.runtime), on real MPI ranks."""
import sys

import numpy as np
import pytest
import torch

from hvams.config import TrainConfig
from hvams.runtime import (DeviceError, Runtime, gpu_index, resolve_device, resolve_precision,
                           role_runtime)
from mpi_harness import py, run_horovodrun, run_mpi

SMOKE = "hvams.distributed.smoke"
HAS_CUDA = torch.cuda.is_available()


def test_auto_cpu_and_cuda_resolve():
    assert resolve_device("cpu", 3, device_count=2) == torch.device("cpu")
    assert resolve_device("auto", 0, device_count=0) == torch.device("cpu")
    assert resolve_device("auto", 3, device_count=2) == torch.device("cuda", 1)
    assert resolve_device("cuda", 2, device_count=2) == torch.device("cuda", 0)
    assert resolve_device("auto").type == ("cuda" if HAS_CUDA else "cpu")


def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(DeviceError, match=r"config key 'device': 'cuda' was asked for, but this "
                                          r"machine has no usable CUDA GPU"):
        resolve_device("cuda", 0, device_count=0)
    with pytest.raises(DeviceError, match="'server_device'"):
        resolve_device("cuda", 0, key="server_device", device_count=0)
    with pytest.raises(DeviceError, match="must be one of"):
        resolve_device("tpu", 0, device_count=0)


def test_gpu_index_round_robin_over_a_nodes_gpus():
    assert [gpu_index(r, 2) for r in range(4)] == [0, 1, 0, 1]
    assert [gpu_index(r, 1) for r in range(3)] == [0, 0, 0]
    with pytest.raises(DeviceError):
        gpu_index(0, 0)


def test_role_overrides_and_precision():
    cfg = TrainConfig(data="-", device="cpu", server_device="cpu", precision="auto")
    assert role_runtime(cfg, "server").precision.name == "fp32"
    assert resolve_precision("auto", torch.device("cuda", 0)).autocast == torch.bfloat16
    assert resolve_precision("auto", torch.device("cpu")).name == "fp32"
    assert resolve_precision("fp64", torch.device("cpu")).dtype == torch.float64
    if not HAS_CUDA:
        bad = TrainConfig(data="-", device="cpu", worker_device="cuda")
        with pytest.raises(DeviceError, match="'worker_device'"):
            role_runtime(bad, "worker")
        assert role_runtime(bad, "server").device.type == "cpu"


def test_runtime_upload_download_round_trip():
    devices = ["cpu"] + (["cuda"] if HAS_CUDA else [])
    for dev in devices:
        rt = Runtime(torch.device(dev), resolve_precision("fp32", torch.device(dev)))
        host = np.arange(12, dtype=np.float32).reshape(3, 4)
        t = rt.upload(host)
        assert t.device.type == dev and t.dtype == torch.float32
        back = rt.download(t * 2, np.float64)
        assert back.dtype == np.float64 and np.array_equal(back, host * 2)
        assert rt.index(np.array([2, 0])).device.type == dev


def test_local_rank_from_the_shared_memory_split_on_two_fake_nodes():
    # Two nodes of two ranks (HVAMS_NODE splits the shared-memory communicator as
    # separate hosts would): local ranks 0,1,0,1, so with 2 GPUs a node's ranks take 0 and 1.
    res = run_mpi(4, py(SMOKE, 1, "block"), timeout=120,
                  mpmd=[(2, {"HVAMS_NODE": "node-a"}), (2, {"HVAMS_NODE": "node-b"})])
    assert res.returncode == 0, res.output
    recs = res.reports("smoke")
    assert [recs[r]["local_rank"] for r in range(4)] == [0, 1, 0, 1]
    assert [recs[r]["local_size"] for r in range(4)] == [2, 2, 2, 2]
    assert [gpu_index(recs[r]["local_rank"], 2) for r in range(4)] == [0, 1, 0, 1]


def test_local_rank_under_horovodrun():
    res = run_horovodrun(3, py(SMOKE, 1, "block"), timeout=150)
    assert res.returncode == 0, res.output
    recs = res.reports("smoke")
    assert sorted(rec["local_rank"] for rec in recs.values()) == [0, 1, 2]


@pytest.mark.skipif(HAS_CUDA, reason="checks the error on a machine without a GPU")
@pytest.mark.parametrize("command", [{"device": "cuda"}, {"server_device": "cuda"}, "info"],
                         ids=["train --device", "train --server-device", "info --device"])
def test_cli_cuda_without_gpu_exits_2(tiny_world, tmp_path, command):
    import subprocess

    from mpi_harness import train_argv

    argv = (py("cli", "info", "--device", "cuda") if command == "info" else
            train_argv(tiny_world, tmp_path / "run", **command))
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "hvams: error: config key" in res.stderr and "no usable CUDA GPU" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("path", ["device", "host"])
def test_strided_gradients_are_summed_over_a_process_set(path):
    """channels_last convolution weights have strided gradients: Horovod's grouped allreduce
    refuses them as they are; ``GradientReducer`` sums them right, in their own layout."""
    from pathlib import Path

    res = run_mpi(3, [sys.executable, str(Path(__file__).parent / "grad_job.py"), path],
                  timeout=120)
    assert res.returncode == 0, res.output[-3000:]
    recs = res.reports("grads")
    assert sorted(recs) == [1, 2]  # the two workers
    for rec in recs.values():
        assert rec["refused"] and any(rec["strided"])
        assert rec["err"] < 1e-5 and rec["layouts_kept"]


def test_ranks_sharing_a_gpu_and_the_gradient_path_of_each_role():
    from hvams.runtime.layout import Placed, gradient_paths, ranks_on_gpu, roles_sharing_a_gpu

    # node a: 2 servers and 2 workers on 2 GPUs, one of each role per GPU; node b: 2 workers
    # on its first GPU, a server alone on its second
    table = [Placed("a", "server", "cuda:0"), Placed("a", "server", "cuda:1"),
             Placed("a", "worker", "cuda:0"), Placed("a", "worker", "cuda:1"),
             Placed("b", "worker", "cuda:0"), Placed("b", "worker", "cuda:0"),
             Placed("b", "server", "cuda:1")]
    assert [ranks_on_gpu(table, r) for r in range(7)] == [2, 2, 2, 2, 2, 2, 1]
    assert roles_sharing_a_gpu(table) == {"worker"}
    assert gradient_paths(table, "auto") == {"server": "device", "worker": "host"}
    assert gradient_paths(table, "host") == {"server": "host", "worker": "host"}
    assert gradient_paths(table[:4] + table[6:], "device") == {"server": "device", "worker": "device"}
    with pytest.raises(DeviceError, match="config key 'allreduce_path': 'device' .* two workers "
                                          "are on one GPU"):
        gradient_paths(table, "device")
    cpu = [Placed("a", "server", "cpu"), Placed("a", "server", "cpu")]
    assert gradient_paths(cpu, "auto") == {"server": "device"} and ranks_on_gpu(cpu, 0) == 1
    # a role with CUDA and CPU ranks cannot take one NCCL collective either
    mixed = [Placed("a", "worker", "cuda:0"), Placed("b", "worker", "cpu")]
    assert gradient_paths(mixed, "auto") == {"worker": "host"}


def test_memory_format_exact_fp32_and_cached_constants():
    from hvams.imaging.source import _constants

    cfg = TrainConfig(data="-", device="cpu")
    assert not role_runtime(cfg, "server").channels_last  # auto: channels_last on CUDA only
    last = role_runtime(TrainConfig(data="-", device="cpu", memory_format="channels-last"), "server")
    assert last.channels_last
    conv = last.module(torch.nn.Conv2d(3, 4, 3), image_model=True)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    torch.backends.cudnn.fp32_precision = "tf32"
    Runtime.cpu("fp32").activate()
    assert torch.backends.cudnn.fp32_precision == "ieee"
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    dev = torch.device("cpu")
    assert _constants(dev, torch.float32)[0] is _constants(dev, torch.float32)[0]
