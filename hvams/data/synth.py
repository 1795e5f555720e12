"""The synthetic visual world: impressions whose click truth is known.

Items have latent visual attributes (shape, hue, pattern, size) that are
rendered into images with nuisance variation. Users have a visual taste,
favourite categories and a profile. The click probability of an impression is

    sigmoid(bias + ad quality (ID-level) + visual appeal(ad attributes)
            + taste(user, ad attributes) + category affinity + profile lean
            + position effect + hour effect)

and is stored as ``p_true``. Behaviors are items the user clicked before,
chosen by the same taste, so a user's taste can be read off their behavior
images. A share of the test day's impressions show ads never seen in training
(``is_new_ad``): an ID-only model knows nothing of them but their category,
brand and shop, while their image tells the visual terms.

Everything is generated in chunks (bounded memory) from RNG streams keyed by
(seed, purpose, day, chunk), so the output is byte-identical for a seed.
"""
from __future__ import annotations

import json
import math
import resource
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from ..keys import image_key_id
from ..metrics import auc, gauc
from .layout import Lists, fresh_dir
from .render import ATTRIBUTES, encode, render
from .schema import default_schema

N_AGE, N_GENDER, N_CITY, N_POS, N_HOUR = 7, 2, 4, 10, 24
BACKBONE_FILE = "backbone/small-cnn.pt"
N_COMBOS = math.prod(ATTRIBUTES.values())
CHURN_KEYS = ("ad_birth_rate", "ad_lifetime_days", "user_lifetime_days")


