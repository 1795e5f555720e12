"""Plan and shard the peer's tables with TorchRec's own planner and DMP.

The tables get TorchRec's fused optimizer (FBGEMM applies it inside the
backward pass) of the same kind and settings as hvams's servers: adagrad ->
EXACT_ADAGRAD (per element, as hvams and ``torch.optim.Adagrad``), sgd ->
EXACT_SGD. FBGEMM's CPU kernels have no Adam. The planner chooses table-wise or row-wise per table;
data-parallel tables are ruled out, since they would train with a dense
optimizer instead.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.distributed as dist
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.types import ParameterConstraints, Topology
from torchrec.distributed.types import ShardingType
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

from ..config import ConfigError, TrainConfig
from ..embedding.init import initial_rows
from .model import TorchRecIdOnly

SHARDING_TYPES = [ShardingType.TABLE_WISE.value, ShardingType.ROW_WISE.value]


def fused_optimizer(cfg: TrainConfig):
    """(torch optimizer class, kwargs) that TorchRec maps to the FBGEMM kernel."""
    if cfg.sparse_optimizer == "adagrad":
        return torch.optim.Adagrad, {"lr": cfg.sparse_lr, "eps": 1e-10}
    if cfg.sparse_optimizer == "sgd":
        return torch.optim.SGD, {"lr": cfg.sparse_lr}
    raise ConfigError(f"config key 'sparse_optimizer': FBGEMM's CPU kernels have no "
                      f"{cfg.sparse_optimizer!r}; the TorchRec peer takes adagrad or sgd")


def shard(model: TorchRecIdOnly, cfg: TrainConfig, vocab: dict[str, np.ndarray]):
    """DMP of ``model`` over the default process group; (dmp, plan as text)."""
    # The planner warns about planning without a hardware probe, as on a CPU it must.
    logging.getLogger("torchrec.distributed.planner").setLevel(logging.ERROR)
    opt_class, opt_kwargs = fused_optimizer(cfg)
    apply_optimizer_in_backward(opt_class, model.ebc.parameters(), opt_kwargs)
    world = dist.get_world_size()
    constraints = {t.name: ParameterConstraints(sharding_types=SHARDING_TYPES)
                   for t in model.ebc.embedding_bag_configs()}
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world, local_world_size=world, compute_device="cpu"),
        constraints=constraints)
    sharders = [EmbeddingBagCollectionSharder()]
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan,
                                   sharders=sharders)
    load_initial_rows(dmp, cfg, vocab)
    return dmp, str(plan)


@torch.no_grad()
def load_initial_rows(dmp, cfg: TrainConfig, vocab: dict[str, np.ndarray]) -> None:
    """Each local shard's rows = hvams's deterministic initial rows of its ids.

    The same function of (seed, table, id) that hvams's servers start from, so
    both systems begin at the same point.
    """
    for name, tensor in dmp.state_dict().items():
        if not name.endswith(".weight") or ".embedding_bags." not in name:
            continue
        table = name.split(".embedding_bags.")[1].rsplit(".", 1)[0]
        keys = vocab[table]
        for s in tensor.local_shards():
            (r0, c0), (nr, nc) = s.metadata.shard_offsets, s.metadata.shard_sizes
            block = np.zeros((nr, cfg.emb_dim), np.float32)
            ids = keys[r0:r0 + nr]
            block[:len(ids)] = initial_rows(ids, cfg.emb_dim, table, cfg.seed, cfg.init_scale)
            s.tensor.copy_(torch.from_numpy(block[:, c0:c0 + nc]))


def table_rows(dmp, table: str, vocab: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
    """This rank's rows of ``table`` by raw id (tests compare them with hvams's)."""
    out = {}
    for name, tensor in dmp.state_dict().items():
        if name.endswith(f".embedding_bags.{table}.weight"):
            for s in tensor.local_shards():
                r0, nr = s.metadata.shard_offsets[0], s.metadata.shard_sizes[0]
                w = s.tensor.detach().numpy()
                ids = vocab[table][r0:r0 + nr]
                out.update({int(k): w[i].copy() for i, k in enumerate(ids)})
    return out
