"""``hvams bench network``: the strategies on a fake cluster with limited links.

The job runs on N fake hosts of ``cluster/netns`` (network namespaces on one
machine, TCP between hosts, each link limited by ``tbf`` in both directions),
with the servers spread over the hosts. Round r runs, for every
link rate, every backbone variant x strategy, so a noisy neighbour slows all
figures alike; a figure is the median over rounds, with its min-max spread.
The slowdown is a run's samples/s over the same run's with unlimited links.
The fake hosts share this machine's cores, so the figures show what the links
cost, not a real cluster's speed.
"""
from __future__ import annotations

import os
import statistics
import subprocess
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from ..config import ConfigError, TrainConfig
from ..strategies import Strategy
from .comm import STRATEGIES
from .jobs import BenchError, save_json, timed_config, train_job
from .machine import label
from .speed import steady_rate, variant_config

NETNS = Path(__file__).resolve().parents[2] / "cluster" / "netns"
RATES = ("unlimited", "1gbit", "100mbit")
# What travels in fp16 (--wire): the config keys each setting fixes, whatever --config says.
WIRES = {"fp32": {"row_compression": "none", "allreduce_compression": "none"},
         "fp16-rows": {"row_compression": "fp16", "allreduce_compression": "none"},
         "fp16-allreduce": {"row_compression": "none", "allreduce_compression": "fp16"},
         "fp16": {"row_compression": "fp16", "allreduce_compression": "fp16"}}
PREFIX = "hvbench"
ENV = {"HVAMS_NETNS_PREFIX": PREFIX, "HVAMS_NETNS_STATE": f"/tmp/{PREFIX}-netns"}


