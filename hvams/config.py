"""The one typed configuration of a training run, shared by CLI and library.

Load order: defaults < YAML file (``--config``) < command-line flags. Every
key is validated against its declared type by pydantic (numbers in YAML
scientific notation such as ``1e-3`` become floats; booleans are YAML
booleans or one of ``BOOL_WORDS``); unknown keys and impossible values are
errors that name the key. The resolved config is saved as ``RUN_DIR/config.yaml``.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated

import pydantic
import yaml

MODELS = ("idonly", "din", "dicm", "din+img")
AGGREGATORS = ("mqap", "attentive", "sum", "max", "concat")
STRATEGIES = ("ams", "store-in-server", "store-in-worker")
BACKBONES = ("small-cnn", "resnet18", "vgg16", "mobilenet_v3_small", "true-attributes")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp64")
COMPRESSIONS = ("none", "fp16")  # allreduce_compression, row_compression


class ConfigError(ValueError):
    """A configuration key or value that cannot be used."""

    user_error = True  # bad input: reported without a traceback


# In ``images``, replaced by each rank's node name: the store placed on that host.
NODE_FIELD = "{node}"

# The strings a boolean key accepts besides YAML's own true/false (case-insensitive).
BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _flag(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in BOOL_WORDS:
        return BOOL_WORDS[value.strip().lower()]
    raise ValueError(f"expected a boolean (true/false, or one of {sorted(BOOL_WORDS)})")


# A boolean config key: YAML booleans or BOOL_WORDS, never a truthy string or a number.
Flag = Annotated[bool, pydantic.BeforeValidator(_flag)]


@dataclass
class TrainConfig:
    """Everything that defines a training run."""

    data: str = ""                       # data directory (schema.json, day=NN/)
    out: str = "runs/latest"             # RUN_DIR
    images: str | None = None            # image store; default DATA/images; {node}: this host's
    train_days: list[str] | None = None  # default: world.json's, else all days but the last
    test_day: str | None = None          # default: world.json's, else the last day
    model: str = "idonly"  # idonly, din, dicm or din+img
    servers: int = 1  # server ranks; the rest of the job's ranks are workers
    placement: str = "block"  # block (ranks 0..S-1) or spread (round-robin over nodes)
    seed: int = 0  # seeds the models, the ID rows and the image model
    epochs: int = 1  # passes over the training days
    max_steps: int | None = None         # stop after this many steps (all epochs)
    batch_size: int = 256                # per worker
    eval_batch_size: int = 1024  # samples per worker per evaluation step
    prefetch: int = 2  # batches each worker's reader thread reads ahead
    on_bad_row: str = "error"  # error (stop, naming file and row) or skip (count and report)
    # model
    emb_dim: int = 12  # width of every ID and image embedding (the paper's 12)
    mlp: list[int] = field(default_factory=lambda: [200, 80])   # CTR tower's hidden layers
    attention: list[int] = field(default_factory=lambda: [64, 16])  # attention unit's layers
    # dense optimizer on workers (paper: Adam 0.001, x0.9 every 24,000 batches)
    lr: float = 0.001  # Adam learning rate of the worker model
    lr_decay: float = 0.9  # learning rates x lr_decay every lr_decay_steps steps
    lr_decay_steps: int = 24000  # steps between learning-rate decays
    # sparse optimizer on servers
    sparse_optimizer: str = "adagrad"  # adagrad, adam or sgd, on the servers' ID rows
    sparse_lr: float = 0.05  # learning rate of the ID embeddings
    init_scale: float = 0.05  # ID rows start uniform in [-init_scale, init_scale)
    # images (AMS)
    aggregator: str = "mqap"  # behavior images: mqap, attentive, sum, max or concat
    strategy: str = "ams"  # ams, store-in-server or store-in-worker
    backbone: str = "small-cnn"  # small-cnn, resnet18, vgg16 (fc6), mobilenet_v3_small, true-attributes
    backbone_weights: str | None = None  # state dict (default: random); true-attributes: truth table
    freeze_backbone: Flag = False  # fixed backbone, features cached per image; the head trains
    image_size: int = 32  # side in pixels images are resized to
    head: list[int] | None = None        # default: the paper's 256-64 (after the backbone)
    image_lr: float = 0.001  # Adam learning rate of the shared image model
    feature_cache: int = 200_000         # frozen backbone outputs kept per rank
    pixel_cache: int = 100_000           # decoded, resized images kept per rank
    concat_behaviors: int = 10  # newest behaviors the concat aggregator keeps
    max_pixels: int = 4096 * 4096  # images whose header claims more pixels are refused (bombs)
    cache_bytes: int | None = None       # pixel + feature caches per rank; default: 40% of free
                                         # GPU memory on CUDA, no byte bound on the CPU
    # devices (hvams.runtime)
    device: str = "auto"                 # auto | cpu | cuda (auto: CUDA where a GPU is visible)
    server_device: str | None = None     # overrides device on servers
    worker_device: str | None = None     # overrides device on workers
    precision: str = "auto"              # auto | fp32 | bf16 | fp64 (auto: bf16 on CUDA, else fp32)
    allreduce_compression: str = "none"  # none | fp16: Horovod's allreduces in fp16 on the wire
    row_compression: str = "none"        # none | fp16: rows and their gradients in fp16 on the wire
    sync_stages: Flag = False            # CUDA: synchronise at stage boundaries (exact stage times)
    # bookkeeping
    checkpoint_every: int = 0            # steps; 0 = only at the end
    resume: Flag = False  # continue from the newest complete checkpoint in out
    progress: Flag = True  # progress bar / log lines on the first server
    log_every: int = 50  # steps between progress lines and TensorBoard points
    eval_every: int = 0                  # steps between test evaluations; 0 = after each epoch
    evaluate: Flag = True                # False: no test evaluation at all (benchmarks)
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
        need(self.backbone != "true-attributes" or self.freeze_backbone, "freeze_backbone",
             "must be true with backbone true-attributes (a lookup table, nothing to train)")
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
        need(self.cache_bytes is None or self.cache_bytes >= 0, "cache_bytes", "must be >= 0")
        for key in ("device", "server_device", "worker_device"):
            need(getattr(self, key) in DEVICES + ((None,) if key != "device" else ()), key,
                 f"must be one of {DEVICES}")
        need(self.precision in PRECISIONS, "precision", f"must be one of {PRECISIONS}")
        for key in ("allreduce_compression", "row_compression"):
            need(getattr(self, key) in COMPRESSIONS, key, "must be " + " or ".join(COMPRESSIONS))
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


_ADAPTER = pydantic.TypeAdapter(TrainConfig)


def _type_name(annotation) -> str:
    name = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
    return {"Flag": "boolean", "bool": "boolean"}.get(name, name)


def merge(base: TrainConfig, values: dict, source: str) -> TrainConfig:
    """``base`` with ``values`` applied and every key checked against its declared type.

    Unknown keys raise ConfigError naming them and the closest valid key; a
    value of the wrong type raises ConfigError naming the key, the value and
    the expected type.
    """
    known = {f.name: f for f in fields(TrainConfig)}
    unknown = sorted(k for k in values if k.replace("-", "_") not in known)
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k.replace("-", "_"), known, n=1)
            hints.append(f"{k!r} (did you mean {close[0]!r}?)" if close else repr(k))
        raise ConfigError(f"{source}: unknown config key(s) {', '.join(hints)}; "
                          f"the keys are listed in docs/cli.md")
    merged = base.to_dict()
    merged.update({k.replace("-", "_"): v for k, v in values.items()})
    try:
        return _ADAPTER.validate_python(merged)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else "?"
        want = _type_name(known[key].type) if key in known else "?"
        value = merged.get(key)
        raise ConfigError(f"{source}: config key {key!r}: {value!r} ({type(value).__name__}) is "
                          f"not a valid {want}: {err['msg']}") from None


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
