"""What each part of a synthetic world's truth is worth on its test day.

    python benchmarks/world_ceiling.py data/bench

Prints the test-day AUC (overall / new ads) of the oracle logit with parts
removed: the per-ad quality (what no image carries), the taste term, and the
ID-knowable part (old ads: all but taste; new ads: no quality, appeal or taste).
The world is rebuilt from world.json (deterministic), so nothing is re-rendered.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from hvams.data.synth import World, WorldConfig
from hvams.metrics import auc


def main(root: Path) -> None:
    info = json.loads((root / "world.json").read_text())
    world = World(WorldConfig(**info["config"]))
    t = pq.read_table(root / info["test_day"], columns=["user_id", "ad_id", "p_true", "click", "is_new_ad"])
    users, ads = np.asarray(t["user_id"]), np.asarray(t["ad_id"])
    p, y = np.asarray(t["p_true"], np.float64), np.asarray(t["click"])
    new = np.asarray(t["is_new_ad"]).astype(bool)
    attrs = world.item_attrs[ads]
    logit = np.log(p / (1 - p))
    quality, appeal = world.ad_quality[ads], world.visual_appeal(attrs)
    cats = world.item_category[ads]
    taste = world.visual_taste(users, attrs, cats)
    rows = [("oracle (p_true)", logit),
            ("oracle without per-ad quality: a perfect image reader's ceiling", logit - quality),
            ("oracle without taste", logit - taste),
            ("ID-knowable part", np.where(new, logit - quality - appeal - taste, logit - taste))]
    K = world.cfg.taste_modes
    if K > 1:  # a reader that cannot tell which taste the ad calls for: their mean
        mean = sum(world.visual_taste(users, attrs, np.full_like(cats, k)) for k in range(K)) / K
        rows.append(("the user's tastes averaged, blind to which one the ad calls for",
                     logit - quality - taste + mean))
    print("| score | AUC | new-ad AUC |\n|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {auc(y, s):.4f} | {auc(y[new], s[new]):.4f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
