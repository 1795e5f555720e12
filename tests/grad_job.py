"""A real Horovod job (run by tests/test_device.py): channels_last convolution gradients,
which Horovod refuses as they are, summed over a process set by ``GradientReducer``.

argv: the reducer's path (device | host). Each rank reports whether the raw grouped
allreduce refused the strided gradients, and the largest difference of the reduced
gradients from the sum computed here from every rank's inputs."""
import sys

import torch

from hvams.distributed.gradients import GradientReducer
from hvams.distributed.reports import write_report
from hvams.distributed.topology import build_topology, finish


def grads_of(rank: int):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3))
    net = net.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(rank))
    net(x.contiguous(memory_format=torch.channels_last)).square().sum().backward()
    return net, [p.grad.clone() for p in net.parameters()]


def main(path: str) -> None:
    import horovod.torch as hvd

    topo = build_topology(1)
    size = topo.num_workers
    net, mine = grads_of(topo.rank)
    strided = [not g.is_contiguous() for g in mine]
    if topo.is_worker:
        try:
            hvd.grouped_allreduce([p.grad for p in net.parameters()], op=hvd.Sum,
                                  process_set=topo.worker_set, name="raw")
            refused = False
        except ValueError as exc:
            refused = "contiguous" in str(exc)
        GradientReducer(topo.worker_set, size, path, name="reduced").reduce(list(net.parameters()))
        want = [sum(grads_of(r)[1][i] for r in topo.worker_ranks) for i in range(len(mine))]
        err = max(float((p.grad - w).abs().max()) for p, w in zip(net.parameters(), want))
        layouts = [p.grad.stride() == p.stride() for p in net.parameters()]
        write_report("grads", topo.rank, {"refused": refused, "strided": strided, "err": err,
                                          "layouts_kept": all(layouts)})
    finish(topo)


if __name__ == "__main__":
    main(sys.argv[1])
