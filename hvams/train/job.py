"""``Job``: everything a role's run needs, made once per rank by ``run_training``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import TrainConfig
from ..data.schema import Schema
from ..distributed.topology import Topology
from ..protocol.accounting import ByteCounter
from ..protocol.channels import ChannelSpec, id_channel
from ..protocol.compression import Compression
from ..runtime import Runtime, wire_dtype
from ..strategies.base import NoImages
from .restore import Start
from .tensorboard import TensorBoardLog


def channel_specs(cfg: TrainConfig, schema: Schema, strategy: NoImages) -> list[ChannelSpec]:
    """The channels of this run, in the fixed order servers and workers share: one per
    ID table, then the strategy's image channel if it has one."""
    dtype = wire_dtype(cfg.precision)
    wire = Compression(cfg.row_compression).row_dtype(dtype)
    specs = [id_channel(t, cfg.emb_dim, dtype, wire) for t in schema.tables]
    image = strategy.image_spec(dtype)
    return specs + ([image] if image is not None else [])


@dataclass
class Job:
    cfg: TrainConfig
    schema: Schema
    topo: Topology
    rt: Runtime                  # this rank's device and precision
    strategy: NoImages           # the image strategy (NoImages for a model without images)
    specs: list[ChannelSpec]     # the channels, in the order both roles use
    counter: ByteCounter         # bytes sent, by category
    run_dir: Path
    train_days: list[Path]
    test_day: Path
    tb: TensorBoardLog
    start: Start                 # what the restore step applies
