"""Gradient compression on the wire of Horovod's allreduces (config ``allreduce_compression``).

``fp16`` halves the bytes of the workers' dense allreduce and the servers' image
model allreduce (Horovod casts to fp16 before and back after); ``none`` keeps
them exact, as the equivalence tests need. On slow links the workers' dense
allreduce is AMS's largest traffic (docs/benchmarks.md, network).
"""
from __future__ import annotations


def horovod_compression(name: str):
    import horovod.torch as hvd

    return {"none": hvd.Compression.none, "fp16": hvd.Compression.fp16}[name]


def wire_bytes(tensors, name: str) -> int:
    """Bytes the allreduce of ``tensors`` sends per rank, as compressed."""
    if name == "fp16":
        return sum(t.numel() * (2 if t.is_floating_point() else t.element_size()) for t in tensors)
    return sum(t.numel() * t.element_size() for t in tensors)
