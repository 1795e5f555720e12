"""Stable keys and hashes: the same on every rank, machine and run.

Image keys and ID feature values travel as int64. ``mix64`` (splitmix64's
finaliser) spreads them evenly, so ``mix64(key) % n`` is a fair owner for
store partitions and embedding shards alike; Python's ``hash`` is salted per
process and must never be used for this.
"""
from __future__ import annotations

import hashlib

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MAX_KEY = (1 << 63) - 1


def mix64(keys, salt: int = 0) -> np.ndarray:
    """splitmix64 of ``keys + salt`` as uint64 (vectorised, wraps mod 2^64)."""
    z = np.asarray(keys).astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z += np.uint64(salt & 0xFFFFFFFFFFFFFFFF) * _GOLDEN + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        z ^= z >> np.uint64(31)
    return z


def owner(keys, num_owners: int, salt: int = 0) -> np.ndarray:
    """Owner index in [0, num_owners) of each key (int64 array)."""
    return (mix64(keys, salt) % np.uint64(num_owners)).astype(np.int64)


def name_salt(name: str) -> int:
    """Stable 64-bit salt for a table or field name."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def image_key_id(key: str | int) -> int:
    """Canonical int64 id of an image key.

    A decimal string or int in [0, 2^63) is its own id; any other string maps
    to the low 63 bits of its BLAKE2b-64, so datasets with URL or hash keys
    fit the same int64 columns.
    """
    if isinstance(key, (int, np.integer)):
        if not 0 <= int(key) <= MAX_KEY:
            raise ValueError(f"image key {key} is outside [0, 2^63)")
        return int(key)
    text = str(key).strip()
    if text.isdigit() and int(text) <= MAX_KEY:
        return int(text)
    if not text:
        raise ValueError("empty image key")
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & MAX_KEY


def key_bytes(key_id: int) -> bytes:
    """LMDB key of an image id: 8 bytes big-endian, so LMDB order = id order."""
    return int(key_id).to_bytes(8, "big")


def key_from_bytes(raw: bytes) -> int:
    return int.from_bytes(raw, "big")
