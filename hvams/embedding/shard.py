"""One server's shard of one embedding table, with its per-row optimizer.

Rows live in one contiguous array (float32, or float64 for fp64 runs) that doubles when full; optimizer
slots are arrays of the same shape, created lazily with the rows they track.
Adagrad follows ``torch.optim.Adagrad`` and Adam ``torch.optim.SparseAdam``
(moments of untouched rows stay as they are; bias correction by table step),
so a single-process torch reference reproduces them exactly.
"""
from __future__ import annotations

import numpy as np
import torch

from .init import initial_rows
from .key_index import KeyIndex

OPTIMIZERS = ("adagrad", "adam", "sgd")


class EmbeddingShard:
    """Rows of the keys of ``table`` that this server owns."""

    def __init__(self, table: str, dim: int, optimizer: str = "adagrad", lr: float = 0.05,
                 seed: int = 0, init_scale: float = 0.05, capacity: int = 1024,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float | None = None,
                 dtype=np.float32):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown sparse optimizer {optimizer!r}; one of {OPTIMIZERS}")
        self.table, self.dim, self.optimizer, self.lr = table, dim, optimizer, lr
        self.seed, self.init_scale, self.betas = seed, init_scale, betas
        self.eps = eps if eps is not None else (1e-10 if optimizer == "adagrad" else 1e-8)
        self.dtype = np.dtype(dtype)
        self.index = KeyIndex(capacity)
        self.rows = np.zeros((capacity, dim), self.dtype)
        self.slots = {name: np.zeros((capacity, dim), self.dtype) for name in self._slot_names()}
        self.step = 0

    def _slot_names(self) -> tuple[str, ...]:
        return {"adagrad": ("sum",), "adam": ("m", "v"), "sgd": ()}[self.optimizer]

    def __len__(self) -> int:
        return len(self.index)

    def _ensure_capacity(self, n: int) -> None:
        cap = len(self.rows)
        if n <= cap:
            return
        while cap < n:
            cap *= 2
        for name in ["rows", *self.slots]:
            old = self.rows if name == "rows" else self.slots[name]
            new = np.zeros((cap, self.dim), self.dtype)
            new[: len(old)] = old
            if name == "rows":
                self.rows = new
            else:
                self.slots[name] = new

    def row_ids(self, keys: np.ndarray, insert: bool = True) -> np.ndarray:
        """Row of each (distinct) key; new keys get their deterministic initial row.

        With ``insert=False`` (evaluation) unknown keys are not stored: -1.
        """
        rows = self.index.lookup(keys)
        new = rows < 0
        if insert and new.any():
            new_keys = keys[new]
            rows[new] = self.index.insert(new_keys)
            self._ensure_capacity(len(self.index))
            self.rows[rows[new]] = initial_rows(new_keys, self.dim, self.table, self.seed,
                                                self.init_scale)
        return rows

    def gather(self, keys: np.ndarray, insert: bool = True) -> np.ndarray:
        """(len(keys), dim) rows of distinct ``keys``."""
        rows = self.row_ids(keys, insert)
        out = np.empty((len(keys), self.dim), self.dtype)
        known = rows >= 0
        out[known] = self.rows[rows[known]]
        if not known.all():
            out[~known] = initial_rows(keys[~known], self.dim, self.table, self.seed, self.init_scale)
        return out

    def apply(self, keys: np.ndarray, grads: np.ndarray, lr_scale: float = 1.0) -> None:
        """One optimizer step on the rows of distinct ``keys`` with summed ``grads``."""
        self.step += 1
        if len(keys) == 0:
            return
        rows = self.row_ids(keys)
        w = torch.from_numpy(self.rows)
        g = torch.from_numpy(np.ascontiguousarray(grads, self.dtype))
        idx = torch.from_numpy(rows)
        lr = self.lr * lr_scale
        if self.optimizer == "sgd":
            w.index_add_(0, idx, g, alpha=-lr)
        elif self.optimizer == "adagrad":
            s = torch.from_numpy(self.slots["sum"])
            acc = s[idx].addcmul_(g, g)
            s[idx] = acc
            w[idx] = w[idx] - lr * g / (acc.sqrt() + self.eps)
        else:  # SparseAdam semantics
            b1, b2 = self.betas
            m, v = torch.from_numpy(self.slots["m"]), torch.from_numpy(self.slots["v"])
            m_old, v_old = m[idx], v[idx]
            m_upd = (g - m_old) * (1 - b1)
            v_upd = (g * g - v_old) * (1 - b2)
            m_new, v_new = m_old + m_upd, v_old + v_upd
            m[idx], v[idx] = m_new, v_new
            bc1 = 1 - b1 ** self.step
            bc2 = 1 - b2 ** self.step
            step_size = lr * (bc2 ** 0.5) / bc1
            w[idx] = w[idx] - step_size * m_upd.add(m_old) / (v_upd.add(v_old).sqrt() + self.eps)

    # -- checkpoint -------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        n = len(self.index)
        out = {"keys": self.index.keys_in_row_order(), "rows": self.rows[:n].copy(),
               "step": np.array([self.step])}
        out.update({f"slot_{k}": v[:n].copy() for k, v in self.slots.items()})
        return out

    def load(self, keys: np.ndarray, rows: np.ndarray, slots: dict[str, np.ndarray], step: int) -> None:
        """Add rows (with their optimizer slots) for keys not yet present.

        An empty shard adopts the arrays as they are (a resume loads each row once,
        without a second copy)."""
        keys = np.asarray(keys, np.int64)
        if len(self) == 0 and rows.dtype == self.dtype and all(
                slots[n].dtype == self.dtype and slots[n].shape == rows.shape for n in self.slots):
            self.index = KeyIndex(max(len(keys), 1))
            self.index.insert(keys)
            self.rows = rows if len(rows) else self.rows
            if len(rows):
                self.slots = {n: slots[n] for n in self.slots}
            self.step = int(step)
            return
        ids = self.index.insert(keys)
        self._ensure_capacity(len(self.index))
        self.rows[ids] = rows
        for name in self.slots:
            self.slots[name][ids] = slots[name]
        self.step = int(step)
