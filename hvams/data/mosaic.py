"""A third, independent world: tile mosaics drawn with numpy, clicks from a global appeal
plus each shopper's own taste.

It shares nothing with ``synth``/``render`` or ``posters`` but the on-disk formats:

- **Renderer** (numpy; PIL only encodes the PNG). A listing's image is a grid of
  *grain* x *grain* tiles (3, 4, 5 or 6 a side) on a plain ground. Its *layout* says
  which tiles are filled (checker, frame, cross, band); the filled tiles carry a
  *texture* (flat, rings, waves, speckle) in a *tone* (warm, cool, grey). Nuisance: hue,
  saturation and brightness within the tone, the ground's grey, the grid's margin and
  offset, the wave direction, flips and transposes (each layout is its own class under
  them), sensor noise.
- **Signal.** Each factor value has a global *appeal* (one scalar for everyone) and each
  shopper a *taste* per factor value: a clan's centre plus their own noise. The visual
  term of the click logit is ``appeal_scale * appeal + taste_scale * taste``, both
  additive over the factors. The rest is listing quality, seller, shopper activity and
  the hour.
- **Formats, as a user would bring them.** Its own schema (``shopper``, ``listing``,
  ``listing_png``, ``seen_pngs``, ...); images as PNG bytes in ``images.parquet``
  (``image_key``, ``image_bytes``), ingested as ``hvams images ingest --bytes`` does. A
  share of the files is truncated (the ingest rejects them) and a share of the keys never
  arrives: the samples still name them, and their hidden factors still drive clicks.
  ``truth/items.parquet`` lists each image's factors (its ``hvams.attributes`` metadata
  names them, for ``true-attributes``) and whether the store holds it.
"""
from __future__ import annotations

import colorsys
import io
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ..keys import image_key_id
from ..metrics import auc, gauc
from ..models.attributes import STORED_COLUMN, write_truth
from .layout import Lists, fresh_dir, write_days
from .schema import Field, Schema

LAYOUTS = ("checker", "frame", "cross", "band")
TEXTURES = ("flat", "rings", "waves", "speckle")
GRAINS = (3, 4, 5, 6)
TONES = ("warm", "cool", "grey")
FACTORS = {"layout": len(LAYOUTS), "texture": len(TEXTURES), "grain": len(GRAINS),
           "tone": len(TONES)}
HOURS = 24


