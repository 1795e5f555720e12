"""``hvams bench speed``: samples/s of the three strategies and of one process.

Runs are interleaved (round r runs every variant and strategy before round
r+1), so a noisy neighbour slows all of them alike. The rate of a run is the
global batch over the median step time after ``warmup`` steps; a step's time
is the wall time between consecutive step ends on worker 0 (reading
included). The one-process baseline trains the same model on the same global
batches with no MPI, all cores to one process, and gives the protocol's
overhead ratio. Each run's summary also says where the time went, per role.
"""
from __future__ import annotations

import os
import statistics
from dataclasses import replace
from pathlib import Path

import torch

from ..config import TrainConfig
from ..data.schema import Schema
from ..reference import OneProcess, global_batches
from ..strategies import Strategy
from .comm import STRATEGIES
from .jobs import save_json, timed_config, train_job
from .machine import label

VARIANTS = ("trainable", "frozen")
ONE_PROCESS = "one process"


def variant_config(base: TrainConfig, variant: str) -> TrainConfig:
    return replace(base, freeze_backbone=(variant == "frozen"))


def steady_rate(step_s: list[float], global_batch: float, warmup: int) -> float:
    """Samples/s from the median step time after ``warmup`` steps."""
    steady = step_s[warmup:] or step_s
    return global_batch / statistics.median(steady)


def one_process_rate(cfg: TrainConfig, workers: int, steps: int, warmup: int) -> float:
    """Samples/s of the plain one-process trainer on the same global batches, in a process of
    its own: on CUDA its allocator's cache and context would otherwise stay in this process
    and shrink the free memory the later jobs size their caches from."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_one_process_rate, cfg, workers, steps, warmup).result()


def _one_process_rate(cfg: TrainConfig, workers: int, steps: int, warmup: int) -> float:
    schema = Schema.load(cfg.data)
    batches = global_batches(cfg, schema, workers, steps)
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        trainer = OneProcess(cfg, schema, batches)
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    return steady_rate(trainer.step_s, sum(b.n for b in batches) / len(batches), warmup)


def _image_counts(summ: dict, per_step: int) -> dict:
    """Image keys per step: asked for by the workers, and embedded (unique) per server."""
    img = summ.get("images") or {}
    return {"requested": img.get("requested_by_workers_total", 0) / per_step,
            "unique_per_server": img.get("unique_per_server_total", 0) / per_step
            / max(summ["servers"], 1)}


def run_speed(base: TrainConfig, ranks: int, steps: int, rounds: int, warmup: int, out: Path,
              variants=VARIANTS, one_process: bool = True, timeout: float = 1800,
              strategies=STRATEGIES) -> dict:
    """Interleaved rounds of every variant x strategy (+ one process); rates and breakdowns."""
    rates = {v: {s: [] for s in (*strategies, *([ONE_PROCESS] if one_process else []))}
             for v in variants}
    stages, images, layout = {v: {} for v in variants}, {v: {} for v in variants}, None
    for r in range(rounds):
        for v in variants:
            cfg_v = variant_config(base, v)
            for s in strategies:
                cfg = timed_config(replace(cfg_v, strategy=s), steps, out / f"{v}-{s}")
                print(f"bench speed: round {r + 1}/{rounds}, {v} backbone, {s} ...", flush=True)
                summ = train_job(cfg, ranks, timeout)["summary"]
                global_batch = summ["samples"] / max(summ["steps"], 1)
                rates[v][s].append(steady_rate(summ["step_s"], global_batch, warmup))
                per_step = max(summ["steps"], 1)
                stages[v][s] = {role: {k: t / per_step for k, t in st.items()}
                                for role, st in summ["stage_s"].items()}
                images[v][s] = _image_counts(summ, per_step)
                layout = (summ["servers"], summ["workers"])
            if one_process:
                print(f"bench speed: round {r + 1}/{rounds}, {v} backbone, one process ...", flush=True)
                rates[v][ONE_PROCESS].append(one_process_rate(cfg_v, layout[1], steps, warmup))
    result = {"machine": label(*layout), "servers": layout[0], "workers": layout[1],
              "steps": steps, "warmup": warmup, "rounds": rounds,
              "batch_size_per_worker": base.batch_size, "backbone": base.backbone,
              "image_size": base.image_size, "rates": rates,
              "median": {v: {s: statistics.median(x) for s, x in rs.items()} for v, rs in rates.items()},
              "stage_s_per_step": stages, "images_per_step": images}
    result["ratios"] = {}
    for v, med in result["median"].items():
        ams = med.get(Strategy.AMS)
        result["ratios"][v] = ratios = {}
        if ams is None:
            continue
        for other, name in ((Strategy.STORE_IN_WORKER, "ams_over_store_in_worker"),
                            (Strategy.STORE_IN_SERVER, "ams_over_store_in_server")):
            if other in med:
                ratios[name] = ams / med[other]
        if one_process:
            ratios["ams_step_over_one_process_step"] = med[ONE_PROCESS] / ams
    save_json(out / "speed.json", result)
    return result


def format_speed(r: dict) -> str:
    cols = list(next(iter(r["median"].values())))
    lines = ["| backbone | " + " | ".join(f"{c} (samples/s)" for c in cols) +
             " | AMS / store-in-worker | AMS step / one-process step |",
             "|---" * (len(cols) + 3) + "|"]
    for v, med in r["median"].items():
        ratios = r["ratios"][v]
        one = ratios.get("ams_step_over_one_process_step")
        siw = ratios.get("ams_over_store_in_worker")
        lines.append(f"| {v} | " + " | ".join(f"{med[c]:,.0f}" for c in cols) +
                     (f" | {siw:.2f}x | " if siw is not None else " | - | ")
                     + (f"{one:.2f}x" if one is not None else "-") + " |")
    lines += ["", "Milliseconds per step by stage (mean over the ranks of each role):", ""]
    for v, by_s in r["stage_s_per_step"].items():
        for role in ("server", "worker"):
            names = sorted({k for s in by_s.values() for k in s.get(role, {})})
            if not names:
                continue
            lines += [f"| {v} / {role} | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
            for s, st in by_s.items():
                lines.append(f"| {s} | " + " | ".join(f"{1000 * st.get(role, {}).get(k, 0):.1f}"
                                                     for k in names) + " |")
            lines.append("")
    return "\n".join(lines)
