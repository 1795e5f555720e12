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
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal, Union, get_args, get_origin

import pydantic
import yaml

from .protocol.compression import Compression
from .strategies import Strategy

Model = Literal["idonly", "din", "dicm", "din+img"]
Aggregator = Literal["mqap", "attentive", "sum", "max", "concat"]
Backbone = Literal["small-cnn", "resnet18", "vgg16", "mobilenet_v3_small", "true-attributes"]
Placement = Literal["block", "spread"]
OnBadRow = Literal["error", "skip"]
SparseOptimizer = Literal["adagrad", "adam", "sgd"]
Device = Literal["auto", "cpu", "cuda"]
PrecisionName = Literal["auto", "fp32", "bf16", "fp64"]
MemoryFormat = Literal["auto", "channels-last", "contiguous"]
AllreducePath = Literal["auto", "device", "host"]
Eviction = Literal["lru", "lfu"]
CheckpointMode = Literal["full", "delta"]
CheckpointSignal = Literal["SIGUSR1", "SIGUSR2", "SIGTERM"]

IMAGE_MODELS = ("dicm", "din+img")


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


def _resume(value):
    return True if isinstance(value, str) and value.strip().lower() == "auto" else _flag(value)


# ``resume``: a Flag that also reads "auto" (its meaning: a checkpoint if there is one).
ResumeFlag = Annotated[bool, pydantic.BeforeValidator(_resume)]


@dataclass(frozen=True)
class Key:
    """A config key's metadata: its help text and how ``hvams train`` spells it.

    ``flag``: the key has an option ``--key-name`` (else it is YAML only).
    Booleans name their options instead: ``on`` sets true, ``off`` sets false.
    ``path``: the option's value must be an existing ``file`` or ``dir``, or
    ``out-dir`` (a directory, made if missing).
    """

    help: str
    flag: bool = True
    on: str | None = None
    off: str | None = None
    path: str | None = None
    on_values: tuple[str, ...] = ()   # ``on`` may also be given one of these words


