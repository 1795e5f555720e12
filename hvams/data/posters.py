"""A second, independent world: posters drawn with PIL, clicks from a bilinear taste.

It shares nothing with ``synth``/``render`` but the on-disk formats, so a model
tuned to the built-in world can be checked on data it was not shaped for:

- **Renderer.** An offer's image is a poster: a two-colour gradient background
  from its *palette*, a *hatch* (none, bands, diagonal, grid) over it, and
  *count* glyphs of a *form* (triangle, square, hexagon, circle, star), drawn
  with ``PIL.ImageDraw``. Nuisance: palette jitter, glyph placement, size and
  rotation, blur, pixel noise, JPEG quality 70-95.
- **Signal.** Each trait value has a random vector in a ``style_dim``-d style
  space; an offer's style is the sum over its traits. Users belong to taste
  segments (a centre plus their own noise); the visual term of the click logit
  is ``visual_scale * <user taste, offer style> / sqrt(style_dim)``. There is
  no global appeal: whether a palette is good depends on the user. The rest of
  the logit is offer quality, user activity, slot and device.
- **Formats, as a user would bring them.** Its own schema (other field names:
  ``visitor``, ``offer``, ``offer_img``, ``clicked_imgs``, ...), images written
  as JPEG files plus ``images.csv`` and loaded with the same ingest as
  ``hvams images ingest --csv``; ``truth/items.parquet`` lists each image's
  traits (its ``hvams.attributes`` metadata names them, for ``true-attributes``).

No backbone is pretrained for this world.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw, ImageFilter

from ..keys import image_key_id
from ..metrics import auc, gauc
from ..models.attributes import write_truth
from .layout import Lists, fresh_dir, write_days
from .schema import Field, Schema

PALETTES = (  # (top, bottom, ink) RGB
    ((250, 200, 90), (230, 80, 40), (90, 20, 60)),      # sunset
    ((120, 200, 240), (20, 70, 150), (250, 250, 240)),  # ocean
    ((170, 210, 120), (40, 100, 50), (250, 230, 120)),  # forest
    ((235, 235, 235), (150, 150, 150), (30, 30, 30)),   # mono
    ((250, 180, 220), (170, 120, 240), (60, 200, 200)),  # candy
    ((200, 160, 110), (110, 70, 40), (240, 240, 210)),  # earth
)
FORMS = ("triangle", "square", "hexagon", "circle", "star")
COUNTS = (1, 2, 3, 5)
HATCHES = ("none", "bands", "diagonal", "grid")
TRAITS = {"palette": len(PALETTES), "form": len(FORMS), "count": len(COUNTS),
          "hatch": len(HATCHES)}
N_SLOT, N_DEVICE = 6, 3


@dataclass
class PosterConfig:
    seed: int = 0
    visitors: int = 20_000
    offers: int = 12_000
    ad_share: float = 0.5            # offers that are also ads (candidates)
    advertisers: int = 400
    regions: int = 12
    segments: int = 8
    style_dim: int = 8
    visual_scale: float = 1.2
    segment_spread: float = 0.6      # a user's taste around the segment centre
    quality_std: float = 0.25
    activity_std: float = 0.4
    bias: float = -2.0
    train_days: int = 2
    samples_per_day: int = 100_000
    new_ad_frac: float = 0.15
    mean_history: float = 25.0
    max_history: int = 40
    history_temp: float = 0.7
    image_size: int = 64
    partitions: int = 16

    def __post_init__(self):
        for name in ("visitors", "offers", "advertisers", "regions", "segments", "style_dim",
                     "train_days", "samples_per_day", "max_history", "image_size", "partitions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not 0 < self.ad_share <= 1 or not 0 <= self.new_ad_frac < 1:
            raise ValueError("ad_share must be in (0, 1] and new_ad_frac in [0, 1)")


POSTER_PRESETS = {
    "posters": PosterConfig(),
    "posters-tiny": PosterConfig(visitors=2000, offers=1500, advertisers=60, train_days=1,
                                 samples_per_day=20_000, partitions=4),
}


def poster_schema(max_history: int) -> Schema:
    F = Field
    return Schema(fields=[
        F("day", "meta", "int"),
        F("visitor", "user", "id", "visitor"),
        F("region", "user", "id", "region"),
        F("offer", "ad", "id", "offer"),
        F("advertiser", "ad", "id", "advertiser"),
        F("offer_img", "image", "image"),
        F("slot", "scenario", "id", "slot"),
        F("device", "scenario", "id", "device"),
        F("clicked_offers", "behavior", "id_list", "offer"),
        F("clicked_imgs", "image", "image_list"),
        F("fresh_offer", "meta", "flag"),
        F("p_click", "meta", "float"),
        F("clicked", "label", "label"),
    ], label="clicked", user="visitor", ad_id="offer", ad_image="offer_img",
        behavior_image="clicked_imgs", new_ad="fresh_offer", p_true="p_click",
        max_behaviors=max_history)


# -- renderer -----------------------------------------------------------------
def _glyph(draw: ImageDraw.ImageDraw, form: str, cx: float, cy: float, r: float, angle: float,
           fill, outline) -> None:
    if form == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline)
        return
    if form == "star":
        pts = [(cx + (r if k % 2 == 0 else 0.45 * r) * math.cos(angle + k * math.pi / 5),
                cy + (r if k % 2 == 0 else 0.45 * r) * math.sin(angle + k * math.pi / 5))
               for k in range(10)]
    else:
        sides = {"triangle": 3, "square": 4, "hexagon": 6}[form]
        pts = [(cx + r * math.cos(angle + 2 * math.pi * k / sides),
                cy + r * math.sin(angle + 2 * math.pi * k / sides)) for k in range(sides)]
    draw.polygon(pts, fill=fill, outline=outline)


def draw_poster(traits: tuple[int, int, int, int], rng: np.random.Generator, size: int = 64
                ) -> bytes:
    """JPEG bytes of a poster with traits (palette, form, count, hatch)."""
    palette, form, count, hatch = traits
    top, bottom, ink = (np.clip(np.array(c, float) + rng.normal(0, 12, 3), 0, 255)
                        for c in PALETTES[palette])
    t = np.linspace(0, 1, size)[:, None, None]
    bg = (1 - t) * top + t * bottom
    img = Image.fromarray(np.broadcast_to(bg, (size, size, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    line = tuple(int(v) for v in 0.55 * bottom + 0.45 * ink)
    step, width = size * rng.uniform(0.12, 0.16), max(1, round(size / 40))
    name = HATCHES[hatch]
    offs = rng.uniform(0, step)
    if name in ("bands", "grid"):
        for y in np.arange(offs, size, step):
            draw.line((0, y, size, y), fill=line, width=width)
    if name == "grid":
        for x in np.arange(offs, size, step):
            draw.line((x, 0, x, size), fill=line, width=width)
    if name == "diagonal":
        for d in np.arange(offs - size, size, step):
            draw.line((d, 0, d + size, size), fill=line, width=width)
    n = COUNTS[count]
    cells = rng.permutation(9)[:n]  # a 3x3 grid keeps glyphs apart
    r = size * (0.2 if n == 1 else 0.13) * rng.uniform(0.85, 1.1)
    fill = tuple(int(v) for v in ink)
    for c in cells:
        cx = (c % 3 + 0.5) * size / 3 + rng.uniform(-0.06, 0.06) * size
        cy = (c // 3 + 0.5) * size / 3 + rng.uniform(-0.06, 0.06) * size
        if n == 1:
            cx, cy = size / 2 + rng.uniform(-0.1, 0.1) * size, size / 2 + rng.uniform(-0.1, 0.1) * size
        _glyph(draw, FORMS[form], cx, cy, r, rng.uniform(0, 2 * math.pi), fill, (20, 20, 20))
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.7)))
    arr = np.asarray(img, np.float32) + rng.normal(0, 5, (size, size, 3))
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=int(rng.integers(70, 96)))
    return buf.getvalue()


# -- the world --------------------------------------------------------------
def _zipf(n: int, rng: np.random.Generator, exponent: float = 0.9) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** exponent
    w = w[rng.permutation(n)]
    return w / w.sum()


class PosterWorld:
    def __init__(self, cfg: PosterConfig):
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 0x905])
        n = cfg.offers
        self.traits = np.stack([rng.integers(0, k, n) for k in TRAITS.values()], 1)
        # advertisers keep their house palette for 60% of their offers
        self.advertiser = rng.integers(0, cfg.advertisers, n)
        house = rng.integers(0, len(PALETTES), cfg.advertisers)
        keep = rng.random(n) < 0.6
        self.traits[keep, 0] = house[self.advertiser[keep]]
        self.image_ids = np.array([image_key_id(self.image_key(i)) for i in range(n)], np.int64)
        ads = rng.permutation(n)[:max(2, int(round(n * cfg.ad_share)))]
        n_new = int(round(len(ads) * cfg.new_ad_frac))
        self.new_ads, self.old_ads = np.sort(ads[:n_new]), np.sort(ads[n_new:])
        self.is_new = np.zeros(n, bool)
        self.is_new[self.new_ads] = True
        self.old_pop, self.new_pop = _zipf(len(self.old_ads), rng), _zipf(max(1, n_new), rng)
        self.quality = rng.normal(0, cfg.quality_std, n)
        # style space: a vector per trait value; an offer's style sums its traits'
        D = cfg.style_dim
        self.trait_vec = [rng.normal(0, 1, (k, D)) / math.sqrt(len(TRAITS)) for k in TRAITS.values()]
        self.style = sum(v[self.traits[:, j]] for j, v in enumerate(self.trait_vec))
        centres = rng.normal(0, 1, (cfg.segments, D))
        self.segment = rng.integers(0, cfg.segments, cfg.visitors)
        self.taste = centres[self.segment] + rng.normal(0, cfg.segment_spread, (cfg.visitors, D))
        # region says a little about the segment
        lean = rng.random(cfg.visitors) < 0.35
        self.region = np.where(lean, self.segment % cfg.regions,
                               rng.integers(0, cfg.regions, cfg.visitors))
        self.activity = rng.normal(0, cfg.activity_std, cfg.visitors)
        self.visit_w = np.exp(rng.normal(0, 0.6, cfg.visitors))
        self.visit_w /= self.visit_w.sum()
        self.slot_effect = -0.12 * np.arange(N_SLOT)
        self.device_effect = rng.normal(0, 0.15, N_DEVICE)
        self._histories(np.random.default_rng([cfg.seed, 0x906]))

    def image_key(self, i: int) -> str:
        return f"poster-{self.cfg.seed:03d}-{i:07d}.jpg"

    def visual(self, users: np.ndarray, offers: np.ndarray) -> np.ndarray:
        s = np.einsum("nd,nd->n", self.taste[users], self.style[offers])
        return self.cfg.visual_scale * s / math.sqrt(self.cfg.style_dim)

    def _histories(self, rng: np.random.Generator) -> None:
        """Offers each visitor clicked before (never new ones): drawn by exp(visual / temp)."""
        cfg = self.cfg
        catalog = np.flatnonzero(~self.is_new)
        self.hist_len = np.clip(rng.poisson(cfg.mean_history, cfg.visitors), 1, cfg.max_history)
        self.history = np.empty((cfg.visitors, cfg.max_history), np.int64)
        style = self.style[catalog]
        for lo in range(0, cfg.visitors, 1024):
            users = np.arange(lo, min(cfg.visitors, lo + 1024))
            logits = cfg.visual_scale * self.taste[users] @ style.T / math.sqrt(cfg.style_dim)
            logits /= cfg.history_temp
            p = np.exp(logits - logits.max(1, keepdims=True))
            cdf = np.cumsum(p, 1)
            cdf /= cdf[:, -1:]
            u = rng.random((len(users), cfg.max_history))
            rows = np.arange(len(users))[:, None]  # one sorted search over all rows at once
            idx = np.searchsorted((cdf + np.arange(len(users))[:, None]).ravel(), u + rows)
            idx = np.minimum(idx - rows * len(catalog), len(catalog) - 1)
            self.history[users] = catalog[idx]

    def impressions(self, day: int, n: int, test: bool) -> pa.Table:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, 0x907, day])
        users = rng.choice(cfg.visitors, n, p=self.visit_w)
        offers = self.old_ads[rng.choice(len(self.old_ads), n, p=self.old_pop)]
        if test and len(self.new_ads):
            new = rng.random(n) < cfg.new_ad_frac
            offers[new] = self.new_ads[rng.choice(len(self.new_ads), int(new.sum()), p=self.new_pop)]
        slot, device = rng.integers(0, N_SLOT, n), rng.integers(0, N_DEVICE, n)
        logit = (cfg.bias + self.quality[offers] + self.activity[users] + self.visual(users, offers)
                 + self.slot_effect[slot] + self.device_effect[device])
        p = 1.0 / (1.0 + np.exp(-logit))
        click = (rng.random(n) < p).astype(np.int8)
        lists = Lists(self.hist_len[users])
        beh = self.history[users[lists.row], lists.pos]
        return pa.table({
            "day": pa.array(np.full(n, day, np.int32)),
            "visitor": pa.array(users.astype(np.int64)),
            "region": pa.array(self.region[users].astype(np.int64)),
            "offer": pa.array(offers.astype(np.int64)),
            "advertiser": pa.array(self.advertiser[offers].astype(np.int64)),
            "offer_img": pa.array(self.image_ids[offers]),
            "slot": pa.array(slot.astype(np.int64)),
            "device": pa.array(device.astype(np.int64)),
            "clicked_offers": lists.column(beh.astype(np.int64)),
            "clicked_imgs": lists.column(self.image_ids[beh]),
            "fresh_offer": pa.array(self.is_new[offers].astype(np.int8)),
            "p_click": pa.array(p.astype(np.float32)),
            "clicked": pa.array(click),
        })


def synthesize_posters(out: str | Path, cfg: PosterConfig, overwrite: bool = False,
                       log=print) -> dict:
    """Write the poster world under ``out``: schema.json, day=NN/ Parquet, poster JPEGs
    and images.csv, the LMDB store (via the CSV ingest), truth/ and world.json."""
    from ..store.ingest import ingest, rows_from_path_csv

    out = fresh_dir(out, overwrite)
    world = PosterWorld(cfg)
    poster_schema(cfg.max_history).save(out)
    raw = out / "posters"
    raw.mkdir()
    with open(out / "images.csv", "w") as fh:
        fh.write("image_key,path\n")
        for i in range(cfg.offers):
            name = world.image_key(i)
            rng = np.random.default_rng([cfg.seed, 0x908, i])
            (raw / name).write_bytes(draw_poster(tuple(int(t) for t in world.traits[i]), rng,
                                                 cfg.image_size))
            fh.write(f"{name},posters/{name}\n")
    log(f"posters: drew {cfg.offers} images")
    summary = ingest(rows_from_path_csv(out / "images.csv"), out / "images",
                     num_partitions=cfg.partitions, check=True, progress=False)
    stats, test = write_days(out, world.impressions, cfg.train_days, cfg.samples_per_day,
                             "clicked")
    y, p = np.asarray(test["clicked"]), np.asarray(test["p_click"])
    u, fresh = np.asarray(test["visitor"]), np.asarray(test["fresh_offer"]).astype(bool)
    items = pa.table({"offer": np.arange(cfg.offers, dtype=np.int64), "image_id": world.image_ids,
                      **{t: world.traits[:, j] for j, t in enumerate(TRAITS)},
                      "is_ad": np.isin(np.arange(cfg.offers), np.r_[world.old_ads, world.new_ads]),
                      "is_new_ad": world.is_new})
    write_truth(out, items, TRAITS)
    info = {
        "format": "hvams-posters-world/1",
        "config": asdict(cfg),
        "train_days": [f"day={d:02d}" for d in range(cfg.train_days)],
        "test_day": f"day={cfg.train_days:02d}",
        "images_dir": "images",
        "stats": {**stats, "ctr": stats["clicks"] / stats["samples"],
                  "images": cfg.offers, "images_stored": summary["store_images"],
                  "mean_behaviors": float(world.hist_len.mean())},
        "oracle": {"test_auc": auc(y, p), "test_gauc": gauc(y, p, u),
                   "test_new_ad_auc": auc(y[fresh], p[fresh]) if fresh.any() else None},
        "pretrained_backbone": None,
    }
    (out / "world.json").write_text(json.dumps(info, indent=1))
    return info


def poster_preset(name: str, **overrides) -> PosterConfig:
    if name not in POSTER_PRESETS:
        raise ValueError(f"unknown posters preset {name!r}; choose from {list(POSTER_PRESETS)}")
    return replace(POSTER_PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