def _script(name: str, *args) -> None:
    res = subprocess.run(["bash", str(NETNS / name), *map(str, args)], env={**os.environ, **ENV},
                         capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise BenchError(f"cluster/netns/{name} {' '.join(map(str, args))} failed: "
                         f"{(res.stderr or res.stdout).strip()[-500:]}")


@contextmanager
def fake_cluster(hosts: int):
    """Up for the bench, always torn down."""
    if os.geteuid() != 0:
        raise ConfigError("hvams bench network makes network namespaces: run it as root")
    try:
        _script("up.sh", hosts)
        yield
    finally:
        _script("down.sh")


def tc_rate(rate: str) -> str:
    return "none" if rate == "unlimited" else rate


def variant_label(variant: str, wire: str) -> str:
    """A table row's backbone label: ``frozen``, or ``frozen, fp16-rows`` off the fp32 wire."""
    return variant if wire == "fp32" else f"{variant}, {wire}"


def run_network(base: TrainConfig, hosts: int, ranks: int, steps: int, warmup: int, rounds: int,
                out: Path, rates=RATES, variants=("frozen", "trainable"), timeout: float = 1800,
                strategies=STRATEGIES, wires=("fp32",)) -> dict:
    launch = [str(NETNS / "mpirun.sh"), str(ranks), "--map-by", "node"]
    base = replace(base, placement="spread")
    if not strategies or any(s not in STRATEGIES for s in strategies):
        raise ConfigError(f"bench network: strategies {list(strategies)}: choose one or more of "
                          f"{list(STRATEGIES)}")
    if not wires or any(w not in WIRES for w in wires):
        raise ConfigError(f"bench network: wires {list(wires)}: choose one or more of {list(WIRES)}")
    labels = {(v, w): variant_label(v, w) for v in variants for w in wires}
    runs = {lab: {s: {r: [] for r in rates} for s in strategies} for lab in labels.values()}
    layout = None
    with fake_cluster(hosts):
        for rnd in range(rounds):
            for rate in rates:
                _script("rate.sh", tc_rate(rate))
                for (v, w), lab in labels.items():
                    for s in strategies:
                        print(f"bench network: round {rnd + 1}/{rounds}, {rate} links, {v} backbone, "
                              f"{w} wire, {s} ...", flush=True)
                        run_dir = out / f"{lab.replace(', ', '-')}-{s}-{rate}"
                        cfg = timed_config(replace(variant_config(base, v), strategy=s, **WIRES[w]),
                                           steps, run_dir)
                        summ = train_job(cfg, ranks, timeout, launch=launch, env=ENV)["summary"]
                        gb = summ["samples"] / max(summ["steps"], 1)
                        runs[lab][s][rate].append({
                            "rate": steady_rate(summ["step_s"], gb, warmup),
                            "bytes_per_step": summ["bytes_per_step"],
                            "stage_ms_per_step": {role: {k: 1000 * t / max(summ["steps"], 1)
                                                         for k, t in st.items()}
                                                  for role, st in summ["stage_s"].items()}})
                        layout = (summ["servers"], summ["workers"])
    table = {}
    for v, by_s in runs.items():
        table[v] = {}
        for s, by_r in by_s.items():
            row = {}
            for rate, recs in by_r.items():
                xs = [x["rate"] for x in recs]
                row[rate] = {"median": statistics.median(xs), "min": min(xs), "max": max(xs),
                             "per_round": xs,
                             "bytes_per_step": recs[-1]["bytes_per_step"],
                             "stage_ms_per_step": recs[-1]["stage_ms_per_step"]}
            ref = row[rates[0]]["median"]
            for rate in rates:
                row[rate]["slowdown"] = row[rate]["median"] / ref
            table[v][s] = row
        ams, sis = by_s.get(Strategy.AMS), by_s.get(Strategy.STORE_IN_SERVER)
        if ams and sis:
            # the target's ratio: per round, then the median, so both runs of a pair saw one neighbour
            table[v][Strategy.AMS]["vs_store_in_server"] = {
                rate: statistics.median(a["rate"] / b["rate"] for a, b in zip(ams[rate], sis[rate]))
                for rate in rates}
    result = {"machine": label(*layout).replace("on this one machine",
                                                f"on {hosts} fake hosts (network namespaces)"),
              "hosts": hosts, "ranks": ranks, "servers": layout[0], "workers": layout[1],
              "steps": steps, "warmup": warmup, "rounds": rounds, "rates": list(rates),
              "wires": list(wires),
              "labels": {lab: {"backbone": v, "wire": w} for (v, w), lab in labels.items()},
              "batch_size_per_worker": base.batch_size, "backbone": base.backbone,
              "image_size": base.image_size, "data": base.data, "table": table}
    save_json(out / "network.json", result)
    return result


def _human_bytes(n: float) -> str:
    from ..train.report import human

    return human(n)


def format_network(r: dict) -> str:
    rates = r["rates"]
    lines = [f"{r['machine']}; data {r['data']}, {r['backbone']} at {r['image_size']} px, "
             f"batch {r['batch_size_per_worker']} per worker, {r['steps']} steps "
             f"({r['warmup']} warm-up), {r['rounds']} interleaved rounds", "",
             "| backbone | strategy | bytes per step | " +
             " | ".join(f"{x} (samples/s, min–max)" for x in rates) + " | " +
             " | ".join(f"{x} / {rates[0]}" for x in rates[1:]) + " |",
             "|---" * (3 + 2 * len(rates) - 1) + "|"]
    for v, by_s in r["table"].items():
        for s, row in by_s.items():
            total = sum(row[rates[0]]["bytes_per_step"].values())
            lines.append(f"| {v} | {s} | {_human_bytes(total)} | " + " | ".join(
                f"{row[x]['median']:,.0f} ({row[x]['min']:,.0f}–{row[x]['max']:,.0f})" for x in rates)
                + " | " + " | ".join(f"{row[x]['slowdown']:.2f}x" for x in rates[1:]) + " |")
    for v, by_s in r["table"].items():
        ratio = by_s.get(Strategy.AMS, {}).get("vs_store_in_server")
        if ratio:
            lines.append(f"\n{v}: AMS / store-in-server samples/s (median of per-round ratios): " +
                         ", ".join(f"{x} {ratio[x]:.2f}x" for x in rates))
    lines += ["", "Bytes per step by category (all ranks, unlimited links):", ""]
    cats = sorted({c for by_s in r["table"].values() for row in by_s.values()
                   for c in row[rates[0]]["bytes_per_step"]})
    lines += ["| backbone | strategy | " + " | ".join(cats) + " |", "|---" * (len(cats) + 2) + "|"]
    for v, by_s in r["table"].items():
        for s, row in by_s.items():
            b = row[rates[0]]["bytes_per_step"]
            lines.append(f"| {v} | {s} | " + " | ".join(_human_bytes(b.get(c, 0)) for c in cats) + " |")
    return "\n".join(lines)