def key(default=MISSING, help: str = "", *, factory=MISSING, **how):
    """A dataclass field carrying its ``Key``."""
    meta = {"key": Key(help, **how)}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything that defines a training run."""

    data: str = key("", "Data directory (schema.json, day=NN/).")
    out: str = key("runs/latest", "Run directory (config, metrics, checkpoints).")
    images: str | None = key(None, "Image store (default DATA/images); {node} in it: each "
                                   "host's placed store (hvams images place).")
    train_days: list[str] | None = key(None, "Days to train on (default: world.json's, else "
                                             "all days but the last).", flag=False)
    test_day: str | None = key(None, "Day to test on (default: world.json's, else the last day).",
                               flag=False)
    model: Model = key("idonly", "The worker model (the CTR network).")
    servers: int = key(1, "Server ranks; the rest of the job's ranks are workers.")
    placement: Placement = key("block", "Which ranks become servers: block (ranks 0..S-1) or "
                                        "spread (round-robin over nodes).")
    seed: int = key(0, "Seeds the models, the ID rows and the image model.")
    epochs: int = key(1, "Passes over the training days.")
    max_steps: int | None = key(None, "Stop after this many steps (all epochs).")
    batch_size: int = key(256, "Samples per worker per step.")
    eval_batch_size: int = key(1024, "Samples per worker per evaluation step.", flag=False)
    prefetch: int = key(2, "Batches each worker's reader thread reads ahead.", flag=False)
    on_bad_row: OnBadRow = key("error", "A malformed row: error (stop, naming file and row) or "
                                        "skip (count and report).")
    # model
    emb_dim: int = key(12, "Width of every ID and image embedding (the paper's 12).")
    mlp: list[int] = key(help="Hidden layers of the CTR tower.", factory=lambda: [200, 80],
                         flag=False)
    attention: list[int] = key(help="Layers of the attention unit.", factory=lambda: [64, 16],
                               flag=False)
    # dense optimizer on workers (paper: Adam 0.001, x0.9 every 24,000 batches)
    lr: float = key(0.001, "Adam learning rate of the worker model.")
    lr_decay: float = key(0.9, "Learning rates x lr_decay every lr_decay_steps steps.", flag=False)
    lr_decay_steps: int = key(24000, "Steps between learning-rate decays.", flag=False)
    # sparse optimizer on servers
    sparse_optimizer: SparseOptimizer = key("adagrad", "Optimizer of the servers' ID rows.")
    sparse_lr: float = key(0.05, "Learning rate of the ID embeddings.")
    init_scale: float = key(0.05, "ID rows start uniform in [-init_scale, init_scale).",
                            flag=False)
    # images (AMS)
    aggregator: Aggregator = key("mqap", "How behavior images are pooled.")
    strategy: Strategy = key(Strategy.AMS, "Where images are embedded: ams (servers, 12 floats "
                                           "per image travel), store-in-server (servers send "
                                           "pixels) or store-in-worker (workers read the store).")
    backbone: Backbone = key("small-cnn", "Image backbone; vgg16 is cut at fc6; true-attributes "
                                          "is the quality ceiling: it reads the world's truth, "
                                          "not pixels.")
    backbone_weights: str | None = key(None, "Backbone weights (state dict, default random), e.g. "
                                             "DATA/backbone/small-cnn.pt; for true-attributes the "
                                             "truth table (default DATA/truth/items.parquet).",
                                       path="file")
    freeze_backbone: Flag = key(False, "Keep the backbone fixed (features cached per image) and "
                                       "train the head.", on="--freeze-backbone",
                                off="--train-backbone")
    image_size: int = key(32, "Side in pixels the images are resized to.")
    head: list[int] | None = key(None, "Hidden layers of the image head (default: the paper's "
                                       "256-64, after the backbone).", flag=False)
    image_lr: float = key(0.001, "Adam learning rate of the shared image model.")
    backbone_lr_scale: float = key(1.0, "A trainable backbone learns at image_lr times this "
                                        "(below 1: fine-tune pretrained weights gently).")
    feature_cache: int = key(200_000, "Frozen backbone outputs kept per rank.", flag=False)
    pixel_cache: int = key(100_000, "Decoded, resized images kept per rank.", flag=False)
    concat_behaviors: int = key(10, "Newest behaviors the concat aggregator keeps.", flag=False)
    image_products: bool = key(False, "DICM: also give the tower the elementwise product of the "
                                      "ad image embedding with each pooled behavior-image channel "
                                      "(a taste match the MLP need not learn from a concatenation).",
                               on="--image-products", off="--no-image-products")
    max_pixels: int = key(4096 * 4096, "Images whose header claims more pixels are refused "
                                       "(bombs).", flag=False)
    cache_bytes: int | None = key(None, "Bytes of decoded pixels + frozen features a rank caches "
                                        "(default: 40% of free GPU memory on CUDA, no byte bound "
                                        "on the CPU).")
    # devices (hvams.runtime)
    device: Device = key("auto", "Where every rank computes (auto: CUDA where a GPU is visible).")
    server_device: Device | None = key(None, "Device of the servers (overrides device).")
    worker_device: Device | None = key(None, "Device of the workers (overrides device).")
    precision: PrecisionName = key("auto", "auto: bf16 autocast on CUDA, fp32 on the CPU; fp64 "
                                           "for verification.")
    memory_format: MemoryFormat = key(
        "auto", "Layout of the image model and its inputs: channels-last (cuDNN's fast layout; "
                "auto: on CUDA) or contiguous.")
    allreduce_path: AllreducePath = key(
        "auto", "Where Horovod sums a role's gradients: device (NCCL for CUDA tensors), host "
                "(copied to host memory, summed over MPI/Gloo), auto: device unless two ranks "
                "of the role share a GPU, which NCCL refuses.")
    backbone_chunk: int = key(512, "Images per backbone pass. A trainable backbone with more "
                                   "images in a step recomputes each chunk's activations in "
                                   "backward, so its memory stays bounded.")
    allreduce_compression: Compression = key(
        Compression.NONE, "fp16: Horovod's gradient allreduces (workers' dense model, servers' "
                          "image model) in fp16 on the wire, half the bytes.")
    row_compression: Compression = key(
        Compression.NONE, "fp16: ID rows, image embeddings and their gradients between servers "
                          "and workers in fp16 on the wire, half the bytes.")
    sync_stages: Flag = key(False, "CUDA: synchronise at stage boundaries (exact stage times).",
                            flag=False)
    # bookkeeping
    checkpoint_every: int = key(0, "Checkpoint every K steps (0: at the end only). One due on a "
                                "day's last step is left to the next: the day's end changes rows.")
    checkpoint_mode: CheckpointMode = key(
        "full", "full: every checkpoint writes every row; delta: only the rows changed since "
                "the previous one (and the keys deleted), on a full base.")
    delta_compact_every: int = key(8, "checkpoint_mode delta: after this many deltas the next "
                                      "checkpoint is a full base again.")
    keep_checkpoints: int = key(0, "Keep the newest K checkpoints (and the bases their deltas "
                                   "need); older ones are removed (0: keep all).")
    resume: ResumeFlag = key(
        False, "Continue from the newest complete checkpoint in out, or start fresh when it "
               "has none (--resume auto says the same): one command line for the first "
               "submission and every requeue.", on="--resume", on_values=("auto",))
    checkpoint_signals: list[CheckpointSignal] = key(
        help="Signals on which every rank checkpoints at the next step boundary and exits "
             "with code 42 (requeue me); [] : none.",
        factory=lambda: ["SIGUSR1", "SIGTERM"], flag=False)
    progress: Flag = key(True, "Progress bar / log lines on the first server.",
                         off="--no-progress")
    log_every: int = key(50, "Steps between progress lines and TensorBoard points.")
    eval_every: int = key(0, "Steps between test evaluations (0: after each epoch).")
    evaluate: Flag = key(True, "False: no test evaluation at all (benchmarks).", flag=False)
    tensorboard: str | None = key(None, "TensorBoard log directory.", path="out-dir")
    warm_start: str | None = key(None, "Start from RUN_DIR's model, except its ID embeddings "
                                       "(partial warm-up, paper Table 5).", path="dir")
    step_timeout: float = key(600.0, "Seconds without progress before a rank aborts the job "
                                     "(fail fast; 0: no watchdog).")
    # daily training: continue from a model, and which ID rows a server keeps
    init_from: str | None = key(None, "Continue from this run's newest complete checkpoint (or "
                                      "this checkpoint directory): everything it saved, ID rows "
                                      "and optimizer states included, on this run's days.",
                                path="dir")
    id_admission_min_count: int = key(0, "A key gets a stored ID row only once it was asked for "
                                         "in this many training steps (0 or 1: at once).")
    id_admission_by_table: dict[str, int] = key(help="Per-table id_admission_min_count.",
                                                factory=dict, flag=False)
    admission_sketch_width: int = key(1 << 20, "Counters per row of each table's admission "
                                               "sketch, per server (a power of two).", flag=False)
    admission_sketch_depth: int = key(4, "Rows of each admission sketch.", flag=False)
    id_ttl_days: int = key(0, "Evict ID rows not asked for in this many training days, at the "
                              "end of each day (0: never).")
    max_rows_per_shard: int = key(0, "Rows one server holds per table; a full shard evicts "
                                     "rows as eviction says (0: no bound).")
    max_rows_by_table: dict[str, int] = key(help="Per-table max_rows_per_shard.", factory=dict,
                                            flag=False)
    eviction: Eviction = key("lru", "Which rows a full shard evicts first: lru (least recently "
                                    "used) or lfu (least often used).")

    def validate(self) -> "TrainConfig":
        """This config with every key checked: its type (as ``merge`` checks it), then the
        rules between values. Returns the typed copy (enum members for enum keys)."""
        typed = _typed(self.to_dict(), "config")

        def need(cond, key, msg):
            if not cond:
                raise ConfigError(f"config key {key!r}: {msg} (got {getattr(typed, key)!r})")

        need(bool(typed.data), "data", "a data directory is required")
        need(typed.backbone != "true-attributes" or typed.freeze_backbone, "freeze_backbone",
             "must be true with backbone true-attributes (a lookup table, nothing to train)")
        for key in ("servers", "epochs", "batch_size", "eval_batch_size", "emb_dim",
                    "lr_decay_steps", "image_size", "concat_behaviors", "backbone_chunk"):
            need(getattr(typed, key) >= 1, key, "must be at least 1")
        for key in ("lr", "sparse_lr", "image_lr", "backbone_lr_scale", "init_scale"):
            need(getattr(typed, key) > 0, key, "must be positive")
        need(0 < typed.lr_decay <= 1, "lr_decay", "must be in (0, 1]")
        need(typed.max_steps is None or typed.max_steps >= 1, "max_steps", "must be at least 1")
        need(typed.checkpoint_every >= 0, "checkpoint_every", "must be >= 0")
        need(typed.eval_every >= 0, "eval_every", "must be >= 0")
        need(typed.delta_compact_every >= 1, "delta_compact_every", "must be at least 1")
        need(typed.keep_checkpoints >= 0, "keep_checkpoints", "must be >= 0 (0: keep all)")
        need(typed.step_timeout >= 0, "step_timeout", "must be >= 0 (0 = no watchdog)")
        need(all(d >= 1 for d in typed.mlp) and typed.mlp, "mlp", "needs positive layer sizes")
        need(all(d >= 1 for d in typed.attention), "attention", "needs positive layer sizes")
        need(typed.feature_cache >= 0, "feature_cache", "must be >= 0")
        need(typed.pixel_cache >= 0, "pixel_cache", "must be >= 0")
        need(typed.cache_bytes is None or typed.cache_bytes >= 0, "cache_bytes", "must be >= 0")
        for key in ("id_admission_min_count", "id_ttl_days", "max_rows_per_shard"):
            need(getattr(typed, key) >= 0, key, "must be >= 0 (0: off)")
        for key in ("id_admission_by_table", "max_rows_by_table"):
            need(all(v >= 0 for v in getattr(typed, key).values()), key, "needs values >= 0")
        w = typed.admission_sketch_width
        need(w >= 1 and w & (w - 1) == 0, "admission_sketch_width", "must be a power of two")
        need(typed.admission_sketch_depth >= 1, "admission_sketch_depth", "must be at least 1")
        need(not (typed.init_from and typed.warm_start), "init_from",
             "excludes warm_start (one model to start from)")
        return typed

    @property
    def images_dir(self) -> Path:
        return Path(self.images) if self.images else Path(self.data) / "images"

    @property
    def uses_images(self) -> bool:
        return self.model in IMAGE_MODELS

    def to_dict(self) -> dict:
        """Plain values (enum members as their strings): YAML, JSON and ``TrainConfig(**d)``."""
        return {k: v.value if isinstance(v, Enum) else v
                for k, v in dataclasses.asdict(self).items()}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


_ADAPTER = pydantic.TypeAdapter(TrainConfig)
_TYPES = typing.get_type_hints(TrainConfig, include_extras=True)


def _unwrap(tp):
    """``tp`` without ``None`` and ``Annotated``: the type a value of the key has."""
    if get_origin(tp) is Annotated:
        return _unwrap(get_args(tp)[0])
    if get_origin(tp) in (Union, types.UnionType):
        rest = [a for a in get_args(tp) if a is not type(None)]
        return _unwrap(rest[0]) if len(rest) == 1 else tp
    return tp


def choices(name: str) -> tuple[str, ...] | None:
    """The values key ``name`` accepts, when it is a choice (a Literal or an enum)."""
    tp = _unwrap(_TYPES[name])
    if get_origin(tp) is Literal:
        return get_args(tp)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return tuple(m.value for m in tp)
    return None


def type_name(tp) -> str:
    """How errors and docs name a key's type: int, int | None, list[int], boolean, str."""
    if get_origin(tp) is Annotated:
        return type_name(get_args(tp)[0])
    if get_origin(tp) in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "None"
    if tp is bool:
        return "boolean"
    if get_origin(tp) is Literal or (isinstance(tp, type) and issubclass(tp, Enum)):
        return "str"
    if get_origin(tp) in (list, dict):
        return f"{get_origin(tp).__name__}[{', '.join(type_name(a) for a in get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def key_of(f) -> Key:
    return f.metadata["key"]


