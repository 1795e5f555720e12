"""One server's shard of one embedding table, with its per-row optimizer.

Rows live in one contiguous array (float32, or float64 for fp64 runs) that doubles when full; optimizer
slots are arrays of the same shape, created lazily with the rows they track.
Adagrad follows ``torch.optim.Adagrad`` and Adam ``torch.optim.SparseAdam``
(moments of untouched rows stay as they are; bias correction by table step),
so a single-process torch reference reproduces them exactly.

Which keys get a row and how long it stays is the table's ``RowPolicy``
(``lifecycle.py``). An evicted row's place is filled by the last rows (rows
stay 0..n-1 and contiguous), and arrays that have become four times too
large are reallocated, so eviction gives memory back.

With ``track_changes`` (delta checkpoints) the shard marks every row place it
writes (a new row, an update, a use, an evicted row's filler) and keeps the keys
it deleted, until ``mark_saved``: a place left unmarked holds what it held at the
last save, which is what lets a delta name only the changed places.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from ..config import ConfigError
from .init import initial_rows
from .key_index import KeyIndex
from .lifecycle import CapacityError, RowPolicy, policy_for
from .sketch import CountMinSketch

MIN_CAPACITY = 1024
GROW_SLOWER_FROM = 1 << 20   # rows: above this, arrays grow by 25% instead of doubling

OPTIMIZERS = ("adagrad", "adam", "sgd")


class EmbeddingShard:
    """Rows of the keys of ``table`` that this server owns."""

    def __init__(self, table: str, dim: int, optimizer: str = "adagrad", lr: float = 0.05,
                 seed: int = 0, init_scale: float = 0.05, capacity: int = 1024,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float | None = None,
                 dtype=np.float32, policy: RowPolicy = RowPolicy(), server: int = 0,
                 track_changes: bool = False):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown sparse optimizer {optimizer!r}; one of {OPTIMIZERS}")
        self.table, self.dim, self.optimizer, self.lr = table, dim, optimizer, lr
        self.seed, self.init_scale, self.betas = seed, init_scale, betas
        self.eps = eps if eps is not None else (1e-10 if optimizer == "adagrad" else 1e-8)
        self.dtype = np.dtype(dtype)
        self.policy, self.server = policy, server
        self.index = KeyIndex(capacity)
        self.rows = np.zeros((capacity, dim), self.dtype)
        self.slots = {name: np.zeros((capacity, dim), self.dtype) for name in self._slot_names()}
        self.row_keys = np.zeros(capacity, np.int64)        # the key of each row
        self.meta = {name: np.zeros(capacity, np.int64) for name in self._meta_names()}
        self.sketch = (None if policy.admits_all else
                       CountMinSketch(policy.sketch_width, policy.sketch_depth, seed))
        self.step = 0      # optimizer steps (Adam's bias correction)
        self.day = 0       # training days ended (TTL)
        self.tick = 0      # training steps served (LRU)
        self.counts = Counter()  # admitted, filtered, evicted_ttl, evicted_capacity
        self.changed: np.ndarray | None = None   # row places written since the last save
        self.deleted: list[np.ndarray] = []       # keys evicted since the last save
        if track_changes:
            self.start_tracking()

    @classmethod
    def for_table(cls, cfg, table: str, dim: int, dtype, server: int) -> EmbeddingShard:
        """A fresh shard of ``table`` as server ``server`` of a run of ``cfg`` holds it."""
        return cls(table, dim, cfg.sparse_optimizer, cfg.sparse_lr, cfg.seed, cfg.init_scale,
                   dtype=dtype, policy=policy_for(cfg, table), server=server,
                   track_changes=cfg.checkpoint_mode == "delta")

    def _slot_names(self) -> tuple[str, ...]:
        return {"adagrad": ("sum",), "adam": ("m", "v"), "sgd": ()}[self.optimizer]

    def _meta_names(self) -> tuple[str, ...]:
        """Per-row bookkeeping the policy needs: the day and step of a row's last use, or
        how many steps used it."""
        names = ("last_day",) if self.policy.ttl_days else ()
        if self.policy.max_rows:
            names += ("last_tick",) if self.policy.evict == "lru" else ("uses",)
        return names

    def __len__(self) -> int:
        return len(self.index)

    def _arrays(self) -> dict[str, np.ndarray]:
        """Every per-row array, by name (rows, slots, keys, bookkeeping)."""
        return {"rows": self.rows, **{f"slot_{k}": v for k, v in self.slots.items()},
                "row_keys": self.row_keys, **{f"meta_{k}": v for k, v in self.meta.items()}}

    def row_array_names(self) -> list[str]:
        """The per-row arrays a checkpoint holds beside the keys."""
        return [name for name in self._arrays() if name != "row_keys"]

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.rows, self.row_keys = arrays["rows"], arrays["row_keys"]
        self.slots = {k: arrays[f"slot_{k}"] for k in self.slots}
        self.meta = {k: arrays[f"meta_{k}"] for k in self.meta}
        if self.changed is not None and len(self.changed) != len(self.rows):
            changed, keep = np.zeros(len(self.rows), bool), min(len(self.rows), len(self.changed))
            changed[:keep] = self.changed[:keep]
            self.changed = changed

    def _resize(self, cap: int) -> None:
        """Every per-row array at ``cap`` rows, one array at a time: each old one goes as its
        copy is made, so a resize holds the table plus one array, not the table twice."""
        arrays = self._arrays()
        for name in list(arrays):
            old = arrays[name]
            arrays[name] = np.zeros((cap, *old.shape[1:]), old.dtype)
            arrays[name][:min(len(old), cap)] = old[:cap]
            del old
            self._set_arrays(arrays)

    def _mark(self, rows: np.ndarray) -> None:
        """Row places written since the last save (tracking only)."""
        if self.changed is not None:
            self.changed[rows] = True

    def _ensure_capacity(self, n: int) -> None:
        """Room for ``n`` rows: arrays double while small, then grow by a quarter (a restored
        table of 100M rows holds them exactly, and doubling it on its first new key would
        need its size again), never past the policy's row cap."""
        cap = len(self.rows)
        if n <= cap:
            return
        while cap < n:
            cap = cap * 2 if cap < GROW_SLOWER_FROM else cap + cap // 4
        if self.policy.max_rows:
            cap = max(n, min(cap, self.policy.max_rows))
        self._resize(cap)

    def row_ids(self, keys: np.ndarray, insert: bool = True) -> np.ndarray:
        """Row of each (distinct) key; a new key gets its deterministic initial row.

        With ``insert=False`` (evaluation) unknown keys are not stored: -1. In
        training a new key not yet admitted gets -1 too (served its initial row,
        its gradient dropped), and a full shard makes room first.
        """
        rows = self.index.lookup(keys)
        if not insert:
            return rows
        self.tick += 1
        new = np.flatnonzero(rows < 0)
        if len(new) and self.sketch is not None:
            admit = self.sketch.add(keys[new]) >= self.policy.min_count
            self.counts["filtered"] += int(len(new) - admit.sum())
            new = new[admit]
        if len(new) and self.policy.max_rows and self._make_room(len(new), rows[rows >= 0]):
            rows = self.index.lookup(keys)  # eviction moved rows
        if len(new):
            new_keys = keys[new]
            rows[new] = ids = self.index.insert(new_keys)
            self._ensure_capacity(len(self.index))
            self.rows[ids] = initial_rows(new_keys, self.dim, self.table, self.seed,
                                          self.init_scale)
            self.row_keys[ids] = new_keys
            self._mark(ids)
            for slot in self.slots.values():
                slot[ids] = 0
            for arr in self.meta.values():
                arr[ids] = 0
            self.counts["admitted"] += len(new)
        self._touch(rows[rows >= 0])
        return rows

    def _touch(self, rows: np.ndarray) -> None:
        if self.meta:
            self._mark(rows)
        if "last_day" in self.meta:
            self.meta["last_day"][rows] = self.day
        if "last_tick" in self.meta:
            self.meta["last_tick"][rows] = self.tick
        if "uses" in self.meta:
            self.meta["uses"][rows] += 1

    def _make_room(self, incoming: int, used: np.ndarray) -> bool:
        """Evict the policy's least valuable rows (never ``used``, the step's own) so that
        ``incoming`` new rows fit; whether any row moved."""
        cap, n = self.policy.max_rows, len(self.index)
        if len(used) + incoming > cap:
            raise CapacityError(
                f"table {self.table!r} on server {self.server}: one step needs "
                f"{len(used) + incoming:,} rows ({len(used):,} present + {incoming:,} new "
                f"distinct keys) but max_rows_per_shard is {cap:,}; raise it for this table "
                f"(max_rows_by_table) or lower batch_size")
        if n + incoming <= cap:
            return False
        # down to 98% of the capacity at once: the O(rows) choice runs once every few steps
        need = min(n + incoming - (cap - max(1, cap // 50)), n - len(used))
        need = max(need, n + incoming - cap)
        order = self.meta["last_tick" if self.policy.evict == "lru" else "uses"][:n].copy()
        order[used] = np.iinfo(np.int64).max
        victims = np.argpartition(order, need - 1)[:need]
        self._evict(victims, "evicted_capacity")
        return True

    def end_day(self) -> int:
        """A training day is over: evict the rows its TTL has run out for; how many."""
        gone = 0
        if self.policy.ttl_days:
            n = len(self.index)
            stale = np.flatnonzero(self.meta["last_day"][:n] <= self.day - self.policy.ttl_days)
            self._evict(stale, "evicted_ttl")
            gone = len(stale)
        self.day += 1
        return gone

    def _evict(self, victims: np.ndarray, reason: str) -> None:
        """Delete rows ``victims`` with their slots; the last rows fill their places."""
        if len(victims) == 0:
            return
        n = len(self.index)
        if self.changed is not None:
            self.deleted.append(self.row_keys[victims].copy())
        self.index.delete(self.row_keys[victims])
        keep = n - len(victims)
        gone = np.zeros(n, bool)
        gone[victims] = True
        holes = np.flatnonzero(gone[:keep])          # freed rows below the new end
        movers = keep + np.flatnonzero(~gone[keep:])  # live rows past it
        for arr in self._arrays().values():
            arr[holes] = arr[movers]
        self.index.relabel(self.row_keys[holes], holes)
        self._mark(holes)
        self.counts[reason] += len(victims)
        if len(self.rows) > max(4 * keep, MIN_CAPACITY):
            self._resize(max(2 * keep, MIN_CAPACITY))
            self.index.shrink()

    def live_counts(self) -> dict[str, int]:
        """Rows held now and what the policy did so far."""
        return {"live": len(self), **{k: self.counts[k] for k in (
            "admitted", "filtered", "evicted_ttl", "evicted_capacity")}}

    def gather(self, keys: np.ndarray, insert: bool = True) -> np.ndarray:
        """(len(keys), dim) rows of distinct ``keys``."""
        rows = self.row_ids(keys, insert)
        known = rows >= 0
        if known.all():
            return self.rows.take(rows, axis=0)   # a row copy per key, no mask
        out = np.empty((len(keys), self.dim), self.dtype)
        out[known] = self.rows[rows[known]]
        out[~known] = initial_rows(keys[~known], self.dim, self.table, self.seed, self.init_scale)
        return out

    def apply(self, keys: np.ndarray, grads: np.ndarray, lr_scale: float = 1.0) -> None:
        """One optimizer step on the rows of distinct ``keys`` with summed ``grads`` (the
        step's served keys: a key without a row, not admitted, drops its gradient)."""
        self.step += 1
        if len(keys) == 0:
            return
        rows = self.index.lookup(keys)
        if (rows < 0).any():
            grads, rows = grads[rows >= 0], rows[rows >= 0]
            if len(rows) == 0:
                return
        self._mark(rows)
        w = torch.from_numpy(self.rows)
        g = torch.from_numpy(np.ascontiguousarray(grads, self.dtype))
        idx = torch.from_numpy(rows)
        lr = self.lr * lr_scale
        if self.optimizer == "sgd":
            w.index_add_(0, idx, g, alpha=-lr)
        # Rows move with index_select / index_copy_: row kernels, 2-3x faster than
        # advanced indexing on a large table; the arithmetic is torch's optimizers', op for op.
        elif self.optimizer == "adagrad":
            s = torch.from_numpy(self.slots["sum"])
            acc = s.index_select(0, idx).addcmul_(g, g)
            s.index_copy_(0, idx, acc)
            w.index_copy_(0, idx, w.index_select(0, idx) - lr * g / (acc.sqrt() + self.eps))
        else:  # SparseAdam semantics
            b1, b2 = self.betas
            m, v = torch.from_numpy(self.slots["m"]), torch.from_numpy(self.slots["v"])
            m_old, v_old = m.index_select(0, idx), v.index_select(0, idx)
            m_upd = (g - m_old) * (1 - b1)
            v_upd = (g * g - v_old) * (1 - b2)
            m.index_copy_(0, idx, m_old + m_upd)
            v.index_copy_(0, idx, v_old + v_upd)
            bc1 = 1 - b1 ** self.step
            bc2 = 1 - b2 ** self.step
            step_size = lr * (bc2 ** 0.5) / bc1
            w.index_copy_(0, idx, w.index_select(0, idx)
                          - step_size * m_upd.add(m_old) / (v_upd.add(v_old).sqrt() + self.eps))

    # -- checkpoint -------------------------------------------------------
    def state(self, copy: bool = True) -> dict[str, np.ndarray]:
        """The shard's arrays by checkpoint name; ``copy=False`` gives views of the live
        arrays (a checkpoint writes them before the next step changes them, and a table of
        100M rows is not held twice)."""
        n = len(self.index)
        take = (lambda a: a[:n].copy()) if copy else (lambda a: a[:n])
        out = {"keys": take(self.row_keys), "rows": take(self.rows), "step": np.array([self.step])}
        out.update({f"slot_{k}": take(v) for k, v in self.slots.items()})
        out.update({f"meta_{k}": take(v) for k, v in self.meta.items()})
        if self.policy.tracks_rows or self.sketch is not None:
            out["clock"] = np.array([self.day, self.tick])
        if self.sketch is not None:
            sketch = self.sketch.state()
            out["sketch"] = sketch.copy() if copy else sketch
            out["sketch_total"] = np.array([self.sketch.total])
        return out

    def load(self, keys: np.ndarray, rows: np.ndarray, slots: dict[str, np.ndarray], step: int,
             meta: dict[str, np.ndarray] | None = None, index: KeyIndex | None = None) -> None:
        """Add rows (with their optimizer slots and bookkeeping) for keys not yet present.

        An empty shard adopts the arrays as they are (a resume loads each row once,
        without a second copy), and ``index`` if given (``KeyIndex.of(keys)``, built while
        the rows were read). Bookkeeping the checkpoint lacks starts as "used now"."""
        keys = np.asarray(keys, np.int64)
        meta = meta or {}
        now = {"last_day": self.day, "last_tick": self.tick, "uses": 1}
        fresh = {k: meta[k] if k in meta else np.full(len(keys), now[k], np.int64)
                 for k in self.meta}
        if len(self) == 0 and rows.dtype == self.dtype and all(
                slots[n].dtype == self.dtype and slots[n].shape == rows.shape for n in self.slots):
            self.index = index if index is not None else KeyIndex.of(keys)
            if len(rows):
                self._set_arrays({"rows": rows, "row_keys": keys.copy(),
                                  **{f"slot_{n}": slots[n] for n in self.slots},
                                  **{f"meta_{n}": np.asarray(v, np.int64) for n, v in fresh.items()}})
            if self.changed is not None:  # as loaded: what a restore's caller marks saved
                self.changed = np.ones(len(self.rows), bool)
            self.step = int(step)
            return
        ids = self.index.insert(keys)
        self._ensure_capacity(len(self.index))
        self._mark(ids)
        self.rows[ids] = rows
        self.row_keys[ids] = keys
        for name in self.slots:
            self.slots[name][ids] = slots[name]
        for name, values in fresh.items():
            self.meta[name][ids] = values
        self.step = int(step)

    def delta_state(self) -> dict[str, np.ndarray]:
        """What changed since ``mark_saved``, by checkpoint name: the changed row places
        (``positions``) with their keys, rows, slots and bookkeeping, the row count, the keys
        deleted since (with keys added and deleted since, which a reader never had) and the
        table's counters, as in ``state``."""
        n = len(self.index)
        pos = np.flatnonzero(self.changed[:n])
        gone = np.unique(np.concatenate(self.deleted)) if self.deleted else np.zeros(0, np.int64)
        arrays = self._arrays()
        out = {k: v for k, v in self.state(copy=False).items() if k not in arrays and k != "keys"}
        out.update({"positions": pos, "count": np.array([n]), "keys": self.row_keys[pos],
                    "deleted": gone[self.index.lookup(gone) < 0]})
        out.update({name: arrays[name][pos] for name in self.row_array_names()})
        return out

    def start_tracking(self) -> None:
        """Track changes from here, as if the shard had just been saved."""
        self.changed = np.zeros(len(self.rows), bool)
        self.deleted = []

    def mark_saved(self) -> None:
        """The shard's state is what the newest checkpoint holds: track changes from here."""
        if self.changed is not None:
            self.changed[:] = False
            self.deleted = []

    def load_clock(self, day: int, tick: int, sketch: np.ndarray | None = None,
                   sketch_total: int = 0) -> None:
        """The day and step counters and admission counts of a checkpoint (its sketches,
        summed over the servers that wrote it)."""
        self.day, self.tick = int(day), int(tick)
        if self.sketch is not None and sketch is not None:
            if sketch.shape != self.sketch.table.shape:
                raise ConfigError(
                    f"table {self.table!r}: the checkpoint's admission sketch is "
                    f"{sketch.shape[0]} x {sketch.shape[1]} (admission_sketch_depth x width), "
                    f"this run's {self.sketch.depth} x {self.sketch.width}; keep its size")
            self.sketch.merge(sketch, sketch_total)
