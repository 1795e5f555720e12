"""A server rank's run: its channels, built fresh and restored, then the passive step loop."""
from __future__ import annotations

from mpi4py import MPI

from ..data.reader import day_files, worker_chunks
from ..data.schema import IMAGE_CHANNEL
from ..distributed.failfast import maybe_inject_fault
from ..embedding.shard import EmbeddingShard
from ..protocol.timing import stage
from ..train import checkpoint as ckpt
from ..train.days import DayLog
from ..train.plan import lr_scale
from ..train.report import Progress
from ..train.restore import restore_server
from ..train.summary import state_digest
from .channels import EmbeddingChannel
from .loop import ServerLoop


def _total_rows(days) -> int:
    return sum(sum(c.hi - c.lo for c in worker_chunks(day_files(d), 0, 1)) for d in days)


def build_channels(job):
    """This server's channels in the specs' order: an ID shard per table (fresh rows), and
    the image channel the strategy builds. Nothing is loaded here."""
    cfg, shards, channels, image = job.cfg, {}, [], None
    for spec in job.specs:
        if spec.name == IMAGE_CHANNEL:
            image = job.strategy.server_channel(spec, job.rt, job.topo, job.counter)
            channels.append(image)
            continue
        shards[spec.name] = EmbeddingShard.for_table(cfg, spec.name, spec.dim, spec.dtype,
                                                     job.topo.role_rank)
        channels.append(EmbeddingChannel(spec, shards[spec.name]))
    return shards, channels, image


class ServerRun:
    """The server loop of ``job`` with what happens at a checkpoint and after a step."""

    def __init__(self, job):
        self.job, self.topo = job, job.topo
        self.shards, channels, self.image = build_channels(job)
        with stage("restore"):
            saved = restore_server(job, self.shards, self.image)
        # The chain the next delta extends (None: the next checkpoint is a full base).
        self.chain = None
        if saved is not None:
            self.chain = ckpt.load_manifest(saved).get("chain") or [saved.name]
            for shard in self.shards.values():
                shard.mark_saved()
        self.progress = None
        if self.topo.role_rank == 0:
            total = _total_rows(job.train_days) * job.cfg.epochs
            self.progress = Progress(total, job.cfg.progress, job.cfg.log_every)
        self.days = DayLog(job)
        self.loop = ServerLoop(self.topo, channels, job.counter, lambda s: lr_scale(s, job.cfg),
                               self.checkpoint, self.after_step, self.day_end)

    def checkpoint(self, step: int) -> None:
        """This server's shards, whole or as a delta on the chain so far, and the first
        server's image-model files (the strategy's, whole)."""
        cfg, d = self.job.cfg, ckpt.ckpt_dir(self.job.run_dir, step)
        delta = (cfg.checkpoint_mode == "delta" and self.chain is not None
                 and len(self.chain) <= cfg.delta_compact_every and self.chain[-1] != d.name)
        # one kind for the whole checkpoint: the manifest (server 0's) speaks for every file
        delta = bool(self.topo.role_comm.allreduce(int(delta), op=MPI.MIN))
        files = ckpt.save_shards(d, self.topo.role_rank, self.shards, delta=delta,
                                 fault=lambda: maybe_inject_fault(self.topo.rank, step, "ckpt"))
        meta = None
        if self.topo.role_rank == 0:
            meta = ckpt.chain_meta(self.job.run_dir, self.chain, d.name) if delta else {}
            if self.image is not None:
                for name, state in self.job.strategy.server_state(self.image).items():
                    files.update(ckpt.save_torch(d, name, state))
        ckpt.collect_manifest(self.topo, d, files, meta, keep=cfg.keep_checkpoints)
        self.chain = [*self.chain, d.name] if delta else [d.name]
        for shard in self.shards.values():
            shard.mark_saved()

    def day_end(self, step: int) -> None:
        """A training day is over: age the rows (TTL), then report the day with every rank."""
        for shard in self.shards.values():
            shard.end_day()
        self.days.end_day(step, self.shards)

    def after_step(self, step: int, n: int) -> None:
        if self.progress:
            self.progress.update(step, n)
        self.job.tb.after_step(step)

    def run(self) -> dict:
        self.loop.run()
        if self.progress:
            self.progress.close()
        out = {"server": self.loop.stats, "rows": {t: len(s) for t, s in self.shards.items()},
               "row_counts": {t: s.live_counts() for t, s in self.shards.items()},
               "stopped_early": self.loop.stopped_early}
        if self.image is not None:
            out["images"] = self.image.stats()
            if self.image.trained_model is not None:
                out["image_model_sha256"] = state_digest(self.image.trained_model.state_dict())
        return out


def run_server(job) -> dict:
    """Serve ``job``'s workers until they stop; this server's report."""
    return ServerRun(job).run()
