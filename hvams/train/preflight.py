"""Checks of a run's inputs before any rank starts: one clear line for a user's mistake,
instead of the same traceback from every rank."""
from __future__ import annotations

from ..config import NODE_FIELD, ConfigError, TrainConfig


def preflight(cfg: TrainConfig) -> None:
    """Raise ConfigError naming the key when the data, the image store or a device is unusable."""
    from pathlib import Path

    from ..data.schema import Schema
    from ..runtime.runtime import check_devices
    from ..store.lmdb_store import read_manifest
    from .plan import resolve_days

    if not (Path(cfg.data) / "schema.json").exists():
        raise ConfigError(f"config key 'data': {cfg.data} has no schema.json (see docs/data.md)")
    try:
        schema = Schema.load(cfg.data)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{Path(cfg.data) / 'schema.json'}: {exc}") from None
    resolve_days(cfg)
    for key in ("id_admission_by_table", "max_rows_by_table"):
        unknown = sorted(set(getattr(cfg, key)) - set(schema.tables))
        if unknown:
            raise ConfigError(f"config key {key!r}: no table {unknown} in "
                              f"{Path(cfg.data) / 'schema.json'} (its tables: {schema.tables})")
    if cfg.init_from:
        from .checkpoint import latest_complete
        from .restore import check_init

        if not (cfg.resume and latest_complete(cfg.out)):  # a requeued run resumes its own
            check_init(cfg, schema)
    if cfg.uses_images and NODE_FIELD not in (cfg.images or ""):  # per host: servers check theirs
        try:
            read_manifest(cfg.images_dir)
        except FileNotFoundError as exc:
            key = "images" if cfg.images else "data"
            raise ConfigError(f"config key {key!r}: {exc}") from None
    if cfg.uses_images and cfg.backbone == "true-attributes":
        from ..models.attributes import TrueAttributes, table_of

        TrueAttributes(table_of(cfg))  # raises ConfigError
    check_devices(cfg)
