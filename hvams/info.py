"""``hvams info``: what the stack under hvams is built with."""
from __future__ import annotations


def stack_info() -> dict:
    """Versions and capabilities of torch, torchvision, Horovod and MPI."""
    import torch
    import torchvision

    info: dict = {"torch": torch.__version__, "torchvision": torchvision.__version__,
                  "cuda_available": torch.cuda.is_available(),
                  "cuda_devices": [torch.cuda.get_device_name(i)
                                   for i in range(torch.cuda.device_count())]}
    try:
        import horovod
        import horovod.torch as hvd

        info["horovod"] = {
            "version": horovod.__version__,
            "frameworks": {"PyTorch": True},
            "controllers": {"MPI": bool(hvd.mpi_built()), "Gloo": bool(hvd.gloo_built())},
            "tensor_operations": {"NCCL": bool(hvd.nccl_built()), "DDL": bool(hvd.ddl_built()),
                                  "CCL": bool(hvd.ccl_built()), "MPI": bool(hvd.mpi_built()),
                                  "Gloo": bool(hvd.gloo_built())},
        }
    except ImportError as exc:
        info["horovod"] = {"error": f"horovod.torch does not import: {exc}"}
    from mpi4py import MPI

    info["mpi"] = {
        "mpi4py": __import__("mpi4py").__version__,
        "vendor": "%s %s" % (MPI.get_vendor()[0], ".".join(map(str, MPI.get_vendor()[1]))),
        "library": MPI.Get_library_version().strip().splitlines()[0],
        "thread_level": {MPI.THREAD_SINGLE: "SINGLE", MPI.THREAD_FUNNELED: "FUNNELED",
                         MPI.THREAD_SERIALIZED: "SERIALIZED",
                         MPI.THREAD_MULTIPLE: "MULTIPLE"}[MPI.Query_thread()],
    }
    return info


def stack_ok(info: dict) -> tuple[bool, str]:
    """Whether Horovod can run hvams (PyTorch + MPI), and why not."""
    hvd = info.get("horovod", {})
    if "error" in hvd:
        return False, hvd["error"]
    if not hvd["controllers"]["MPI"]:
        return False, "Horovod was built without MPI"
    return True, "ok"


def format_info(info: dict) -> str:
    """Human-readable report in the shape of ``horovodrun --check-build``."""
    def mark(flag):
        return "[X]" if flag else "[ ]"

    lines = [f"torch {info['torch']} (CUDA available: {info['cuda_available']})",
             f"torchvision {info['torchvision']}"]
    hvd = info["horovod"]
    if "error" in hvd:
        lines.append(f"Horovod: {hvd['error']}")
    else:
        lines.append(f"Horovod v{hvd['version']}:")
        lines.append("Available Frameworks:")
        lines += [f"    {mark(v)} {k}" for k, v in hvd["frameworks"].items()]
        lines.append("Available Controllers:")
        lines += [f"    {mark(v)} {k}" for k, v in hvd["controllers"].items()]
        lines.append("Available Tensor Operations:")
        lines += [f"    {mark(v)} {k}" for k, v in hvd["tensor_operations"].items()]
    mpi = info["mpi"]
    lines.append(f"mpi4py {mpi['mpi4py']}: {mpi['vendor']}, thread level {mpi['thread_level']}")
    lines.append(f"MPI library: {mpi['library']}")
    if info.get("cuda_devices"):
        lines.append("CUDA devices: " + ", ".join(f"{i}: {n}" for i, n in enumerate(info["cuda_devices"])))
    for role, where in info.get("devices", {}).items():
        lines.append(f"{role}s compute on: {where} (rank r of a node takes GPU r % GPUs)")
    return "\n".join(lines)