@dataclass
class MosaicConfig:
    seed: int = 0
    shoppers: int = 8_000
    listings: int = 10_000
    ad_share: float = 0.6            # listings that are also ads (candidates)
    sellers: int = 300
    cities: int = 20
    clans: int = 6
    appeal_scale: float = 0.5        # std of the global visual term
    taste_scale: float = 1.0         # std of the per-shopper visual term
    clan_spread: float = 0.5         # a shopper's taste around the clan's centre
    quality_std: float = 0.3
    activity_std: float = 0.4
    bias: float = -2.2
    train_days: int = 3
    samples_per_day: int = 60_000
    new_ad_frac: float = 0.15
    mean_history: float = 20.0
    max_history: int = 40
    history_temp: float = 0.8
    image_size: int = 64
    broken_frac: float = 0.03        # PNG files cut short (rejected at ingest)
    absent_frac: float = 0.02        # keys the samples name but no file brings
    partitions: int = 16

    def __post_init__(self):
        for name in ("shoppers", "listings", "sellers", "cities", "clans", "train_days",
                     "samples_per_day", "max_history", "partitions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.image_size < 24:
            raise ValueError("image_size must be at least 24")
        if not 0 < self.ad_share <= 1 or not 0 <= self.new_ad_frac < 1:
            raise ValueError("ad_share must be in (0, 1] and new_ad_frac in [0, 1)")
        if not 0 <= self.broken_frac + self.absent_frac < 0.5:
            raise ValueError("broken_frac + absent_frac must be in [0, 0.5)")


MOSAIC_PRESETS = {
    "mosaic": MosaicConfig(),
    "mosaic-tiny": MosaicConfig(shoppers=1500, listings=1500, sellers=50, train_days=1,
                                samples_per_day=20_000, partitions=4),
}


def mosaic_schema(max_history: int) -> Schema:
    F = Field
    return Schema(fields=[
        F("day", "meta", "int"),
        F("shopper", "user", "id", "shopper"),
        F("city", "user", "id", "city"),
        F("listing", "ad", "id", "listing"),
        F("seller", "ad", "id", "seller"),
        F("listing_png", "image", "image"),
        F("hour", "scenario", "id", "hour"),
        F("seen_listings", "behavior", "id_list", "listing"),
        F("seen_pngs", "image", "image_list"),
        F("is_fresh", "meta", "flag"),
        F("p", "meta", "float"),
        F("click", "label", "label"),
    ], label="click", user="shopper", ad_id="listing", ad_image="listing_png",
        behavior_image="seen_pngs", new_ad="is_fresh", p_true="p", max_behaviors=max_history)


# -- renderer -----------------------------------------------------------------
def _filled(layout: str, g: int) -> np.ndarray:
    """(g, g) bool: the tiles a layout fills."""
    i, j = np.indices((g, g))
    mid = {(g - 1) // 2, g // 2}
    if layout == "checker":
        return (i + j) % 2 == 0
    if layout == "frame":
        return (i == 0) | (j == 0) | (i == g - 1) | (j == g - 1)
    if layout == "cross":
        return np.isin(i, list(mid)) | np.isin(j, list(mid))
    return np.abs(i - j) <= (1 if g >= 5 else 0)  # band: the main diagonal


def _tone_rgb(tone: str, rng: np.random.Generator) -> np.ndarray:
    if tone == "warm":
        h, s = rng.uniform(-0.03, 0.14), rng.uniform(0.55, 0.95)
    elif tone == "cool":
        h, s = rng.uniform(0.47, 0.72), rng.uniform(0.55, 0.95)
    else:
        h, s = rng.uniform(0, 1), rng.uniform(0.0, 0.08)
    return 255 * np.array(colorsys.hsv_to_rgb(h % 1.0, s, rng.uniform(0.6, 0.97)))


def draw_mosaic(factors: tuple[int, int, int, int], rng: np.random.Generator, size: int = 64
                ) -> np.ndarray:
    """(size, size, 3) uint8 pixels of a mosaic with factors (layout, texture, grain, tone)."""
    layout, texture, grain, tone = factors
    g = GRAINS[grain]
    margin = rng.uniform(0.03, 0.1) * size
    tile = (size - 2 * margin) / g
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    y += rng.uniform(-0.04, 0.04) * size
    x += rng.uniform(-0.04, 0.04) * size
    ti, tj = np.floor((y - margin) / tile), np.floor((x - margin) / tile)
    inside = (ti >= 0) & (tj >= 0) & (ti < g) & (tj < g)
    ly, lx = (y - margin) / tile - ti, (x - margin) / tile - tj  # place in the tile, [0, 1)
    gap = 0.07
    in_tile = inside & (ly > gap) & (ly < 1 - gap) & (lx > gap) & (lx < 1 - gap)
    mask = _filled(LAYOUTS[layout], g)
    filled = in_tile.copy()
    filled[in_tile] = mask[ti[in_tile].astype(int), tj[in_tile].astype(int)]

    kind = TEXTURES[texture]
    if kind == "flat":
        shade = np.ones_like(y)
    elif kind == "rings":
        r = np.hypot(ly - 0.5, lx - 0.5)
        shade = 0.6 + 0.4 * np.cos(2 * math.pi * r * rng.uniform(2.2, 2.8))
    elif kind == "waves":
        a = rng.uniform(0, math.pi)
        shade = 0.6 + 0.4 * np.cos(2 * math.pi * rng.uniform(2.2, 2.8)
                                   * (ly * math.cos(a) + lx * math.sin(a)))
    else:  # speckle: 2-pixel dots over a quarter of the tile
        dots = rng.random((size // 2 + 1, size // 2 + 1)) < 0.3
        shade = np.where(np.kron(dots, np.ones((2, 2), bool))[:size, :size], 0.25, 1.0)
    colour = _tone_rgb(TONES[tone], rng)
    ground = np.full(3, rng.uniform(25, 230)) + rng.normal(0, 6, 3)
    img = np.where(filled[..., None], shade[..., None] * colour, ground)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if rng.random() < 0.5:
        img = img[::-1]
    if rng.random() < 0.5:
        img = img.transpose(1, 0, 2)
    img = img + rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


# -- the world --------------------------------------------------------------
class MosaicWorld:
    def __init__(self, cfg: MosaicConfig):
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 0x3051])
        n = cfg.listings
        self.factors = np.stack([rng.integers(0, k, n) for k in FACTORS.values()], 1)
        self.seller = rng.integers(0, cfg.sellers, n)
        house_tone = rng.integers(0, len(TONES), cfg.sellers)
        keep = rng.random(n) < 0.5  # sellers keep their house tone for half their listings
        self.factors[keep, 3] = house_tone[self.seller[keep]]
        self.image_ids = np.array([image_key_id(self.image_key(i)) for i in range(n)], np.int64)
        fate = rng.random(n)
        self.broken = fate < cfg.broken_frac
        self.absent = (fate >= cfg.broken_frac) & (fate < cfg.broken_frac + cfg.absent_frac)
        ads = rng.permutation(n)[:max(2, int(round(n * cfg.ad_share)))]
        n_new = int(round(len(ads) * cfg.new_ad_frac))
        self.new_ads, self.old_ads = np.sort(ads[:n_new]), np.sort(ads[n_new:])
        self.is_new = np.zeros(n, bool)
        self.is_new[self.new_ads] = True
        pop = rng.pareto(1.5, len(self.old_ads)) + 1
        self.old_pop = pop / pop.sum()
        pop_new = rng.pareto(1.5, max(1, n_new)) + 1
        self.new_pop = pop_new / pop_new.sum()
        self.quality = rng.normal(0, cfg.quality_std, n)
        self.seller_effect = rng.normal(0, 0.2, cfg.sellers)
        # one column per factor value; an image is the one-hot of its four factors
        self.offsets = np.cumsum([0, *FACTORS.values()])[:-1]
        width = sum(FACTORS.values())
        onehot = np.zeros((n, width), np.float32)
        onehot[np.arange(n)[:, None], self.factors + self.offsets] = 1
        self.onehot = onehot
        norm = math.sqrt(len(FACTORS))
        self.appeal = onehot @ rng.normal(0, 1, width) * (cfg.appeal_scale / norm)
        centres = rng.normal(0, 1, (cfg.clans, width))
        self.clan = rng.integers(0, cfg.clans, cfg.shoppers)
        self.taste = ((centres[self.clan] + rng.normal(0, cfg.clan_spread, (cfg.shoppers, width)))
                      * (cfg.taste_scale / norm / math.sqrt(1 + cfg.clan_spread ** 2)))
        self.city = np.where(rng.random(cfg.shoppers) < 0.3, self.clan % cfg.cities,
                             rng.integers(0, cfg.cities, cfg.shoppers))
        self.activity = rng.normal(0, cfg.activity_std, cfg.shoppers)
        visits = rng.lognormal(0, 0.7, cfg.shoppers)
        self.visit_p = visits / visits.sum()
        self.hour_effect = 0.25 * np.sin(2 * math.pi * np.arange(HOURS) / HOURS)
        self._histories(np.random.default_rng([cfg.seed, 0x3052]))

    def image_key(self, i: int) -> str:
        return f"mosaic/{self.cfg.seed}/{i:06d}.png"

    def visual(self, shoppers: np.ndarray, listings: np.ndarray) -> np.ndarray:
        """The visual term of the click logit: global appeal plus the shopper's taste."""
        taste = np.einsum("nw,nw->n", self.taste[shoppers], self.onehot[listings])
        return self.appeal[listings] + taste

    def _histories(self, rng: np.random.Generator) -> None:
        """Listings each shopper clicked before (never fresh ones), drawn with weights
        exp(visual / temp), with replacement."""
        cfg = self.cfg
        catalog = np.flatnonzero(~self.is_new)
        self.hist_len = np.clip(rng.poisson(cfg.mean_history, cfg.shoppers), 1, cfg.max_history)
        self.history = np.zeros((cfg.shoppers, cfg.max_history), np.int64)
        hot = self.onehot[catalog]
        for lo in range(0, cfg.shoppers, 512):
            who = np.arange(lo, min(cfg.shoppers, lo + 512))
            w = (self.taste[who] @ hot.T + self.appeal[catalog]) / cfg.history_temp
            w = np.exp(w - w.max(1, keepdims=True))
            for r, u in enumerate(who):
                self.history[u] = catalog[rng.choice(len(catalog), cfg.max_history,
                                                     p=w[r] / w[r].sum())]

    def impressions(self, day: int, n: int, test: bool) -> pa.Table:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, 0x3053, day])
        who = rng.choice(cfg.shoppers, n, p=self.visit_p)
        what = self.old_ads[rng.choice(len(self.old_ads), n, p=self.old_pop)]
        if test and len(self.new_ads):
            fresh = rng.random(n) < cfg.new_ad_frac
            what[fresh] = self.new_ads[rng.choice(len(self.new_ads), int(fresh.sum()),
                                                  p=self.new_pop)]
        hour = rng.integers(0, HOURS, n)
        logit = (cfg.bias + self.quality[what] + self.seller_effect[self.seller[what]]
                 + self.activity[who] + self.hour_effect[hour] + self.visual(who, what))
        p = 1.0 / (1.0 + np.exp(-logit))
        click = (rng.random(n) < p).astype(np.int8)
        lists = Lists(self.hist_len[who])
        seen = self.history[who[lists.row], lists.pos]
        return pa.table({
            "day": pa.array(np.full(n, day, np.int32)),
            "shopper": pa.array(who.astype(np.int64)),
            "city": pa.array(self.city[who].astype(np.int64)),
            "listing": pa.array(what.astype(np.int64)),
            "seller": pa.array(self.seller[what].astype(np.int64)),
            "listing_png": pa.array(self.image_ids[what]),
            "hour": pa.array(hour.astype(np.int64)),
            "seen_listings": lists.column(seen.astype(np.int64)),
            "seen_pngs": lists.column(self.image_ids[seen]),
            "is_fresh": pa.array(self.is_new[what].astype(np.int8)),
            "p": pa.array(p.astype(np.float32)),
            "click": pa.array(click),
        })


