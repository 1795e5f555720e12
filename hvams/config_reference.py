"""The config reference of docs/cli.md, generated from ``TrainConfig`` so it cannot drift.

``python -m hvams.config_reference`` prints the table; a test checks that
docs/cli.md holds exactly this text between its two markers.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import MISSING, fields

from .config import TrainConfig, _type_name

BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"


def _comments() -> dict[str, str]:
    """Each field's trailing comment in config.py (continuation lines joined)."""
    out, last = {}, None
    for line in inspect.getsource(TrainConfig).splitlines():
        m = re.match(r"    (\w+): [^=]+=[^#]*(?:#\s*(.*))?$", line)
        if m:
            last = m.group(1)
            out[last] = (m.group(2) or "").strip()
        elif last and re.match(r" {20,}#", line):  # a comment continued under the last one
            out[last] += " " + line.strip().lstrip("#").strip()
        else:
            last = None
    return out


def _flag_of(name: str) -> str:
    from cli.train_cmd import train

    for p in train.params:
        if p.name == name or (name == "progress" and p.name == "progress"):
            return " / ".join(p.opts + p.secondary_opts)
    return "YAML only"


def reference() -> str:
    notes = _comments()
    rows = ["| key | type | default | flag of `hvams train` | meaning |", "|---|---|---|---|---|"]
    for f in fields(TrainConfig):
        default = f.default if f.default is not MISSING else f.default_factory()
        kind = _type_name(f.type).replace(" | ", " or ")
        rows.append(f"| `{f.name}` | {kind} | `{default!r}` | "
                    f"{_flag_of(f.name)} | {notes.get(f.name, '').replace('|', '/')} |")
    return "\n".join([BEGIN, *rows, END])


if __name__ == "__main__":
    print(reference())
