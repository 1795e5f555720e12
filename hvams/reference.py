"""One process, no MPI: the same training written as plainly as possible.

``torch.nn.Embedding`` tables over the vocabulary of the batches, the same
worker model class, the image model held locally and fed straight from the
store, torch's own optimizers (Adagrad / SparseAdam for the tables, Adam for
the MLP and the image model), on the same global batches (worker w's t-th
batch, concatenated over w). Two uses: the reference the equivalence tests
compare a distributed run with, and the baseline of ``hvams bench speed``.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from hvams.config import TrainConfig
from hvams.data.batch import Batch
from hvams.data.reader import DayReader
from hvams.data.schema import Schema
from hvams.embedding.init import initial_rows
from hvams.imaging.embed import embedder_for
from hvams.imaging.source import ImageSource
from hvams.models import build_model
from hvams.models.image import build_image_model
from hvams.models.inputs import Inputs
from hvams.store.lmdb_store import ImageStore
from hvams.runtime import Runtime, role_runtime
from hvams.train.plan import lr_scale, resolve_days


def global_batches(cfg: TrainConfig, schema: Schema, num_workers: int, max_steps: int) -> list[Batch]:
    """The global batches of a run with ``num_workers`` workers, in step order."""
    out = []
    train_days, _ = resolve_days(cfg)
    for _ in range(cfg.epochs):
        for day in train_days:
            streams = [list(DayReader(day, schema, cfg.batch_size, w, num_workers, prefetch=0))
                       for w in range(num_workers)]
            for t in range(max(len(s) for s in streams)):
                parts = [s[t] for s in streams if t < len(s)]
                out.append(concat(parts))
                if len(out) == max_steps:
                    return out
    return out


def concat(parts: list[Batch]) -> Batch:
    values = {k: np.concatenate([p.values[k] for p in parts]) for k in parts[0].values}
    lists = {k: np.concatenate([p.lists[k] for p in parts]) for k in parts[0].lists}
    lengths = np.concatenate([p.lengths for p in parts])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return Batch(int(sum(p.n for p in parts)), values, lists, offsets)


class OneProcess:
    def __init__(self, cfg: TrainConfig, schema: Schema, batches: list[Batch],
                 runtime: Runtime | None = None):
        self.cfg, self.schema, self.batches = cfg, schema, batches
        self.rt = rt = runtime or role_runtime(cfg, "worker")
        rt.activate()   # exact fp32 kernels on CUDA, as the distributed ranks
        self.fields = [f for f in schema.fields if f.is_id]
        vocab: dict[str, set] = {}
        for b in batches:
            for f in self.fields:
                vocab.setdefault(f.table, set()).update(b.column(f.name).tolist())
        self.keys = {t: np.array(sorted(v), np.int64) for t, v in vocab.items()}
        self.tables = torch.nn.ModuleDict()
        for t, keys in self.keys.items():
            emb = torch.nn.Embedding(len(keys), cfg.emb_dim, sparse=True)
            with torch.no_grad():
                emb.weight.copy_(torch.from_numpy(
                    initial_rows(keys, cfg.emb_dim, t, cfg.seed, cfg.init_scale)))
            self.tables[t] = rt.module(emb)
        self.model = rt.module(build_model(cfg, schema))
        self.dense_opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.image_model = None
        if cfg.uses_images:  # the image model held locally, fed straight from the store
            self.embedder = embedder_for(build_image_model(cfg), cfg.feature_cache, rt,
                                         chunk=cfg.backbone_chunk)
            self.image_model = self.embedder.model
            self.source = ImageSource(ImageStore(cfg.images_dir), cfg.image_size,
                                      device=rt.device)
            groups = self.image_model.param_groups(cfg.image_lr, cfg.backbone_lr_scale)
            self.image_lrs = [g["base_lr"] for g in groups]
            self.image_opt = torch.optim.Adam(groups)
        params = list(self.tables.parameters())
        if cfg.sparse_optimizer == "adagrad":
            self.sparse_opt = torch.optim.Adagrad(params, lr=cfg.sparse_lr, eps=1e-10)
        elif cfg.sparse_optimizer == "adam":
            self.sparse_opt = torch.optim.SparseAdam(params, lr=cfg.sparse_lr)
        else:
            self.sparse_opt = torch.optim.SGD(params, lr=cfg.sparse_lr)

    def lookup(self, table: str, values: np.ndarray) -> torch.Tensor:
        idx = np.searchsorted(self.keys[table], values)
        return self.tables[table](self.rt.index(idx))

    def inputs(self, b: Batch) -> Inputs:
        single = {f.name: self.lookup(f.table, b.values[f.name]) for f in self.fields if not f.is_list}
        lists = {f.name: self.lookup(f.table, b.lists[f.name]) for f in self.fields if f.is_list}
        if self.image_model is not None:
            ad, beh = self.schema.ad_image, self.schema.behavior_image
            keys = np.unique(np.concatenate([b.values[ad], b.lists[beh]]))
            emb = self.embedder.embed_from(self.source, keys)
            single[ad] = emb[self.rt.index(np.searchsorted(keys, b.values[ad]))]
            lists[beh] = emb[self.rt.index(np.searchsorted(keys, b.lists[beh]))]
        lengths = self.rt.index(b.lengths)
        segment = torch.repeat_interleave(torch.arange(b.n, device=lengths.device), lengths)
        return Inputs(b.n, single, lists, segment, lengths)

    def train(self) -> list[float]:
        """Train on every batch; the loss sums. ``self.step_s`` holds each step's wall time."""
        losses = []
        self.step_s = []
        for step, b in enumerate(self.batches):
            t0 = time.perf_counter()
            scale = lr_scale(step, self.cfg)
            for g in self.dense_opt.param_groups:
                g["lr"] = self.cfg.lr * scale
            for g in self.sparse_opt.param_groups:
                g["lr"] = self.cfg.sparse_lr * scale
            if self.image_model is not None:
                for g, lr in zip(self.image_opt.param_groups, self.image_lrs):
                    g["lr"] = lr * scale
                self.image_opt.zero_grad()
            with self.rt.compute():
                logits = self.model(self.inputs(b))
            labels = self.rt.index(b.values[self.schema.label].astype(np.int64))
            loss = F.cross_entropy(logits.to(self.rt.dtype), labels, reduction="sum")
            self.dense_opt.zero_grad()
            self.sparse_opt.zero_grad()
            (loss / b.n).backward()
            self.dense_opt.step()
            self.sparse_opt.step()
            if self.image_model is not None:
                self.image_opt.step()
            losses.append(float(loss.detach()))
            self.step_s.append(time.perf_counter() - t0)
        return losses

    def table_rows(self, table: str) -> dict[int, np.ndarray]:
        w = self.rt.download(self.tables[table].weight)
        return {int(k): w[i] for i, k in enumerate(self.keys[table])}
