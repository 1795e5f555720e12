"""The single-process reference of the equivalence tests (hvams.bench.oneproc)."""
from hvams.bench.oneproc import OneProcess as Reference, concat, global_batches  # noqa: F401
