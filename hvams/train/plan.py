"""Which days train and which day tests, and the learning-rate schedule."""
from __future__ import annotations

from pathlib import Path

from ..config import ConfigError, TrainConfig
from ..data.reader import list_days
from ..data.synth import load_world_info


def resolve_days(cfg: TrainConfig) -> tuple[list[Path], Path]:
    """Train days and test day: from the config, else world.json, else last = test."""
    root = Path(cfg.data)
    days = list_days(root)
    if not days:
        raise ConfigError(f"config key 'data': {root} has no day=NN directories")
    info = load_world_info(root) or {}
    train = cfg.train_days or info.get("train_days") or [d.name for d in days[:-1]]
    test = cfg.test_day or info.get("test_day") or days[-1].name
    paths = [root / d for d in train]
    for p in paths + [root / test]:
        if not p.is_dir():
            raise ConfigError(f"day directory {p} does not exist")
    if not paths:
        raise ConfigError(f"{root}: no training day (need at least two days, or train_days)")
    return paths, root / test


def lr_scale(step: int, cfg: TrainConfig) -> float:
    """Multiplier of every learning rate at ``step``: decay^(step // decay_steps)."""
    return cfg.lr_decay ** (step // cfg.lr_decay_steps)
