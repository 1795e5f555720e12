"""A scoring request, checked against the export's schema and turned into a ``Batch``.

The body of ``POST /v1/score`` (field names are the schema's)::

    {"user": {"user_id": 17, "age": 3, "hour": 20},
     "behaviors": {"beh_item": [5, 9], "beh_category": [1, 1], "beh_image": [5, 9]},
     "candidates": [{"ad_id": 12, "category": 1, "ad_image": 12, "position": 0},
                    {"ad_id": 40, "category": 2, "ad_image": 977, "position": 1,
                     "ad_image_bytes": "<base64 JPEG/PNG/WebP>"}]}

Every single-valued model field (ID fields and the ad image) comes from the candidate, else
from ``user`` (profile and context fields shared by all candidates). The behavior lists are
the user's, newest first, all of one length; a list field left out is empty. A candidate may
bring the bytes of its image (``<image field>_bytes``, base64) for an image the export does
not know. Anything else is a ``RequestError`` naming the field.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import numpy as np

from ..data.batch import Batch, index_keys
from ..data.schema import Schema

BYTES_SUFFIX = "_bytes"
INT64 = (0, (1 << 63) - 1)


class RequestError(ValueError):
    """A request that cannot be scored: ``field`` names what is wrong (400, or ``status``)."""

    def __init__(self, field: str, message: str, status: int = 400):
        super().__init__(f"{field}: {message}")
        self.field, self.status = field, status


@dataclass(frozen=True)
class Limits:
    max_candidates: int = 1000
    max_behaviors: int = 1000
    max_image_bytes: int = 4 << 20


@dataclass
class ScoreRequest:
    batch: Batch                                # one row per candidate
    new_images: dict[int, bytes]                # image key -> the bytes a candidate brought
    image_of: list[int | None]                  # each candidate's ad image key


def _int(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(where, f"expected an integer ID, got {type(value).__name__}")
    if not 0 <= value <= INT64[1]:
        raise RequestError(where, "IDs and image keys are non-negative and fit in int64")
    return value


def _column(col: list, where: str) -> np.ndarray:
    """An int64 column of IDs, or a RequestError naming the first bad entry (``where`` has a
    ``{}`` for its index)."""
    if all(type(v) is int for v in col):
        try:
            arr = np.array(col, np.int64)
            if len(arr) == 0 or arr.min() >= 0:
                return arr
        except OverflowError:
            pass
    for i, v in enumerate(col):
        if v is None:
            raise RequestError(where.format(i), "missing (and not in user)")
        _int(v, where.format(i))
    raise AssertionError("unreachable: a bad entry was not found")


def _object(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise RequestError(where, f"expected an object, got {type(value).__name__}")
    return value


def parse(body, schema: Schema, fields: list, limits: Limits) -> ScoreRequest:
    """The request ``body`` (parsed JSON) for the model's ``fields`` (``model_fields``)."""
    body = _object(body, "body")
    unknown = sorted(set(body) - {"user", "behaviors", "candidates"})
    if unknown:
        raise RequestError(unknown[0], "unknown key (expected user, behaviors, candidates)")
    singles = [f.name for f in fields if not f.is_list]
    lists = [f.name for f in fields if f.is_list]
    image_fields = {f.name for f in fields if f.is_image and not f.is_list}
    # a request may carry every ID and image field of the schema; the model reads its own
    known = {f.name for f in schema.fields if (f.is_id or f.is_image) and not f.is_list}
    known_lists = {f.name for f in schema.list_fields}
    user = _object(body.get("user", {}), "user")
    for name in user:
        if name not in known:
            raise RequestError(f"user.{name}", "not a single-valued ID or image field of the "
                                               "schema")
    cands = body.get("candidates")
    if not isinstance(cands, list) or not cands:
        raise RequestError("candidates", "expected a non-empty list of objects")
    if len(cands) > limits.max_candidates:
        raise RequestError("candidates", f"{len(cands)} candidates, more than the limit of "
                                         f"{limits.max_candidates}", 413)
    allowed = known | {f.name + BYTES_SUFFIX for f in schema.fields if f.kind == "image"}
    for i, cand in enumerate(cands):
        extra = _object(cand, f"candidates[{i}]").keys() - allowed
        if extra:
            raise RequestError(f"candidates[{i}].{min(extra)}", "not a single-valued ID or "
                                                                "image field of the schema")
    values = {}
    for name in singles:   # a column at a time: one pass of C-level checks in the usual case
        if name in user:
            fallback = _int(user[name], f"user.{name}")
            col = [c.get(name, fallback) for c in cands]
        else:
            col = [c.get(name) for c in cands]
        values[name] = _column(col, f"candidates[{{}}].{name}")
    new_images: dict[int, bytes] = {}
    image_of: list[int | None] = [None] * len(cands)
    for name in image_fields:
        for i, cand in enumerate(cands):
            key = image_of[i] = int(values[name][i])
            raw = cand.get(name + BYTES_SUFFIX)
            if raw is not None:
                new_images[key] = _image_bytes(raw, f"candidates[{i}].{name}{BYTES_SUFFIX}", limits)
    beh = _object(body.get("behaviors", {}), "behaviors")
    for name in beh:
        if name not in known_lists:
            raise RequestError(f"behaviors.{name}", "not a behavior list field of the schema")
    flat, length = {}, None
    for name in lists:
        if not any(n in beh for n in lists):
            flat[name] = np.zeros(0, np.int64)   # no behaviors at all
            continue
        if name not in beh:
            raise RequestError(f"behaviors.{name}", "missing (the behavior lists go together)")
        seq = beh[name]
        if not isinstance(seq, list):
            raise RequestError(f"behaviors.{name}", f"expected a list, got {type(seq).__name__}")
        if len(seq) > limits.max_behaviors:
            raise RequestError(f"behaviors.{name}", f"{len(seq)} behaviors, more than the "
                                                    f"limit of {limits.max_behaviors}", 413)
        if length is not None and len(seq) != length:
            raise RequestError(f"behaviors.{name}", f"{len(seq)} entries; the other behavior "
                                                    f"lists have {length}")
        length = len(seq)
        flat[name] = _column(seq, f"behaviors.{name}[{{}}]")
    return ScoreRequest(_shared_behaviors(len(cands), values, flat, schema, fields),
                        new_images, image_of)


def _shared_behaviors(n: int, values: dict, flat: dict, schema: Schema, fields) -> Batch:
    """The batch of ``n`` candidates that all have the behaviors ``flat``: keys are made
    unique over one copy of the lists (not n), whose indices are then repeated per row."""
    length = min(len(next(iter(flat.values()), ())), schema.max_behaviors)
    flat = {name: seq[:length] for name, seq in flat.items()}  # the newest first (cap_lists)
    once = index_keys(Batch(n, values, flat, np.array([0, length], np.int64)), schema, fields)
    once.index.update({name: np.tile(once.index[name], n) for name in flat})
    once.lists = {name: np.tile(seq, n) for name, seq in flat.items()}
    once.offsets = np.arange(n + 1, dtype=np.int64) * length
    return once


def _image_bytes(raw, where: str, limits: Limits) -> bytes:
    if not isinstance(raw, str):
        raise RequestError(where, f"expected a base64 string, got {type(raw).__name__}")
    if len(raw) > limits.max_image_bytes * 4 // 3 + 4:
        raise RequestError(where, f"more than the limit of {limits.max_image_bytes} bytes", 413)
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(where, "not valid base64") from None
