"""Per-rank JSON reports, for tests and tools that inspect a finished job.

mpirun forwards each rank's stdout in chunks that may split long lines, so a
machine-readable result goes to ``$HVAMS_REPORT_DIR/<name>-rank<r>.json``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_report(name: str, rank: int, report: dict) -> Path | None:
    """Write ``report`` for ``rank`` when ``HVAMS_REPORT_DIR`` is set."""
    root = os.environ.get("HVAMS_REPORT_DIR")
    if not root:
        return None
    path = Path(root) / f"{name}-rank{rank}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report))
    os.replace(tmp, path)
    return path


def read_reports(root: str | os.PathLike, name: str) -> dict[int, dict]:
    """All ranks' reports of ``name`` under ``root``, by rank."""
    out = {}
    for path in Path(root).glob(f"{name}-rank*.json"):
        out[int(path.stem.rsplit("rank", 1)[1])] = json.loads(path.read_text())
    return out
