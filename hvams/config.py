"""The one typed configuration of a training run, shared by CLI and library.

Load order: defaults < YAML file (``--config``) < command-line flags. Unknown
keys and impossible values are errors that name the key. The resolved config
is saved as ``RUN_DIR/config.yaml``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

MODELS = ("idonly", "din", "dicm", "din+img")
AGGREGATORS = ("mqap", "attentive", "sum", "max", "concat")
STRATEGIES = ("ams", "store-in-server", "store-in-worker")
BACKBONES = ("small-cnn", "resnet18", "vgg16", "mobilenet_v3_small")


class ConfigError(ValueError):
    """A configuration key or value that cannot be used."""


@dataclass
class TrainConfig:
    """Everything that defines a training run."""

    data: str = ""                       # data directory (schema.json, day=NN/)
    out: str = "runs/latest"             # RUN_DIR
    images: str | None = None            # image store; default DATA/images
    train_days: list[str] | None = None  # default: world.json's, else all days but the last
    test_day: str | None = None          # default: world.json's, else the last day
    model: str = "idonly"
    servers: int = 1
    placement: str = "block"
    seed: int = 0
    epochs: int = 1
    max_steps: int | None = None         # stop after this many steps (all epochs)
    batch_size: int = 256                # per worker
    eval_batch_size: int = 1024
    prefetch: int = 2
    on_bad_row: str = "error"
    # model
    emb_dim: int = 12
    mlp: list[int] = field(default_factory=lambda: [200, 80])
    attention: list[int] = field(default_factory=lambda: [64, 16])
    # dense optimizer on workers (paper: Adam 0.001, x0.9 every 24,000 batches)
    lr: float = 0.001
    lr_decay: float = 0.9
    lr_decay_steps: int = 24000
    # sparse optimizer on servers
    sparse_optimizer: str = "adagrad"
    sparse_lr: float = 0.05
    init_scale: float = 0.05
    # images (AMS)
    aggregator: str = "mqap"
    strategy: str = "ams"
    backbone: str = "small-cnn"
    backbone_weights: str | None = None
    freeze_backbone: bool = False
    image_size: int = 32
    head: list[int] | None = None        # default: the paper's 256-64 (after the backbone)
    image_lr: float = 0.001
    feature_cache: int = 200_000         # frozen backbone outputs kept per rank
    pixel_cache: int = 100_000           # decoded, resized images kept per rank
    concat_behaviors: int = 10
    max_pixels: int = 4096 * 4096
    # bookkeeping
    checkpoint_every: int = 0            # steps; 0 = only at the end
    resume: bool = False
    progress: bool = True
    log_every: int = 50
    eval_every: int = 0                  # steps between test evaluations; 0 = after each epoch
    evaluate: bool = True                # False: no test evaluation at all (benchmarks)
    tensorboard: str | None = None       # TensorBoard log directory
    warm_start: str | None = None        # RUN_DIR: load all but the ID embeddings (paper Table 5)
    step_timeout: float = 600.0          # seconds without progress before a rank aborts the job

    def validate(self) -> "TrainConfig":
        def need(cond, key, msg):
            if not cond:
                raise ConfigError(f"config key {key!r}: {msg} (got {getattr(self, key)!r})")

        need(bool(self.data), "data", "a data directory is required")
        need(self.model in MODELS, "model", f"must be one of {MODELS}")
        need(self.aggregator in AGGREGATORS, "aggregator", f"must be one of {AGGREGATORS}")
        need(self.strategy in STRATEGIES, "strategy", f"must be one of {STRATEGIES}")
        need(self.backbone in BACKBONES, "backbone", f"must be one of {BACKBONES}")
        need(self.placement in ("block", "spread"), "placement", "must be block or spread")
        need(self.on_bad_row in ("error", "skip"), "on_bad_row", "must be error or skip")
        need(self.sparse_optimizer in ("adagrad", "adam", "sgd"), "sparse_optimizer",
             "must be adagrad, adam or sgd")
        for key in ("servers", "epochs", "batch_size", "eval_batch_size", "emb_dim",
                    "lr_decay_steps", "image_size", "concat_behaviors"):
            need(getattr(self, key) >= 1, key, "must be at least 1")
        for key in ("lr", "sparse_lr", "image_lr", "init_scale"):
            need(getattr(self, key) > 0, key, "must be positive")
        need(0 < self.lr_decay <= 1, "lr_decay", "must be in (0, 1]")
        need(self.max_steps is None or self.max_steps >= 1, "max_steps", "must be at least 1")
        need(self.checkpoint_every >= 0, "checkpoint_every", "must be >= 0")
        need(self.eval_every >= 0, "eval_every", "must be >= 0")
        need(self.step_timeout >= 0, "step_timeout", "must be >= 0 (0 = no watchdog)")
        need(all(d >= 1 for d in self.mlp) and self.mlp, "mlp", "needs positive layer sizes")
        need(all(d >= 1 for d in self.attention), "attention", "needs positive layer sizes")
        need(self.feature_cache >= 0, "feature_cache", "must be >= 0")
        need(self.pixel_cache >= 0, "pixel_cache", "must be >= 0")
        return self

    @property
    def images_dir(self) -> Path:
        return Path(self.images) if self.images else Path(self.data) / "images"

    @property
    def uses_images(self) -> bool:
        return self.model in ("dicm", "din+img")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def merge(base: TrainConfig, values: dict, source: str) -> TrainConfig:
    """``base`` with ``values`` applied; unknown keys raise ConfigError naming them."""
    known = {f.name: f for f in fields(TrainConfig)}
    unknown = sorted(k for k in values if k.replace("-", "_") not in known)
    if unknown:
        raise ConfigError(f"{source}: unknown config key(s) {unknown}")
    out = dataclasses.replace(base)
    for key, value in values.items():
        setattr(out, key.replace("-", "_"), value)
    return out


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """Defaults, then the YAML file, then ``overrides`` (None values are ignored)."""
    cfg = TrainConfig()
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: must be a mapping of config keys")
        cfg = merge(cfg, data, str(path))
    cfg = merge(cfg, {k: v for k, v in (overrides or {}).items() if v is not None}, "flags")
    return cfg.validate()
