"""The peer's training loop, DLRM-style: one process, or every rank of a ``torchrun`` job.

``python -m hvams.peer.train --config CFG --vocab VOCAB.npz --streams W``
reads the same batches as an hvams run with W workers: the day split into W
streams exactly as hvams's readers split it, rank r of R reading streams
r*W/R .. (r+1)*W/R - 1 and training on their t-th batches together. So one
process (R = 1) sees hvams's global batches, and R = W ranks see what hvams's
workers see. The loss is the global batch's mean, as in hvams. Rank 0 writes
``peer-summary.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..config import ConfigError, TrainConfig, load_config
from ..data.reader import DayReader
from ..data.schema import Schema
from ..metrics import Scores, evaluate_parts
from ..runtime.memory import peak_rss_mb
from ..reference import concat
from ..train.plan import lr_scale, resolve_days
from .model import TorchRecIdOnly, feature_order, to_peer_batch
from .sharding import shard
from .vocab import load_vocab

SUMMARY = "peer-summary.json"


class Stages:
    """Seconds per stage on this rank."""

    def __init__(self):
        self.s: dict[str, float] = {}
        self.t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.s[name] = self.s.get(name, 0.0) + now - self.t
        self.t = now


class Streams:
    """This rank's streams of one day; ``next()`` is their t-th batches together (or None)."""

    def __init__(self, day, schema: Schema, batch_size: int, rank: int, ranks: int, streams: int,
                 cfg: TrainConfig):
        per = streams // ranks
        self.its = [iter(DayReader(day, schema, batch_size, s, streams, cfg.prefetch,
                                   cfg.on_bad_row)) for s in range(rank * per, (rank + 1) * per)]
        self.size = batch_size * per

    def next(self):
        parts = [b for b in (next(it, None) for it in self.its) if b is not None and b.n]
        return concat(parts) if parts else None


def global_sum(x: float) -> float:
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0])


class PeerTrainer:
    def __init__(self, cfg: TrainConfig, vocab: dict[str, np.ndarray], streams: int):
        self.cfg, self.vocab = cfg, vocab
        self.schema = Schema.load(cfg.data)
        self.rank, self.ranks = dist.get_rank(), dist.get_world_size()
        if streams % self.ranks:
            raise SystemExit(f"hvams peer: --streams {streams} is not a multiple of the "
                             f"{self.ranks} ranks")
        self.streams = streams
        self.dmp, self.plan = shard(TorchRecIdOnly(cfg, self.schema, vocab), cfg, vocab)
        self.dense = [p for n, p in self.dmp.named_parameters() if ".embedding_bags." not in n]
        self.dense_opt = torch.optim.Adam(self.dense, lr=cfg.lr)
        self.keys = feature_order(cfg, self.schema, vocab)
        self.losses: list[float] = []   # this rank's loss sums
        self.step_s: list[float] = []
        self.stages = Stages()
        self.samples = 0
        self._scale = 1.0

    def _set_lr(self, step: int) -> None:
        scale = lr_scale(step, self.cfg)
        if scale == self._scale:
            return
        self._scale = scale
        for g in self.dense_opt.param_groups:
            g["lr"] = self.cfg.lr * scale
        fused = self.dmp.fused_optimizer
        for g in fused.param_groups:
            g["lr"] = self.cfg.sparse_lr * scale
        fused.step()  # FBGEMM takes the new rate at its next backward

    def train(self, profile_steps: tuple[int, int] | None = None, profile_out: Path | None = None):
        cfg, step, last_end = self.cfg, 0, None
        train_days, _ = resolve_days(cfg)
        prof = None
        self.stages.t = time.perf_counter()
        for _ in range(cfg.epochs):
            for day in train_days:
                streams = Streams(day, self.schema, cfg.batch_size, self.rank, self.ranks,
                                  self.streams, cfg)
                while cfg.max_steps is None or step < cfg.max_steps:
                    if profile_steps and step == profile_steps[0] and self.rank == 0:
                        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                        prof.__enter__()
                    t0 = time.perf_counter()
                    batch = streams.next()
                    pb = to_peer_batch(batch, self.schema, self.vocab, self.keys, streams.size)
                    self.stages.lap("read")
                    n_global = global_sum(pb.n)
                    self.stages.lap("count")
                    if n_global == 0:
                        break
                    self._set_lr(step)
                    self.dense_opt.zero_grad()
                    logits = self.dmp(pb.features)
                    loss_sum = (F.cross_entropy(logits, pb.labels, reduction="none") * pb.weights).sum()
                    self.stages.lap("forward")
                    # TorchRec divides the tables' gradients by the ranks in the pooled
                    # all-to-all's backward, as DDP does the dense ones: x ranks makes both
                    # the global batch's mean. The fused sparse update runs in backward().
                    (loss_sum * (self.ranks / n_global)).backward()
                    self.stages.lap("backward")
                    self.dense_opt.step()
                    self.stages.lap("dense_step")
                    end = time.perf_counter()
                    self.step_s.append(end - (last_end if last_end is not None else t0))
                    last_end = end
                    self.losses.append(float(loss_sum.detach()))
                    self.samples += pb.n
                    step += 1
                    if prof is not None and step == profile_steps[1]:
                        prof.__exit__(None, None, None)
                        profile_out.write_text(prof.key_averages().table(
                            sort_by="self_cpu_time_total", row_limit=30))
                        prof = None
        return step

    @torch.no_grad()
    def evaluate(self, day) -> dict | None:
        self.dmp.eval()
        streams = Streams(day, self.schema, self.cfg.eval_batch_size, self.rank, self.ranks,
                          self.streams, self.cfg)
        scores = Scores(self.schema)
        while True:
            batch = streams.next()
            pb = to_peer_batch(batch, self.schema, self.vocab, self.keys, streams.size)
            if global_sum(pb.n) == 0:
                break
            prob = torch.softmax(self.dmp(pb.features).float(), dim=1)[:pb.n, 1].numpy()
            if pb.n:
                scores.add(batch, prob)
        self.dmp.train()
        local = scores.local()
        gathered = [None] * self.ranks if self.rank == 0 else None
        dist.gather_object(local, gathered, dst=0)
        if self.rank != 0:
            return None
        return evaluate_parts(gathered)


