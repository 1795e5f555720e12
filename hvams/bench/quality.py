"""``hvams bench quality``: the paper's Tables 3, 4 and 6 on a synthetic world.

Every model trains with several seeds on the same days and is tested on the
test day: AUC, GAUC, new-ad AUC (ads never seen in training), the oracle's
AUC (the world's true click probability) and the share of the gap from
ID-only to the oracle that the model closes.
"""
from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path

from ..config import TrainConfig
from .jobs import save_json, train_job
from .machine import label

# name -> (model, aggregator)
MODELS = {"idonly": ("idonly", "mqap"), "din": ("din", "mqap"),
          "dicm mqap": ("dicm", "mqap"), "dicm attentive": ("dicm", "attentive"),
          "dicm sum": ("dicm", "sum"), "dicm max": ("dicm", "max"),
          "dicm concat": ("dicm", "concat"), "din+img": ("din+img", "mqap")}
METRICS = ("auc", "gauc", "new_ad_auc")


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def run_quality(base: TrainConfig, ranks: int, seeds: list[int], models: list[str], out: Path,
                timeout: float = 7200, curve_seeds: int | None = None, reuse: bool = False) -> dict:
    """Train each model with each seed (seed-major order); per-run finals and AUC curves.

    Only the first ``curve_seeds`` seeds evaluate every ``eval_every`` steps (the
    AUC-over-training chart); the others evaluate once, at the end.
    """
    if "idonly" not in models:
        models = ["idonly", *models]  # the gap is measured from ID-only
    runs = {m: {} for m in models}
    for i, seed in enumerate(seeds):
        curve = curve_seeds is None or i < curve_seeds
        for name in models:
            model, agg = MODELS[name]
            cfg = replace(base, model=model, aggregator=agg, seed=seed,
                          eval_every=base.eval_every if curve else 0,
                          out=str(out / f"{name.replace(' ', '-')}-seed{seed}"))
            print(f"bench quality: {name}, seed {seed} ...", flush=True)
            job = train_job(cfg, ranks, timeout, reuse)
            tests = [r for r in job["metrics"] if r.get("split") == "test"]
            if not tests:
                raise RuntimeError(f"{cfg.out}: no test evaluation in metrics.jsonl")
            runs[name][seed] = {"final": tests[-1],
                                "curve": [(r["step"], r["auc"]) for r in tests],
                                "samples_per_s": job["summary"]["samples_per_s"],
                                "servers": job["summary"]["servers"],
                                "workers": job["summary"]["workers"]}
    result = {"runs": runs, "seeds": seeds, "models": models, "config": {
        k: getattr(base, k) for k in ("data", "batch_size", "epochs", "train_days", "backbone",
                                     "backbone_weights", "freeze_backbone", "eval_every", "lr")}}
    any_run = next(iter(runs["idonly"].values()))
    result["machine"] = label(any_run["servers"], any_run["workers"])
    result["table"] = quality_table(runs, seeds)
    result["targets"] = targets(result["table"])
    save_json(out / "quality.json", result)
    return result


def quality_table(runs: dict, seeds: list[int]) -> dict:
    base = runs["idonly"]
    table = {}
    for name in ["idonly", *(m for m in runs if m != "idonly")]:  # gains are relative to ID-only
        by_seed = runs[name]
        row = {}
        for m in METRICS:
            row[m] = _mean_std([by_seed[s]["final"].get(m) for s in seeds])
        row["oracle_auc"] = statistics.fmean(by_seed[s]["final"]["oracle_auc"] for s in seeds)
        row["gap_closed"] = _mean_std([
            (by_seed[s]["final"]["auc"] - base[s]["final"]["auc"])
            / (by_seed[s]["final"]["oracle_auc"] - base[s]["final"]["auc"]) for s in seeds])
        ref = table.get("idonly", row)
        row["auc_gain"] = row["auc"][0] - ref["auc"][0]
        row["new_ad_gain"] = row["new_ad_auc"][0] - ref["new_ad_auc"][0]
        table[name] = row
    return table


def targets(table: dict) -> dict:
    """The issue's targets, each with the measured figure."""
    out = {}
    mq = table.get("dicm mqap")
    if mq:
        out["mqap_closes_80pct_of_gap"] = {"value": mq["gap_closed"][0], "holds": mq["gap_closed"][0] >= 0.8}
        ratio = mq["new_ad_gain"] / mq["auc_gain"] if mq["auc_gain"] else float("nan")
        out["new_ad_gain_3x_overall"] = {"value": ratio, "holds": ratio >= 3}
    order = [n for n in ("dicm mqap", "dicm attentive", "dicm sum") if n in table]
    if len(order) == 3:
        for m in ("auc", "gauc"):
            vals = [table[n][m][0] for n in order]
            out[f"order_mqap_attentive_sum_{m}"] = {"value": vals, "holds": vals[0] >= vals[1] >= vals[2]}
    return out


def format_quality(r: dict) -> str:
    t = r["table"]
    lines = ["| model | test AUC | GAUC | new-ad AUC | oracle AUC | gap closed |",
             "|---|---|---|---|---|---|"]
    for name, row in t.items():
        f = lambda ms: f"{ms[0]:.4f} ± {ms[1]:.4f}"  # noqa: E731
        lines.append(f"| {name} | {f(row['auc'])} | {f(row['gauc'])} | {f(row['new_ad_auc'])} | "
                     f"{row['oracle_auc']:.4f} | {100 * row['gap_closed'][0]:.1f}% ± "
                     f"{100 * row['gap_closed'][1]:.1f}% |")
    lines += ["", f"mean ± std over seeds {r['seeds']}; gap closed = (AUC - ID-only AUC) / "
                  "(oracle AUC - ID-only AUC), per seed.", ""]
    for name, tgt in r["targets"].items():
        v = tgt["value"]
        shown = ", ".join(f"{x:.4f}" for x in v) if isinstance(v, list) else f"{v:.3f}"
        lines.append(f"- {name}: {shown} ({'holds' if tgt['holds'] else 'does not hold'})")
    return "\n".join(lines)
