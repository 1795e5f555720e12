"""What travels narrowed on a wire: ``Compression.NONE`` (exact) or ``Compression.FP16``.

One enum for both wires, as Horovod's ``Compression`` is one class for its
allreduces: ``allreduce_compression`` (Horovod's gradient allreduces of the
workers' dense model and the servers' image model) and ``row_compression``
(rows and row gradients between servers and workers, ``protocol.wire``).
``none`` keeps them exact, as the equivalence tests need; ``fp16`` halves
their bytes. On slow links the workers' dense allreduce is AMS's largest
traffic (docs/benchmarks.md, network).
"""
from __future__ import annotations

from enum import StrEnum

import numpy as np


class Compression(StrEnum):
    NONE = "none"
    FP16 = "fp16"

    def horovod(self):
        """Horovod's compressor for this setting."""
        import horovod.torch as hvd

        return hvd.Compression.fp16 if self is Compression.FP16 else hvd.Compression.none

    def allreduce_bytes(self, tensors) -> int:
        """Bytes the allreduce of ``tensors`` sends per rank, as compressed."""
        if self is Compression.FP16:
            return sum(t.numel() * (2 if t.is_floating_point() else t.element_size())
                       for t in tensors)
        return sum(t.numel() * t.element_size() for t in tensors)

    def row_dtype(self, host) -> np.dtype:
        """The dtype of a channel's rows on the wire (uint8 pixels are never narrowed)."""
        host = np.dtype(host)
        if self is Compression.FP16 and host.kind == "f":
            return np.dtype(np.float16)
        return host
