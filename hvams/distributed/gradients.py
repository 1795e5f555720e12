"""Summing a role's gradients over its Horovod process set, whatever its ranks' devices.

One ``GradientReducer`` per role: the servers' image model and the workers' dense model
(with a worker-side image model) both go through it. Each gradient is made contiguous
first: Horovod refuses a strided tensor (a channels_last convolution's weight gradient),
and a grouped call whose first tensor is contiguous has been reported to return later
strided ones permuted. On the ``host`` path (a role with two ranks on one GPU, see
``runtime.layout``) the gradients go through host memory, where Horovod sums them with
MPI or Gloo; on the ``device`` path they are summed where they are (NCCL on CUDA).
"""
from __future__ import annotations

import torch

from ..protocol.compression import Compression


class GradientReducer:
    def __init__(self, process_set, size: int, path: str = "device",
                 compression: Compression = Compression.NONE, name: str = "grads"):
        self.process_set, self.size, self.path = process_set, size, path
        self.compression, self.name = Compression(compression), name

    def reduce(self, params: list[torch.nn.Parameter]) -> None:
        """Every ``p.grad`` becomes the sum over the role's ranks (a missing one counts as
        zeros), in ``p``'s own layout."""
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        if self.size > 1:
            summed = self.allreduce([g.contiguous() for g in grads])
        else:
            summed = grads
        for p, s in zip(params, summed):
            if p.grad is None:
                p.grad = torch.empty_like(p)
            if s is not p.grad:
                p.grad.copy_(s)

    def allreduce(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        import horovod.torch as hvd

        if self.path == "host" and tensors[0].device.type != "cpu":
            tensors = [t.to("cpu") for t in tensors]
        out = hvd.grouped_allreduce(tensors, op=hvd.Sum, process_set=self.process_set,
                                    name=self.name, compression=self.compression.horovod())
        return out  # copy_ in reduce brings host sums back to the device


def role_reducer(topo, compression: Compression = Compression.NONE,
                 name: str = "grads") -> GradientReducer:
    """The reducer of this rank's role: its process set, its size, its gradient path."""
    size = topo.num_servers if topo.is_server else topo.num_workers
    return GradientReducer(topo.role_set, size, topo.gradient_path, compression, name)
