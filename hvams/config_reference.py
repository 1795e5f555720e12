"""The config reference of docs/cli.md, generated from ``TrainConfig``'s field metadata.

``python -m hvams.config_reference`` prints the table; a test checks that
docs/cli.md holds exactly this text between its two markers.
"""
from __future__ import annotations

from dataclasses import MISSING, fields
from enum import Enum

from .config import _TYPES, TrainConfig, choices, flags_of, key_of, type_name

BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"


def _type(name: str) -> str:
    allowed = choices(name)
    if allowed:
        optional = " or None" if "None" in type_name(_TYPES[name]) else ""
        return "one of " + ", ".join(f"`{c}`" for c in allowed) + optional
    return type_name(_TYPES[name]).replace(" | ", " or ")


def _plain(value):
    return value.value if isinstance(value, Enum) else value


def reference() -> str:
    rows = ["| key | type | default | flag of `hvams train` | meaning |", "|---|---|---|---|---|"]
    for f in fields(TrainConfig):
        default = f.default if f.default is not MISSING else f.default_factory()
        flags = " / ".join(flags_of(f)) or "YAML only"
        meaning = key_of(f).help.replace("|", "/")
        rows.append(f"| `{f.name}` | {_type(f.name)} | `{_plain(default)!r}` | {flags} | {meaning} |")
    return "\n".join([BEGIN, *rows, END])


if __name__ == "__main__":
    print(reference())
