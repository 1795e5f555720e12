"""The LMDB image store: partitions, ingest, read, decode, verify."""
from .errors import CorruptImageError, ImageError, MissingImageError  # noqa: F401
