"""``hvams bench gpu-tables DIR``: the GPU tables of docs/benchmarks.md from one device
session's output (``scripts/gpu_session.sh``, or its ``--dry-run`` on the CPU).

DIR holds ``versions.txt``, ``pytest.txt`` (the CUDA tests' summary line) and
``results.jsonl``: one line per finished stage run, ``{"stage": "speed" | "image-rate",
"name": ..., "result": {...}}``, the JSON of ``hvams bench speed`` or ``bench image-rate``.
A stage cut by its time bound has no line: its rows say so rather than vanish.
"""
from __future__ import annotations

import json
from pathlib import Path

ORDER = ("ams", "store-in-server", "store-in-worker", "one process")


def load_session(folder: Path) -> dict:
    folder = Path(folder)
    results = []
    path = folder / "results.jsonl"
    if path.exists():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    results.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}: line {n} is not JSON ({exc.msg})") from None

    def text(name):
        p = folder / name
        return p.read_text().strip() if p.exists() else None

    return {"versions": text("versions.txt"), "pytest": text("pytest.txt"),
            "planned": text("planned.txt"), "results": results}


def _rate(x) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _speed_rows(results):
    for rec in results:
        if rec["stage"] != "speed":
            continue
        r = rec["result"]
        for variant, med in r["median"].items():
            yield rec["name"], r, variant, med


def render(session: dict) -> str:
    res = session["results"]
    out = ["### Device session", ""]
    if session["versions"]:
        out += ["```", session["versions"], "```", ""]
    out += [f"CUDA tests: `{session['pytest'] or 'no summary line (stage cut or not run)'}`", ""]
    speed = list(_speed_rows(res))
    if not speed:
        out += ["No `bench speed` stage finished.", ""]
    else:
        out += ["**Samples/s per strategy and backbone** (median over rounds; global batch over "
                "the median step time):", "",
                "| run | backbone | px | backbone mode | servers + workers | " +
                " | ".join(ORDER) + " |", "|---" * (5 + len(ORDER)) + "|"]
        for name, r, v, med in speed:
            out.append(f"| {name} | {r['backbone']} | {r['image_size']} | {v} | "
                       f"{r['servers']} + {r['workers']} | " +
                       " | ".join(_rate(med.get(s)) for s in ORDER) + " |")
        out += ["", "**AMS against store-in-worker, by the dedup factor** (image keys the "
                "workers ask for per step over the unique images the servers embed) and **AMS "
                "step against the one-process step**:", "",
                "| run | backbone mode | dedup factor | AMS / store-in-worker | "
                "AMS step / one-process step |", "|---" * 5 + "|"]
        for name, r, v, _ in speed:
            img = (r.get("images_per_step") or {}).get(v, {}).get("ams") or {}
            unique = img.get("unique_per_server", 0) * r["servers"]
            dedup = img.get("requested", 0) / unique if unique else None
            ratios = r["ratios"].get(v, {})
            siw, one = ratios.get("ams_over_store_in_worker"), ratios.get(
                "ams_step_over_one_process_step")
            out.append(f"| {name} | {v} | {'-' if dedup is None else f'{dedup:.2f}'} | "
                       f"{'-' if siw is None else f'{siw:.2f}x'} | "
                       f"{'-' if one is None else f'{one:.2f}x'} |")
        out.append("")
    rates = [r for r in res if r["stage"] == "image-rate"]
    if rates:
        out += ["**The servers' image stage against the raw rate of the same model** (one "
                "process, random pixels on the device, the same batch):", "",
                "| run | model | px | mode | images per server step | image stage (images/s) | "
                "raw (images/s) | stage / raw |", "|---" * 8 + "|"]
        for rec in rates:
            r = rec["result"]
            stage = r.get("stage_images_per_s")
            ratio = stage / r["images_per_s"] if stage else None
            out.append(f"| {rec['name']} | {r['backbone']} | {r['image_size']} | {r['mode']} | "
                       f"{r['batch']:,} | {_rate(stage)} | {_rate(r['images_per_s'])} | "
                       f"{'-' if ratio is None else f'{ratio:.2f}'} |")
        out.append("")
    if session["planned"]:
        out += ["Stage bounds and wall times (s):", "", "```", session["planned"], "```", ""]
    return "\n".join(out)


def stage_rate(speed: dict, variant: str) -> tuple[int, float | None]:
    """(unique images per server per step, images/s of the servers' image_compute stage) of
    the AMS run of ``variant`` in a ``bench speed`` result."""
    img = (speed.get("images_per_step") or {}).get(variant, {}).get("ams") or {}
    batch = int(round(img.get("unique_per_server", 0)))
    secs = speed["stage_s_per_step"].get(variant, {}).get("ams", {}).get("server", {}).get(
        "image_compute")
    return batch, (batch / secs if batch and secs else None)
