"""The sample schema: which columns exist, their roles, and their tables.

One row is one ad impression. The schema is stored with the data as
``schema.json``, and models read field names from it, never from constants,
so another dataset maps onto hvams by writing its own schema file.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROLES = ("user", "ad", "scenario", "behavior", "image", "label", "meta")
# id: one int64 id; id_list: list<int64> behavior ids; image / image_list: int64
# image ids (ad image, behavior images); label: 0/1; float; flag: 0/1 int.
KINDS = ("id", "id_list", "image", "image_list", "label", "float", "flag", "int")
SCHEMA_FILE = "schema.json"
# The channel that serves image fields (ID fields are served by their table's channel).
IMAGE_CHANNEL = "image"


@dataclass(frozen=True)
class Field:
    """One column: its role in the model and, for ids, its embedding table."""

    name: str
    role: str
    kind: str
    table: str | None = None

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"field {self.name}: unknown role {self.role!r}; one of {ROLES}")
        if self.kind not in KINDS:
            raise ValueError(f"field {self.name}: unknown kind {self.kind!r}; one of {KINDS}")
        if self.is_id and not self.table:
            raise ValueError(f"field {self.name}: an id field needs an embedding table")

    @property
    def is_id(self) -> bool:
        """An ID or a list of IDs, embedded from its table."""
        return self.kind in ("id", "id_list")

    @property
    def is_image(self) -> bool:
        """An image key or a list of them, embedded by the image channel."""
        return self.kind in ("image", "image_list")

    @property
    def is_list(self) -> bool:
        return self.kind in ("id_list", "image_list")


@dataclass
class Schema:
    """Fields plus the names of the columns that have a special meaning."""

    fields: list[Field]
    label: str = "click"
    user: str = "user_id"          # GAUC groups by this field
    ad_id: str = "ad_id"           # the ad's ID: query of the ID attention channel
    ad_image: str = "ad_image"     # the ad's image: an MLP input and the image query
    behavior_image: str = "beh_image"
    new_ad: str | None = "is_new_ad"
    p_true: str | None = "p_true"
    day: str | None = "day"
    max_behaviors: int = 50
    version: int = 1
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        names = [f.name for f in self.fields]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"schema: duplicate field(s) {sorted(dup)}")
        for attr in ("label", "user", "ad_id", "ad_image", "behavior_image"):
            if getattr(self, attr) not in names:
                raise ValueError(f"schema: {attr} names {getattr(self, attr)!r}, which is not a field")
        if self.max_behaviors < 1:
            raise ValueError("schema: max_behaviors must be at least 1")

    def __getitem__(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"schema has no field {name!r}")

    def by_role(self, role: str) -> list[Field]:
        return [f for f in self.fields if f.role == role]

    @property
    def id_fields(self) -> list[Field]:
        """Single-valued id fields, in schema order."""
        return [f for f in self.fields if f.is_id and not f.is_list]

    @property
    def list_fields(self) -> list[Field]:
        """Behavior list fields (ids and images); they share one offsets array."""
        return [f for f in self.fields if f.is_list]

    @property
    def image_fields(self) -> list[Field]:
        return [f for f in self.fields if f.is_image]

    @property
    def tables(self) -> list[str]:
        """Embedding tables, in first-use order."""
        out: list[str] = []
        for f in self.fields:
            if f.table and f.table not in out:
                out.append(f.table)
        return out

    def paired_behavior_fields(self) -> list[tuple[Field, Field]]:
        """(ad field, behavior list field) pairs that share a table (DIN query/key)."""
        ad = [f for f in self.id_fields if f.role == "ad"]
        beh = [f for f in self.fields if f.is_id and f.is_list]
        return [(a, b) for a in ad for b in beh if a.table == b.table]

    def columns(self) -> list[str]:
        return [f.name for f in self.fields]

    def to_json(self) -> str:
        d = asdict(self)
        d["fields"] = [asdict(f) for f in self.fields]
        return json.dumps(d, indent=1)

    @classmethod
    def from_dict(cls, d: dict) -> "Schema":
        d = dict(d)
        fields = [Field(**f) for f in d.pop("fields")]
        return cls(fields=fields, **d)

    def save(self, data_dir: str | Path) -> Path:
        path = Path(data_dir) / SCHEMA_FILE
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, data_dir: str | Path) -> "Schema":
        path = Path(data_dir) / SCHEMA_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: no schema file; every data directory needs one")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"{path}: invalid schema: {exc}") from None


def default_schema(max_behaviors: int = 50) -> Schema:
    """The hvams impression schema (used by the synthetic world)."""
    F = Field
    return Schema(fields=[
        F("day", "meta", "int"),
        F("user_id", "user", "id", "user"),
        F("age", "user", "id", "age"),
        F("gender", "user", "id", "gender"),
        F("city_tier", "user", "id", "city_tier"),
        F("ad_id", "ad", "id", "item"),
        F("category", "ad", "id", "category"),
        F("brand", "ad", "id", "brand"),
        F("shop", "ad", "id", "shop"),
        F("ad_image", "image", "image"),
        F("position", "scenario", "id", "position"),
        F("hour", "scenario", "id", "hour"),
        F("beh_item", "behavior", "id_list", "item"),
        F("beh_category", "behavior", "id_list", "category"),
        F("beh_image", "image", "image_list"),
        F("is_new_ad", "meta", "flag"),
        F("p_true", "meta", "float"),
        F("click", "label", "label"),
    ], max_behaviors=max_behaviors)
