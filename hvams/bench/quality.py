"""``hvams bench quality``: the paper's Tables 3, 4 and 6 on a synthetic world.

Every model trains with several seeds on the same days and is tested on the
test day: AUC, GAUC, new-ad AUC (ads never seen in training), the oracle's
AUC (the world's true click probability) and the share of the gap from
ID-only to the oracle that the model closes.

The ``true-attr`` row is the ceiling of the image path: DICM (MQAP) with the
same IDs, MLP and training, whose image embedding is a learned embedding of
the image's true attributes (backbone ``true-attributes``). Each image
model's *image-reading efficiency* is its AUC gain over ID-only divided by
the ceiling's, per seed: how much of what the images could add it reads.
"""
from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path

from ..config import TrainConfig
from .jobs import save_json, train_job
from .machine import label

# name -> (model, aggregator, other config keys)
MODELS = {"idonly": ("idonly", "mqap", {}), "din": ("din", "mqap", {}),
          "dicm mqap": ("dicm", "mqap", {}), "dicm attentive": ("dicm", "attentive", {}),
          "dicm sum": ("dicm", "sum", {}), "dicm max": ("dicm", "max", {}),
          "dicm concat": ("dicm", "concat", {}), "din+img": ("din+img", "mqap", {}),
          "true-attr": ("dicm", "mqap", {"backbone": "true-attributes", "backbone_weights": None,
                                          "freeze_backbone": True}),
          # the ways from raw images to a backbone (DICM MQAP): trained from random on the
          # click loss, the given weights frozen, the given weights fine-tuned at
          # image_lr * backbone_lr_scale
          "dicm scratch": ("dicm", "mqap", {"backbone_weights": None, "freeze_backbone": False}),
          "dicm frozen": ("dicm", "mqap", {"freeze_backbone": True}),
          "dicm tuned": ("dicm", "mqap", {"freeze_backbone": False})}
# What `hvams bench quality` runs unless --models says otherwise (the paper's tables).
DEFAULT_MODELS = ("idonly", "din", "dicm mqap", "dicm attentive", "dicm sum", "dicm max",
                  "dicm concat", "din+img", "true-attr")
# The image rows the gap's split into reading and learning is given for, in this order.
READERS = ("dicm mqap", "dicm frozen", "dicm tuned", "dicm scratch")
CEILING = "true-attr"
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
            model, agg, extra = MODELS[name]
            cfg = replace(base, model=model, aggregator=agg, seed=seed, **extra,
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
                                     "backbone_weights", "freeze_backbone", "eval_every", "lr",
                                     "image_lr", "backbone_lr_scale", "image_products")}}
    any_run = next(iter(runs["idonly"].values()))
    result["machine"] = label(any_run["servers"], any_run["workers"])
    result["table"] = quality_table(runs, seeds)
    result["targets"] = targets(result["table"])
    result["breakdown"] = breakdown(result["table"])
    save_json(out / "quality.json", result)
    return result


def _gain_share(by_seed: dict, base: dict, ref: dict, seeds: list[int], metric: str):
    """Per seed (model - ID-only) / (ref - ID-only) of ``metric``: mean ± std; None where
    the reference does not beat ID-only in some seed (a share of nothing is no figure)."""
    gains = [ref[s]["final"][metric] - base[s]["final"][metric] for s in seeds]
    if min(gains) <= 0:
        return None
    return _mean_std([(by_seed[s]["final"][metric] - base[s]["final"][metric]) / g
                      for s, g in zip(seeds, gains)])


def quality_table(runs: dict, seeds: list[int]) -> dict:
    base = runs["idonly"]
    oracle = {s: {"final": {"auc": base[s]["final"]["oracle_auc"]}} for s in seeds}
    ceiling = runs.get(CEILING)
    table = {}
    for name in ["idonly", *(m for m in runs if m != "idonly")]:  # gains are relative to ID-only
        by_seed = runs[name]
        row = {}
        for m in METRICS:
            row[m] = _mean_std([by_seed[s]["final"].get(m) for s in seeds])
        row["seeds"] = list(seeds)
        row["oracle_auc"] = statistics.fmean(by_seed[s]["final"]["oracle_auc"] for s in seeds)
        row["gap_closed"] = _gain_share(by_seed, base, oracle, seeds, "auc")
        if ceiling is not None and name not in ("idonly", CEILING) and MODELS[name][0] != "din":
            row["reading_efficiency"] = _gain_share(by_seed, base, ceiling, seeds, "auc")
            row["new_ad_reading_efficiency"] = _gain_share(by_seed, base, ceiling, seeds,
                                                           "new_ad_auc")
        ref = table.get("idonly", row)
        row["auc_gain"] = row["auc"][0] - ref["auc"][0]
        row["new_ad_gain"] = row["new_ad_auc"][0] - ref["new_ad_auc"][0]
        table[name] = row
    return table