def _write_images(world: MosaicWorld, path: Path) -> None:
    """``images.parquet``: PNG bytes per key, absent keys left out, broken ones cut short."""
    cfg = world.cfg
    keys, blobs = [], []
    for i in range(cfg.listings):
        if world.absent[i]:
            continue
        rng = np.random.default_rng([cfg.seed, 0x3054, i])
        data = png_bytes(draw_mosaic(tuple(int(f) for f in world.factors[i]), rng,
                                     cfg.image_size))
        if world.broken[i]:
            data = data[:len(data) * 3 // 5]
        keys.append(world.image_key(i))
        blobs.append(data)
    table = pa.table({"image_key": pa.array(keys), "image_bytes": pa.array(blobs, pa.binary())})
    pq.write_table(table, path, row_group_size=2048)


def synthesize_mosaic(out: str | Path, cfg: MosaicConfig, overwrite: bool = False,
                      log=print) -> dict:
    """Write the mosaic world under ``out``: schema.json, day=NN/ Parquet, images.parquet,
    the LMDB store (via the bytes-table ingest), truth/ and world.json."""
    from ..store.ingest import ingest, rows_from_bytes_table

    out = fresh_dir(out, overwrite)
    world = MosaicWorld(cfg)
    mosaic_schema(cfg.max_history).save(out)
    _write_images(world, out / "images.parquet")
    summary = ingest(rows_from_bytes_table(out / "images.parquet"), out / "images",
                     num_partitions=cfg.partitions, check=True, progress=False)
    log(f"mosaic: drew {cfg.listings - int(world.absent.sum())} images, the store took "
        f"{summary['stored']} ({summary['rejected']} rejected)")
    stats, test = write_days(out, world.impressions, cfg.train_days, cfg.samples_per_day, "click")
    y, p = np.asarray(test["click"]), np.asarray(test["p"])
    who, what = np.asarray(test["shopper"]), np.asarray(test["listing"])
    fresh = np.asarray(test["is_fresh"]).astype(bool)
    visual = world.visual(who, what)
    items = pa.table({"listing": np.arange(cfg.listings, dtype=np.int64),
                      "image_id": world.image_ids,
                      **{f: world.factors[:, j] for j, f in enumerate(FACTORS)},
                      STORED_COLUMN: ~(world.broken | world.absent),
                      "is_ad": np.isin(np.arange(cfg.listings), np.r_[world.old_ads, world.new_ads]),
                      "is_new_ad": world.is_new})
    write_truth(out, items, FACTORS)
    info = {
        "format": "hvams-mosaic-world/1",
        "config": asdict(cfg),
        "train_days": [f"day={d:02d}" for d in range(cfg.train_days)],
        "test_day": f"day={cfg.train_days:02d}",
        "images_dir": "images",
        "stats": {**stats, "ctr": stats["clicks"] / stats["samples"],
                  "images": cfg.listings, "images_stored": summary["store_images"],
                  "images_rejected": summary["rejected"], "images_absent": int(world.absent.sum()),
                  "mean_behaviors": float(world.hist_len.mean())},
        "oracle": {"test_auc": auc(y, p), "test_gauc": gauc(y, p, who),
                   "test_new_ad_auc": auc(y[fresh], p[fresh]) if fresh.any() else None,
                   "test_visual_only_auc": auc(y, visual)},
        "pretrained_backbone": None,
    }
    (out / "world.json").write_text(json.dumps(info, indent=1))
    return info


def mosaic_preset(name: str, **overrides) -> MosaicConfig:
    if name not in MOSAIC_PRESETS:
        raise ValueError(f"unknown mosaic preset {name!r}; choose from {list(MOSAIC_PRESETS)}")
    return replace(MOSAIC_PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
