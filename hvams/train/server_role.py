"""A server rank's run: shards and image channel, the passive step loop, checkpoints."""
from __future__ import annotations

from ..data.reader import day_files, worker_chunks
from ..distributed.failfast import maybe_inject_fault
from ..roles.image_channels import AmsImageChannel, PixelChannel
from ..roles.server import ServerLoop
from . import checkpoint as ckpt
from . import warm_start
from .assemble import server_channels
from .plan import lr_scale
from .report import Progress
from .summary import state_digest


def _total_rows(days) -> int:
    return sum(sum(c.hi - c.lo for c in worker_chunks(day_files(d), 0, 1)) for d in days)


def run_server(cfg, schema, topo, specs, counter, resume_dir, run_dir, train_days, tb, rt):
    shards, channels = server_channels(cfg, schema, topo, specs, resume_dir, counter, rt)
    image = next((ch for ch in channels if isinstance(ch, (AmsImageChannel, PixelChannel))), None)
    warm = {}
    if cfg.warm_start and resume_dir is None and isinstance(image, AmsImageChannel):
        warm = warm_start.warm_server(warm_start.warm_start_source(cfg.warm_start), image)
    warm_start.gather_report(topo, cfg, run_dir, resume_dir, warm if topo.role_rank == 0 else {})
    progress = None
    if topo.role_rank == 0:
        total = _total_rows(train_days) * cfg.epochs
        progress = Progress(total, cfg.progress, cfg.log_every)

    def on_checkpoint(step):
        d = ckpt.ckpt_dir(run_dir, step)
        files = ckpt.save_shards(d, topo.role_rank, shards,
                                 fault=lambda: maybe_inject_fault(topo.rank, step, "ckpt"))
        if topo.role_rank == 0 and isinstance(image, AmsImageChannel):
            files.update(ckpt.save_torch(d, "image.pt", image.state()))
        ckpt.collect_manifest(topo, d, files, None)

    def on_step(step, n):
        if progress:
            progress.update(step, n)
        tb.after_step(step)

    loop = ServerLoop(topo, channels, counter, lambda s: lr_scale(s, cfg), on_checkpoint, on_step)
    loop.run()
    if progress:
        progress.close()
    out = {"server": loop.stats, "rows": {t: len(s) for t, s in shards.items()}}
    if image is not None:
        out["images"] = image.stats()
        if isinstance(image, AmsImageChannel):
            out["image_model_sha256"] = state_digest(image.embedder.model.state_dict())
    return out
