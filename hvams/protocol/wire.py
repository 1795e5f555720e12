"""How rows and row gradients travel between servers and workers (config ``row_compression``;
``Compression.row_dtype`` gives a channel's dtype on the wire).

``none`` sends them in their host dtype (float32, or float64 under fp64): exact,
as the equivalence tests need. ``fp16`` halves their bytes: values are rounded
to 11 significant bits. Gradients are those of the mean loss over the global
batch, often below fp16's smallest normal number (6e-5), so they travel scaled
by the global batch size (the gradient of the summed loss) and are unscaled
on the server in the host dtype. A value too large for fp16 is an error that
names the channel, never a silent infinity.
"""
from __future__ import annotations

import numpy as np


class WireOverflow(RuntimeError):
    """A row or gradient outside fp16's range."""

    user_error = True  # a setting to change, reported without a traceback


def to_wire(x: np.ndarray, wire: np.dtype, kind: str, channel: str, scale: float = 1.0
            ) -> np.ndarray:
    """``x * scale`` in ``wire``; WireOverflow, naming the channel's ``kind`` (rows,
    gradients), where a finite value overflows."""
    wire = np.dtype(wire)
    if x.dtype == wire and scale == 1.0:
        return x
    with np.errstate(over="ignore"):  # overflow is checked below, with a message that says why
        out = (x * scale if scale != 1.0 else x).astype(wire)
    if wire.itemsize < x.dtype.itemsize and not np.isfinite(out).all() and np.isfinite(x).all():
        raise WireOverflow(f"{kind} of channel {channel!r}: values up to {np.abs(x).max() * scale:.3g} do not fit fp16 "
                           f"(max 65504) on the wire; set row_compression: none")
    return out


def from_wire(x: np.ndarray, host: np.dtype) -> np.ndarray:
    """Wire values back in the host dtype (no copy where they travelled in it)."""
    return x.astype(host, copy=x.dtype != np.dtype(host))


def grad_scale(wire: np.dtype, host: np.dtype, global_n: int) -> float:
    """Factor row gradients travel with: the global batch size where the wire is narrower."""
    return float(max(global_n, 1)) if np.dtype(wire).itemsize < np.dtype(host).itemsize else 1.0
