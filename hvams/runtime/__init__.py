"""Where and how a role computes: its device, its precision, and host<->device copies.

Everything device-specific in hvams goes through ``Runtime``: roles, models and
image pipelines ask it for tensors on their device and for host buffers to send
over MPI, so CPU and CUDA share one code path.
"""
from .device import DEVICES, DeviceError, gpu_index, local_rank, resolve_device
from .precision import PRECISIONS, Precision, resolve_precision, wire_dtype
from .runtime import Runtime, role_runtime

__all__ = ["DEVICES", "DeviceError", "PRECISIONS", "Precision", "Runtime", "gpu_index",
           "local_rank", "resolve_device", "resolve_precision", "role_runtime", "wire_dtype"]