@dataclass
class WorldConfig:
    """Parameters of a synthetic world; presets below, any field overridable."""

    seed: int = 0
    users: int = 3000
    items: int = 4000
    ads: int = 4000                      # a long tail of ads, ~15 impressions each
    categories: int = 30
    brands: int = 150
    shops: int = 250
    train_days: int = 3
    samples_per_day: int = 20000
    image_size: int = 64
    image_format: str = "jpeg"
    shared_image_frac: float = 0.15
    mean_behaviors: float = 30.0
    max_behaviors: int = 50
    new_ad_frac: float = 0.10
    popularity_exponent: float = 1.0
    partitions: int = 64
    row_group_size: int = 4096
    rows_per_file: int = 250_000
    chunk_rows: int = 50_000
    # logit terms
    bias: float = -2.3
    ad_quality_std: float = 0.3
    appeal_std: float = 0.7
    taste_std: float = 0.45
    taste_favourites: float = 1.2
    taste_favourite_attrs: tuple = ("shape", "hue")  # each user has a favourite value of these
    shape_weight: float = 1.0            # scales shape's appeal and taste (see docs/data.md)
    category_affinity: float = 0.7
    gender_lean_std: float = 0.3
    position_effect: float = 0.08
    behavior_visual_temp: float = 0.5
    # Multi-modal taste (preset "multimodal"): each user has this many tastes; the one that
    # fires is the candidate ad's category group (category mod taste_modes). Behaviors drawn
    # by taste k lean to value k of ``mode_signature``, so a behavior image shows its taste
    # but an ad image does not show which taste the ad calls for (docs/data.md). 1 = one taste.
    taste_modes: int = 1
    mode_signature: str = "size"
    mode_signature_bonus: float = 1.5
    # A world that changes every day (preset "daily"): each day about ad_birth_rate of the
    # live ads are new, ads run ad_lifetime_days and users stay user_lifetime_days on
    # average (exponential), new users arrive as old ones leave. 0 = no churn: every ad and
    # user lives every day, and the world is byte-identical to one without these keys.
    ad_birth_rate: float = 0.0
    ad_lifetime_days: float = 0.0
    user_lifetime_days: float = 0.0
    # the pretrained backbone (stand-in for ImageNet weights); 0 images = none
    pretrain_images: int = 20000
    pretrain_epochs: int = 6
    pretrain_size: int = 32

    def __post_init__(self):
        if self.ads > self.items:
            raise ValueError(f"ads ({self.ads}) cannot exceed items ({self.items})")
        for name in ("users", "items", "ads", "categories", "train_days", "samples_per_day",
                     "max_behaviors", "partitions", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not 0 <= self.new_ad_frac < 1:
            raise ValueError("new_ad_frac must be in [0, 1)")
        bad = set(self.taste_favourite_attrs) - set(ATTRIBUTES)
        if bad:
            raise ValueError(f"taste_favourite_attrs: unknown attribute(s) {sorted(bad)}; "
                             f"choose from {list(ATTRIBUTES)}")
        if self.image_format not in ("jpeg", "png"):
            raise ValueError("image_format must be jpeg or png")
        if self.taste_modes < 1:
            raise ValueError("taste_modes must be at least 1")
        for name in ("ad_birth_rate", "ad_lifetime_days", "user_lifetime_days"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.churns and self.new_ad_frac > 0:
            raise ValueError("a churning world (ad_birth_rate, lifetimes) has its own new ads: "
                             "set new_ad_frac to 0")
        if self.taste_modes > 1:
            if self.mode_signature not in ATTRIBUTES or self.mode_signature in self.taste_favourite_attrs:
                raise ValueError(f"mode_signature must be an attribute of {list(ATTRIBUTES)} that is "
                                 f"not in taste_favourite_attrs (got {self.mode_signature!r})")
            small = [a for a in (self.mode_signature, *self.taste_favourite_attrs)
                     if ATTRIBUTES[a] < self.taste_modes]
            if small:
                raise ValueError(f"taste_modes={self.taste_modes} needs that many values of "
                                 f"{small} (distinct per taste)")


    @property
    def churns(self) -> bool:
        return bool(self.ad_birth_rate or self.ad_lifetime_days or self.user_lifetime_days)

PRESETS = {
    "tiny": WorldConfig(users=300, items=600, ads=200, categories=12, brands=40, shops=60,
                        train_days=2, samples_per_day=2000, partitions=8, row_group_size=512,
                        pretrain_images=1000, pretrain_epochs=1),
    "demo": WorldConfig(),
    # Clicks driven by what the pretrained backbone can see (hue, pattern, size: it reads
    # shape at 46%), small per-ad quality, taste as favourites (docs/data.md, "bench").
    "bench": WorldConfig(users=60_000, items=60_000, ads=60_000, categories=60, brands=800,
                         shops=1500, train_days=4, samples_per_day=250_000,
                         shape_weight=0.0, appeal_std=1.0, taste_std=0.15, taste_favourites=0.8,
                         taste_favourite_attrs=("hue", "pattern"), ad_quality_std=0.1,
                         pretrain_size=64),
    # Two tastes per user; which one fires depends on the ad's category, which the ad's image
    # does not show: the world where MQAP's ad-ID query beats one image query. Strong,
    # conflicting tastes and 2,000 ads (each ad ID seen ~125 times a day, so its query trains).
    "multimodal": WorldConfig(users=20_000, items=30_000, ads=2_000, categories=60, brands=800,
                              shops=1500, train_days=1, samples_per_day=250_000,
                              shape_weight=0.0, appeal_std=0.5, taste_std=0.15,
                              taste_favourites=2.0, taste_favourite_attrs=("hue", "pattern"),
                              ad_quality_std=0.1, pretrain_size=64, taste_modes=2),
    # Paper-like traffic for `hvams bench comm`: 40 behavior images per sample,
    # batches of 3,000 samples per worker; bytes only, so no pretrained backbone.
    "paper": WorldConfig(users=20_000, items=20_000, ads=20_000, categories=60, brands=800,
                         shops=1500, train_days=1, samples_per_day=36_000, mean_behaviors=40.0,
                         max_behaviors=60, pretrain_images=0),
    # Retrained every day (hvams bench lifecycle): 30 days and a test day; each day about 1%
    # of the live ads are new (the paper's rate), ads run ~100 days, users stay ~8 days, so
    # the IDs seen turn over and a table that keeps every row grows day after day.
    "daily": WorldConfig(users=600_000, items=60_000, ads=20_000, categories=60, brands=800,
                         shops=1500, train_days=30, samples_per_day=30_000, mean_behaviors=10.0,
                         max_behaviors=20, new_ad_frac=0.0, image_size=32, partitions=16,
                         ad_birth_rate=0.01, ad_lifetime_days=100.0, user_lifetime_days=8.0,
                         pretrain_images=0),
}


def preset(name: str, **overrides) -> WorldConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    known = {f.name for f in fields(WorldConfig)}
    bad = set(overrides) - known
    if bad:
        raise ValueError(f"unknown world parameter(s) {sorted(bad)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


def _rng(cfg: WorldConfig, *tags: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, *tags])


def _grouped(values: np.ndarray, groups: np.ndarray, n_groups: int):
    """values sorted by group, with each group's start and count."""
    order = np.argsort(groups, kind="stable")
    count = np.bincount(groups, minlength=n_groups)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    return values[order], start, count


def _one_hot(idx: np.ndarray, n: int) -> np.ndarray:
    """(..., n) float one-hot of integer ``idx``."""
    return (idx[..., None] == np.arange(n)).astype(np.float64)


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    w = (np.arange(n) + 1.0) ** -exponent
    rng.shuffle(w)
    return w / w.sum()


class World:
    """The latent truth: items, images, users and their histories."""

    def __init__(self, cfg: WorldConfig):
        self.cfg = cfg
        rng = _rng(cfg, 1)
        n_items = cfg.items
        # Categories lean towards one shape each, so category says a little about looks.
        cat_pop = _zipf_weights(cfg.categories, 0.8, rng)
        self.item_category = rng.choice(cfg.categories, n_items, p=cat_pop)
        cat_shape = rng.integers(0, ATTRIBUTES["shape"], cfg.categories)
        attrs = np.stack([rng.integers(0, k, n_items) for k in ATTRIBUTES.values()], 1)
        lean = rng.random(n_items) < 0.4
        attrs[lean, 0] = cat_shape[self.item_category[lean]]
        self.item_brand = rng.integers(0, cfg.brands, n_items)
        self.item_shop = rng.integers(0, cfg.shops, n_items)
        # Some items share an image (same product, another listing): same attributes too.
        n_images = max(1, int(round(n_items * (1 - cfg.shared_image_frac))))
        image_of = np.arange(n_items)
        shared = np.arange(n_images, n_items)
        image_of[shared] = rng.integers(0, n_images, len(shared))
        attrs[shared] = attrs[image_of[shared]]
        self.item_attrs = attrs
        self.item_image_index = image_of
        self.n_images = n_images
        self.image_ids = np.array([image_key_id(self.image_name(i)) for i in range(n_images)],
                                  dtype=np.int64)
        self.image_attrs = np.zeros((n_images, 4), np.int64)
        self.image_attrs[image_of[:n_images]] = attrs[:n_images]
        self.combo = self._combo(attrs)
        # Ads are a subset of items; some ads are new: only shown on the test day.
        self.ads = np.sort(rng.choice(n_items, cfg.ads, replace=False))
        n_new = int(round(cfg.ads * cfg.new_ad_frac)) if cfg.new_ad_frac > 0 else 0
        perm = rng.permutation(cfg.ads)
        self.new_ads = np.sort(self.ads[perm[:n_new]])
        self.old_ads = np.sort(self.ads[perm[n_new:]])
        self.is_new_item = np.zeros(n_items, bool)
        self.is_new_item[self.new_ads] = True
        self.ad_quality = rng.normal(0, cfg.ad_quality_std, n_items)
        self.old_ad_pop = _zipf_weights(len(self.old_ads), cfg.popularity_exponent, rng)
        self.new_ad_pop = _zipf_weights(max(1, len(self.new_ads)), cfg.popularity_exponent, rng)
        self.item_pop = _zipf_weights(n_items, 0.7, rng)
        # Global visual appeal per attribute value, and a gender lean per category.
        self.appeal = [rng.normal(0, cfg.appeal_std, k) for k in ATTRIBUTES.values()]
        self.appeal[0] *= cfg.shape_weight
        self.gender_lean = rng.normal(0, cfg.gender_lean_std, cfg.categories)
        self.hour_effect = 0.15 * np.sin(np.arange(N_HOUR) / N_HOUR * 2 * np.pi)
        self._users(rng)
        self._histories()
        if cfg.churns:
            self._lifespans()

    def _lifespans(self) -> None:
        """[birth, death) day of every ad and user (a stream of its own, so worlds without
        churn keep their bytes). Day 0 starts with a live pool; later births are spread
        evenly over the days, and lifetimes are exponential (memoryless: a live ad or
        user leaves with the same chance each day)."""
        cfg, days = self.cfg, self.cfg.train_days + 1
        rng = _rng(cfg, 7)

        def spans(n, new_per_day, lifetime):
            initial = min(n, max(1, int(round(n / (1 + new_per_day * (days - 1))))))
            birth = np.zeros(n, np.int64)
            later = rng.permutation(n)[initial:]
            birth[later] = rng.integers(1, days, len(later))
            if lifetime <= 0:
                return birth, np.full(n, days, np.int64)
            return birth, birth + np.ceil(rng.exponential(lifetime, n)).astype(np.int64)

        self.ad_birth = np.zeros(cfg.items, np.int64)
        self.ad_death = np.full(cfg.items, days, np.int64)
        birth, death = spans(len(self.old_ads), cfg.ad_birth_rate, cfg.ad_lifetime_days)
        self.ad_birth[self.old_ads], self.ad_death[self.old_ads] = birth, death
        life = cfg.user_lifetime_days
        self.user_birth, self.user_death = spans(cfg.users, 1 / life if life else 0.0, life)

    def alive(self, day: int) -> tuple[np.ndarray, np.ndarray]:
        """Sampling weights of users and of ``old_ads`` on ``day``: only the live ones."""
        users = self.activity * ((self.user_birth <= day) & (day < self.user_death))
        ads = self.old_ad_pop * ((self.ad_birth[self.old_ads] <= day) &
                                 (day < self.ad_death[self.old_ads]))
        return users / users.sum(), ads / ads.sum()

    @staticmethod
    def _combo(attrs: np.ndarray) -> np.ndarray:
        sizes = list(ATTRIBUTES.values())
        c = np.zeros(len(attrs), np.int64)
        for j, k in enumerate(sizes):
            c = c * k + attrs[:, j]
        return c

    def image_name(self, i: int) -> str:
        return f"img-{self.cfg.seed:04d}-{i:08d}"

    def _users(self, rng: np.random.Generator) -> None:
        cfg, n = self.cfg, self.cfg.users
        self.age = rng.integers(0, N_AGE, n)
        self.gender = rng.integers(0, N_GENDER, n)
        self.city = rng.integers(0, N_CITY, n)
        self.activity = rng.lognormal(0, 0.6, n)
        self.activity /= self.activity.sum()
        # Taste: small noise on every attribute value plus a favourite value of some attributes.
        self.taste = [rng.normal(0, cfg.taste_std, (n, k)) for k in ATTRIBUTES.values()]
        for j in (list(ATTRIBUTES).index(a) for a in cfg.taste_favourite_attrs):
            fav = rng.integers(0, self.taste[j].shape[1], n)
            self.taste[j][np.arange(n), fav] += cfg.taste_favourites
        self.taste[0] *= cfg.shape_weight
        if cfg.taste_modes > 1:
            self._mode_tastes()
        cat_pop = np.bincount(self.item_category, minlength=cfg.categories) + 1.0
        self.fav_cats = np.stack([rng.choice(cfg.categories, 3, replace=False, p=cat_pop / cat_pop.sum())
                                  for _ in range(n)])

    def _mode_tastes(self) -> None:
        """``mode_taste[j][k, user, value]``: the shared noise plus, per taste k, distinct
        favourite values of the favourite attributes, each liked by its own taste and
        disliked by the others, so that the tastes average out: a reader blind to which
        taste an ad calls for learns nothing from the favourites."""
        cfg, n, K = self.cfg, self.cfg.users, self.cfg.taste_modes
        rng = _rng(cfg, 5)  # a stream of its own: one-taste worlds stay byte-identical
        names = list(ATTRIBUTES)
        favourite = {names.index(a) for a in cfg.taste_favourite_attrs}
        self.mode_taste = []
        for j, values in enumerate(ATTRIBUTES.values()):
            # favourite attributes: fresh noise, without the one-taste favourite
            noise = rng.normal(0, cfg.taste_std, (n, values)) if j in favourite else self.taste[j]
            per_mode = np.repeat(noise[None], K, 0)
            if j in favourite:
                favs = np.argsort(rng.random((n, values)), 1)[:, :K]  # K distinct values
                for k in range(K):  # taste k likes its favourite and dislikes the others'
                    per_mode[k] -= cfg.taste_favourites / (K - 1) * _one_hot(favs, values).sum(1)
                    per_mode[k, np.arange(n), favs[:, k]] += cfg.taste_favourites * K / (K - 1)
            self.mode_taste.append(per_mode)

    def taste_mode(self, cats: np.ndarray) -> np.ndarray:
        """Which of a user's tastes an ad of category ``cats`` calls for."""
        return cats % self.cfg.taste_modes

    def visual_taste(self, users: np.ndarray, attrs: np.ndarray,
                     cats: np.ndarray | None = None) -> np.ndarray:
        if self.cfg.taste_modes > 1:
            mode = self.taste_mode(cats)
            return sum(self.mode_taste[j][mode, users, attrs[:, j]] for j in range(4))
        return sum(self.taste[j][users, attrs[:, j]] for j in range(4))

    def visual_appeal(self, attrs: np.ndarray) -> np.ndarray:
        return sum(self.appeal[j][attrs[:, j]] for j in range(4))

    def category_bonus(self, users: np.ndarray, cats: np.ndarray) -> np.ndarray:
        return (self.fav_cats[users] == cats[:, None]).any(1) * self.cfg.category_affinity

    def _histories(self) -> None:
        """Each user's click history (newest first), long enough for every day."""
        cfg = self.cfg
        rng = _rng(cfg, 2)
        shift = 3  # new clicks per day: histories move with the days
        self.hist_len = cfg.max_behaviors + shift * (cfg.train_days + 1)
        self.day_shift = shift
        sigma = 0.45
        lengths = rng.lognormal(math.log(cfg.mean_behaviors) - sigma ** 2 / 2, sigma, cfg.users)
        self.beh_len = np.clip(np.round(lengths), 1, cfg.max_behaviors).astype(np.int64)
        catalog = np.flatnonzero(~self.is_new_item)
        combo_items, combo_start, combo_count = _grouped(catalog, self.combo[catalog], N_COMBOS)
        cat_items, cat_start, cat_count = _grouped(catalog, self.item_category[catalog],
                                                   cfg.categories)
        combo_attrs = np.array(np.unravel_index(np.arange(N_COMBOS), list(ATTRIBUTES.values()))).T
        K = cfg.taste_modes
        if K > 1:  # taste k draws from the categories that call for it
            mode_rng = _rng(cfg, 6)
            in_group = [catalog[self.taste_mode(self.item_category[catalog]) == k] for k in range(K)]
            by_group = [_grouped(c, self.combo[c], N_COMBOS) for c in in_group]
        hist = np.empty((cfg.users, self.hist_len), np.int32)  # item ids: half the memory of int64

        def visual(taste, users, items, start, count, u, pick):
            """A combo by exp(taste), then an item of that combo (u, pick: uniforms)."""
            logits = sum(taste[j][users][:, combo_attrs[:, j]] for j in range(4))
            logits = logits / cfg.behavior_visual_temp
            logits[:, count == 0] = -np.inf
            p = np.exp(logits - logits.max(1, keepdims=True))
            cdf = np.cumsum(p / p.sum(1, keepdims=True), 1)
            combos = np.minimum((u[..., None] > cdf[:, None, :]).sum(-1), N_COMBOS - 1)
            return items[start[combos] + (pick * count[combos]).astype(np.int64)]

        for lo in range(0, cfg.users, 2048):
            users = np.arange(lo, min(cfg.users, lo + 2048))
            shape = (len(users), self.hist_len)
            # Visual stage: a combo by exp(taste), then an item of that combo.
            u = rng.random(shape)
            pick = rng.random(shape)
            if K == 1:
                by_combo = visual(self.taste, users, combo_items, combo_start, combo_count, u, pick)
            else:  # each behavior comes from one of the user's tastes
                slot = mode_rng.integers(0, K, shape)
                by_combo = np.empty(shape, np.int64)
                sig = list(ATTRIBUTES).index(cfg.mode_signature)
                for k in range(K):
                    taste_k = [t[k] for t in self.mode_taste]
                    # the user browsed taste k's items in signature value k
                    taste_k[sig] = taste_k[sig].copy()
                    taste_k[sig][:, k] += cfg.mode_signature_bonus
                    drawn = visual(taste_k, users, *by_group[k], u, pick)
                    by_combo = np.where(slot == k, drawn, by_combo)
            # Category stage (30%): an item of one of the user's favourite categories.
            fav = self.fav_cats[users][np.arange(len(users))[:, None], rng.integers(0, 3, shape)]
            from_cat = (rng.random(shape) < 0.3) & (cat_count[fav] > 0)
            by_cat = cat_items[cat_start[fav] + (pick * cat_count[fav]).astype(np.int64)]
            hist[users] = np.where(from_cat, by_cat, by_combo)
        self.history = hist

    # -- impressions ------------------------------------------------------
    def impressions(self, day: int, n: int, chunk: int, test: bool) -> pa.Table:
        cfg = self.cfg
        rng = _rng(cfg, 3, day, chunk)
        user_p, ad_p = self.alive(day) if cfg.churns else (self.activity, self.old_ad_pop)
        users = rng.choice(cfg.users, n, p=user_p)
        ads = self.old_ads[rng.choice(len(self.old_ads), n, p=ad_p)]
        if test and len(self.new_ads):
            new = rng.random(n) < cfg.new_ad_frac
            ads[new] = self.new_ads[rng.choice(len(self.new_ads), int(new.sum()), p=self.new_ad_pop)]
        position = rng.integers(0, N_POS, n)
        hour = rng.integers(0, N_HOUR, n)
        attrs = self.item_attrs[ads]
        cats = self.item_category[ads]
        logit = (cfg.bias + self.ad_quality[ads] + self.visual_appeal(attrs)
                 + self.visual_taste(users, attrs, cats) + self.category_bonus(users, cats)
                 + self.gender_lean[cats] * (2 * self.gender[users] - 1)
                 - cfg.position_effect * position + self.hour_effect[hour])
        p_true = 1.0 / (1.0 + np.exp(-logit))
        click = (rng.random(n) < p_true).astype(np.int8)
        # Behaviors: the user's history window for this day, newest first.
        start = (cfg.train_days - day) * self.day_shift
        lists = Lists(self.beh_len[users])
        beh = self.history[users[lists.row], start + lists.pos]
        if cfg.churns:  # a behavior is a past click: never on an ad born later
            born = self.ad_birth[beh] <= day
            if not born.all():
                lists = Lists(np.bincount(lists.row[born], minlength=n))
                beh = beh[born]
        beh_image = self.image_ids[self.item_image_index[beh]]
        lst = lists.column

        return pa.table({
            "day": pa.array(np.full(n, day, np.int32)),
            "user_id": pa.array(users.astype(np.int64)),
            "age": pa.array(self.age[users].astype(np.int64)),
            "gender": pa.array(self.gender[users].astype(np.int64)),
            "city_tier": pa.array(self.city[users].astype(np.int64)),
            "ad_id": pa.array(ads.astype(np.int64)),
            "category": pa.array(cats.astype(np.int64)),
            "brand": pa.array(self.item_brand[ads].astype(np.int64)),
            "shop": pa.array(self.item_shop[ads].astype(np.int64)),
            "ad_image": pa.array(self.image_ids[self.item_image_index[ads]]),
            "position": pa.array(position.astype(np.int64)),
            "hour": pa.array(hour.astype(np.int64)),
            "beh_item": lst(beh.astype(np.int64)),
            "beh_category": lst(self.item_category[beh].astype(np.int64)),
            "beh_image": lst(beh_image),
            "is_new_ad": pa.array((self.ad_birth[ads] == day if cfg.churns and day > 0 else
                                   self.is_new_item[ads]).astype(np.int8)),
            "p_true": pa.array(p_true.astype(np.float32)),
            "click": pa.array(click),
        })

    def image_rows(self):
        """(source, key, encoded bytes) of every image, rendered deterministically."""
        cfg = self.cfg
        for i in range(self.n_images):
            img = render(tuple(int(a) for a in self.image_attrs[i]), _rng(cfg, 4, i), cfg.image_size)
            yield f"synth:{i}", self.image_name(i), encode(img, cfg.image_format)


def _write_truth(world: World, out: Path) -> None:
    truth = out / "truth"
    truth.mkdir(exist_ok=True)
    items = pa.table({
        "item_id": np.arange(world.cfg.items, dtype=np.int64),
        "category": world.item_category, "brand": world.item_brand, "shop": world.item_shop,
        **{name: world.item_attrs[:, j] for j, name in enumerate(ATTRIBUTES)},
        "image_id": world.image_ids[world.item_image_index],
        "is_ad": np.isin(np.arange(world.cfg.items), world.ads),
        "is_new_ad": world.is_new_item,
        **({"birth_day": world.ad_birth, "death_day": world.ad_death} if world.cfg.churns
           else {}),
    })
    pq.write_table(items, truth / "items.parquet")
    modes = {}
    if world.cfg.taste_modes > 1:  # (tastes, users, values) per attribute
        modes = {f"mode_taste_{name}": world.mode_taste[j] for j, name in enumerate(ATTRIBUTES)}
    np.savez_compressed(truth / "users.npz", taste_shape=world.taste[0], taste_hue=world.taste[1],
                        taste_pattern=world.taste[2], taste_size=world.taste[3],
                        fav_cats=world.fav_cats, age=world.age, gender=world.gender,
                        city=world.city, **modes)


def synthesize(out: str | Path, cfg: WorldConfig, progress: bool = True,
               overwrite: bool = False, pretrain=None) -> dict:
    """Write the Parquet days, the image store and ``world.json`` under ``out``.

    ``pretrain(path, n, epochs, size, render_size, seed=, log=)`` writes the world's
    pretrained backbone when ``cfg.pretrain_images`` asks for one; without it the
    world has none (``hvams.pretrain.synthesize_world`` passes the trainer)."""
    from ..store.ingest import ingest

    out = fresh_dir(out, overwrite)
    world = World(cfg)
    schema = default_schema(cfg.max_behaviors)
    schema.save(out)
    days = cfg.train_days + 1
    stats = {"samples": 0, "clicks": 0, "behaviors": 0, "new_ad_samples": 0}
    test_labels, test_p, test_users, test_new = [], [], [], 0
    bar = tqdm(total=days * cfg.samples_per_day, desc="synth", unit="row", disable=not progress)
    for day in range(days):
        test = day == cfg.train_days
        day_dir = out / f"day={day:02d}"
        day_dir.mkdir()
        writer, file_idx, file_rows = None, 0, 0
        written, chunk = 0, 0
        while written < cfg.samples_per_day:
            n = min(cfg.chunk_rows, cfg.samples_per_day - written)
            table = world.impressions(day, n, chunk, test)
            if writer is None or file_rows >= cfg.rows_per_file:
                if writer is not None:
                    writer.close()
                    file_idx += 1
                writer = pq.ParquetWriter(day_dir / f"part-{file_idx:05d}.parquet", table.schema)
                file_rows = 0
            writer.write_table(table, row_group_size=cfg.row_group_size)
            file_rows += n
            written += n
            chunk += 1
            stats["samples"] += n
            stats["clicks"] += int(np.asarray(table["click"]).sum())
            stats["behaviors"] += len(pc.list_flatten(table["beh_item"]))
            stats["new_ad_samples"] += int(np.asarray(table["is_new_ad"]).sum())
            if test:
                test_labels.append(np.asarray(table["click"]))
                test_p.append(np.asarray(table["p_true"]))
                test_users.append(np.asarray(table["user_id"]))
                test_new += int(np.asarray(table["is_new_ad"]).sum())
            bar.update(n)
        writer.close()
    bar.close()
    summary = ingest(world.image_rows(), out / "images", num_partitions=cfg.partitions,
                     check=True, progress=progress)
    _write_truth(world, out)
    pretrained = None
    if cfg.pretrain_images and pretrain is not None:
        (out / "backbone").mkdir()
        pretrained = pretrain(
            str(out / BACKBONE_FILE), cfg.pretrain_images, cfg.pretrain_epochs, cfg.pretrain_size,
            cfg.image_size, seed=1_000_003 + cfg.seed,
            log=(lambda m: print(m, flush=True)) if progress else (lambda m: None))
    y, p, u = map(np.concatenate, (test_labels, test_p, test_users))
    info = {
        "format": "hvams-synthetic-world/1",
        # a world without churn records no churn keys: its world.json stays as it was
        "config": {k: v for k, v in asdict(cfg).items() if cfg.churns or k not in CHURN_KEYS},
        "train_days": [f"day={d:02d}" for d in range(cfg.train_days)],
        "test_day": f"day={cfg.train_days:02d}",
        "images_dir": "images",
        "stats": {**stats, "ctr": stats["clicks"] / stats["samples"],
                  "mean_behaviors": stats["behaviors"] / stats["samples"],
                  "images": world.n_images, "images_stored": summary["store_images"],
                  "test_new_ad_share": test_new / cfg.samples_per_day},
        "oracle": {"test_auc": auc(y, p), "test_gauc": gauc(y, p, u)},
        "pretrained_backbone": ({"file": BACKBONE_FILE, **pretrained} if pretrained else None),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    (out / "world.json").write_text(json.dumps(info, indent=1))
    return info


def load_world_info(data_dir: str | Path) -> dict | None:
    path = Path(data_dir) / "world.json"
    return json.loads(path.read_text()) if path.exists() else None