def _init_process_group() -> None:
    if "RANK" not in os.environ:  # one process without torchrun
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(port)})
    dist.init_process_group("gloo")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hvams.peer.train", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="TrainConfig YAML (data, batch_size, seed, ...).")
    ap.add_argument("--vocab", required=True, help="npz of each table's sorted ids (hvams.peer.vocab).")
    ap.add_argument("--streams", type=int, required=True, help="hvams workers whose batches to read.")
    ap.add_argument("--threads", type=int, help="torch threads of this process.")
    ap.add_argument("--profile", help="FIRST:LAST steps of a torch.profiler flat profile on rank 0.")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    if args.threads:
        torch.set_num_threads(args.threads)
    _init_process_group()
    t0 = time.perf_counter()
    try:
        trainer = PeerTrainer(cfg, load_vocab(Path(args.vocab)), args.streams)
    except ConfigError as exc:
        print(f"hvams peer: error: {exc}", file=sys.stderr, flush=True)
        return 2
    out = Path(cfg.out)
    profile = tuple(int(x) for x in args.profile.split(":")) if args.profile else None
    steps = trainer.train(profile, out / "profile-rank0.txt")
    train_s = time.perf_counter() - t0
    _, test_day = resolve_days(cfg)
    metrics = trainer.evaluate(test_day) if cfg.evaluate else None
    losses = torch.tensor(trainer.losses, dtype=torch.float64)
    dist.all_reduce(losses)
    per_rank = {"peak_rss_mb": peak_rss_mb(), "stage_s": trainer.stages.s, "samples": trainer.samples}
    gathered = [None] * trainer.ranks if trainer.rank == 0 else None
    dist.gather_object(per_rank, gathered, dst=0)
    if trainer.rank == 0:
        stage_names = sorted({k for g in gathered for k in g["stage_s"]})
        summary = {"system": "torchrec", "ranks": trainer.ranks, "streams": trainer.streams,
                   "plan": trainer.plan, "steps": steps,
                   "samples": sum(g["samples"] for g in gathered),
                   "train_s": train_s, "step_s": trainer.step_s, "losses": losses.tolist(),
                   "stage_s": {k: sum(g["stage_s"].get(k, 0.0) for g in gathered) / len(gathered)
                               for k in stage_names},
                   "peak_rss_mb": [g["peak_rss_mb"] for g in gathered], "metrics": metrics}
        out.mkdir(parents=True, exist_ok=True)
        (out / SUMMARY).write_text(json.dumps(summary, indent=1))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # No interpreter teardown: gloo's worker threads can still hold tensors whose release
    # then needs the GIL of a finalizing interpreter, and abort (seen 1 run in ~10).
    os._exit(code)