def flags_of(f) -> list[str]:
    """The options of ``hvams train`` that set field ``f`` (none: YAML only)."""
    k = key_of(f)
    if k.on or k.off:
        return [o for o in (k.on, k.off) if o]
    return ["--" + f.name.replace("_", "-")] if k.flag else []


def _typed(values: dict, source: str) -> TrainConfig:
    """``values`` as a TrainConfig, every key checked against its declared type."""
    try:
        return _ADAPTER.validate_python(values)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else "?"
        value = values.get(key)
        allowed = choices(key) if key in _TYPES else None
        if allowed and isinstance(value, str):
            raise ConfigError(f"config key {key!r}: must be one of {allowed} (got {value!r})"
                              ) from None
        want = type_name(_TYPES[key]) if key in _TYPES else "?"
        raise ConfigError(f"{source}: config key {key!r}: {value!r} ({type(value).__name__}) is "
                          f"not a valid {want}: {err['msg']}") from None


def merge(base: TrainConfig, values: dict, source: str) -> TrainConfig:
    """``base`` with ``values`` applied and every key checked against its declared type.

    Unknown keys raise ConfigError naming them and the closest valid key; a
    value of the wrong type raises ConfigError naming the key, the value and
    the expected type; a choice outside its values names the values.
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
    return _typed(merged, source)


def load_config(path: str | Path | None = None, overrides: dict | None = None,
                defaults: dict | None = None) -> TrainConfig:
    """Defaults (``TrainConfig``'s, then a command's own ``defaults``), then the YAML file,
    then ``overrides`` (None values are ignored)."""
    cfg = merge(TrainConfig(), defaults, "defaults") if defaults else TrainConfig()
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
