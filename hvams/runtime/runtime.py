"""``Runtime``: a role's device and precision, and its host<->device copies.

Keys, rows and gradients travel over MPI as host numpy buffers. On CUDA a row
block goes host -> device through pinned memory (``non_blocking``), and
gradients come back through a pinned buffer; PyTorch's caching host allocator
keeps the pinned blocks, so a step allocates none. On the CPU both are no-ops.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..protocol.timing import stage
from .device import resolve_device
from .precision import Precision, resolve_precision


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: Precision
    sharing: int = 1        # ranks of any role on the same GPU (they split its memory)
    channels_last: bool = False  # image models and their inputs in cuDNN's fast layout

    @classmethod
    def cpu(cls, precision: str = "fp32") -> "Runtime":
        dev = torch.device("cpu")
        return cls(dev, resolve_precision(precision, dev))

    @property
    def dtype(self) -> torch.dtype:
        return self.precision.dtype

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def compute(self):
        """Forward-pass context (bf16 autocast where the precision asks for it)."""
        return self.precision.compute(self.device)

    def activate(self) -> None:
        """Make this runtime the process's, before Horovod or NCCL start: its GPU current
        (NCCL binds a communicator to the current device), and fp32 and fp64 kernels exact
        (cuDNN convolutions default to TF32, 10 mantissa bits); bf16 is left as it is."""
        if self.precision.autocast is None:
            exact_fp32()
        if self.is_cuda:
            torch.cuda.set_device(self.device)

    def module(self, m: torch.nn.Module, image_model: bool = False) -> torch.nn.Module:
        """``m`` on this device in this precision (an image model channels_last where this
        runtime says so; its gradients are then strided, see ``distributed.gradients``)."""
        m = m.to(device=self.device, dtype=self.dtype)
        if image_model and self.channels_last:
            m = m.to(memory_format=torch.channels_last)
        return m

    def image_input(self, x: torch.Tensor) -> torch.Tensor:
        """A backbone's input batch in this runtime's image layout."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def upload(self, x) -> torch.Tensor:
        """A host array or tensor on this device (same dtype), via pinned memory on CUDA."""
        t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
        if not self.is_cuda or t.device == self.device:
            return t
        with stage("h2d"):
            return t.pin_memory().to(self.device, non_blocking=True)

    def index(self, idx: np.ndarray) -> torch.Tensor:
        """An int64 index array as a tensor on this device."""
        return self.upload(np.asarray(idx, np.int64))

    def download(self, t: torch.Tensor, dtype: np.dtype | None = None) -> np.ndarray:
        """A tensor as a host numpy array (``dtype``: cast on the device first)."""
        t = t.detach()
        if dtype is not None and t.dtype != _torch_dtype(dtype):
            t = t.to(_torch_dtype(dtype))
        if t.device.type != "cuda":
            return t.numpy()
        with stage("d2h"):
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            host.copy_(t, non_blocking=True)
            torch.cuda.current_stream(t.device).synchronize()
        return host.numpy()

    def zeros(self, *shape, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.zeros(shape, dtype=dtype or self.dtype, device=self.device)

    def cache_bytes(self, requested: int | None) -> int | None:
        """Bytes the image caches of a rank may hold: ``requested``, else on CUDA 40% of the
        GPU memory free now (activations need the rest), split among the ranks sharing the
        GPU; on the CPU no byte bound."""
        if requested is not None or not self.is_cuda:
            return requested
        free, _ = torch.cuda.mem_get_info(self.device)
        return int(0.4 * free / self.sharing)

    def describe(self) -> str:
        from .device import describe

        return f"{describe(self.device)}, {self.precision.name}"


def _torch_dtype(dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype)).dtype


def exact_fp32() -> None:
    """fp32 matmuls and convolutions in IEEE fp32 on CUDA, not TF32."""
    try:  # (cudnn's own setting covers its convolutions and RNNs)
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
    except AttributeError:  # torch before 2.9
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def uses_channels_last(cfg, device: torch.device) -> bool:
    fmt = getattr(cfg, "memory_format", "auto")
    return fmt == "channels-last" or (fmt == "auto" and device.type == "cuda")


def role_runtime(cfg, role: str, rank_on_node: int = 0, sharing: int = 1) -> Runtime:
    """The runtime of a ``server`` or ``worker`` rank under ``cfg`` (``sharing``: the ranks
    on its GPU, from ``runtime.layout``)."""
    key = f"{role}_device"
    requested = getattr(cfg, key) or cfg.device
    device = resolve_device(requested, rank_on_node, key if getattr(cfg, key) else "device")
    return Runtime(device, resolve_precision(cfg.precision, device),
                   sharing if device.type == "cuda" else 1, uses_channels_last(cfg, device))


def check_devices(cfg) -> dict[str, Runtime]:
    """The runtime each role would get on this machine; DeviceError (exit 2) when a
    device asked for is not there."""
    return {role: role_runtime(cfg, role) for role in ("server", "worker")}