def targets(table: dict) -> dict:
    """The issues' targets, each with the measured figure."""
    out = {}
    mq = table.get("dicm mqap")
    if mq:
        out["mqap_closes_80pct_of_gap"] = {"value": mq["gap_closed"][0], "holds": mq["gap_closed"][0] >= 0.8}
        ratio = mq["new_ad_gain"] / mq["auc_gain"] if mq["auc_gain"] else float("nan")
        out["new_ad_gain_3x_overall"] = {"value": ratio, "holds": ratio >= 3}
        if mq.get("reading_efficiency"):
            eff = mq["reading_efficiency"][0]
            out["mqap_image_reading_efficiency_90pct"] = {"value": eff, "holds": eff >= 0.9}
    for name in READERS[1:]:  # the ways to a backbone: mean minus one std of the efficiency
        eff = table.get(name, {}).get("reading_efficiency")
        if eff:
            key = name.replace(" ", "_")
            out[f"{key}_reading_efficiency_80pct_mean_minus_std"] = {
                "value": eff[0] - eff[1], "holds": eff[0] - eff[1] >= 0.8}
    order = [n for n in ("dicm mqap", "dicm attentive", "dicm sum") if n in table]
    if len(order) == 3:
        for m in ("auc", "gauc"):
            vals = [table[n][m][0] for n in order]
            out[f"order_mqap_attentive_sum_{m}"] = {"value": vals, "holds": vals[0] >= vals[1] >= vals[2]}
        # strict order, each step larger than twice the larger of the two stds
        gaps = [(table[a]["auc"][0] - table[b]["auc"][0], 2 * max(table[a]["auc"][1], table[b]["auc"][1]))
                for a, b in zip(order, order[1:])]
        seeds = len(next(iter(table.values()))["seeds"])
        out["order_mqap_attentive_sum_by_2_std"] = {"value": [g for g, _ in gaps],
                                                    "holds": seeds > 1 and all(g > t for g, t in gaps)}
    return out


def breakdown(table: dict) -> dict | None:
    """Split the ID-only -> oracle gap: what perfect reading would still leave to learning
    (the ID half and training: oracle - ceiling), and what reading loses (ceiling - the
    first of ``READERS`` in the table), as shares of the gap."""
    reader = next((n for n in READERS if n in table), None)
    if CEILING not in table or reader is None or table[CEILING]["gap_closed"] is None:
        return None
    base, top = table["idonly"]["auc"][0], table["idonly"]["oracle_auc"]
    ceil, mq = table[CEILING]["auc"][0], table[reader]["auc"][0]
    gap = top - base
    return {"gap": gap, "reader": reader, "ceiling_closes": (ceil - base) / gap,
            "reader_closes": (mq - base) / gap, "id_half_and_training": (top - ceil) / gap,
            "image_half": (ceil - mq) / gap}


def _ms(ms, pct: bool = False) -> str:
    if ms is None:
        return "–"
    return f"{100 * ms[0]:.1f}% ± {100 * ms[1]:.1f}%" if pct else f"{ms[0]:.4f} ± {ms[1]:.4f}"


def format_quality(r: dict) -> str:
    t = r["table"]
    lines = ["| model | test AUC | GAUC | new-ad AUC | oracle AUC | gap closed | "
             "image-reading efficiency | new-ad efficiency |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in t.items():
        lines.append(f"| {name} | {_ms(row['auc'])} | {_ms(row['gauc'])} | {_ms(row['new_ad_auc'])} | "
                     f"{row['oracle_auc']:.4f} | {_ms(row['gap_closed'], True)} | "
                     f"{_ms(row.get('reading_efficiency'), True)} | "
                     f"{_ms(row.get('new_ad_reading_efficiency'), True)} |")
    lines += ["", f"mean ± std over seeds {r['seeds']}; gap closed = (AUC - ID-only AUC) / "
                  "(oracle AUC - ID-only AUC), per seed."]
    if CEILING in t:
        lines += [f"{CEILING}: DICM (MQAP) whose image embedding is learned from the images' true "
                  "attributes (the ceiling of the image path); image-reading efficiency = "
                  f"(AUC - ID-only AUC) / ({CEILING} AUC - ID-only AUC), per seed, likewise for "
                  "the new-ad AUC."]
    b = breakdown(t)
    if b:
        lines += ["", f"Of the ID-only -> oracle gap ({b['gap']:.4f} AUC): reading images perfectly "
                      f"would close {100 * b['ceiling_closes']:.1f}%; the rest, "
                      f"{100 * b['id_half_and_training']:.1f}%, is the ID half and the training. "
                      f"{b['reader']} closes {100 * b['reader_closes']:.1f}%, so reading the images "
                      f"loses {100 * b['image_half']:.1f}% of the gap."]
    lines.append("")
    for name, tgt in r["targets"].items():
        v = tgt["value"]
        shown = ", ".join(f"{x:.4f}" for x in v) if isinstance(v, list) else f"{v:.3f}"
        lines.append(f"- {name}: {shown} ({'holds' if tgt['holds'] else 'does not hold'})")
    return "\n".join(lines)
