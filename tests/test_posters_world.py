"""The second, independent world (``hvams data posters``) and what hvams does with it."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from hvams.data.posters import TRAITS, PosterWorld, poster_preset, synthesize_posters
from hvams.data.schema import Schema
from hvams.models.attributes import TrueAttributes, attributes_of
from hvams.store.decode import decode_rgb
from hvams.store.lmdb_store import ImageStore

SMALL = dict(visitors=400, offers=300, advertisers=30, samples_per_day=3000)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("posters")
    synthesize_posters(out, poster_preset("posters-tiny", **SMALL), log=lambda m: None)
    return out


def test_its_own_schema_store_and_truth(world_dir):
    schema = Schema.load(world_dir)
    assert (schema.user, schema.ad_id, schema.ad_image, schema.label) == \
        ("visitor", "offer", "offer_img", "clicked")
    day = pq.ParquetFile(world_dir / "day=00" / "part-00000.parquet").read()
    assert day.column_names == schema.columns()
    # every image a sample names is in the store (ingested from the JPEG files) and decodes
    store = ImageStore(world_dir / "images")
    assert len(store) == SMALL["offers"]
    keys = np.unique(np.concatenate([np.asarray(day["offer_img"]),
                                     np.asarray(day["clicked_imgs"].combine_chunks().flatten())]))
    blobs = store.get_many(keys)
    assert all(isinstance(b, bytes) and b[:2] == b"\xff\xd8" for b in blobs)
    assert tuple(decode_rgb(blobs[0]).shape) == (3, 64, 64)
    assert len((world_dir / "images.csv").read_text().splitlines()) == SMALL["offers"] + 1
    # the truth names its attributes, and true-attributes reads them (6+5+4+4 = 19-d)
    assert attributes_of(world_dir / "truth" / "items.parquet") == TRAITS
    table = TrueAttributes(world_dir / "truth" / "items.parquet")
    assert table.out_dim == sum(TRAITS.values())
    feats = table(torch.from_numpy(keys[:50]))
    assert (feats.sum(1) == len(TRAITS)).all()


def test_clicks_follow_p_click_and_the_visual_term_matters(world_dir):
    info = json.loads((world_dir / "world.json").read_text())
    test = pq.ParquetFile(world_dir / info["test_day"] / "part-00000.parquet").read()
    y, p = np.asarray(test["clicked"]), np.asarray(test["p_click"])
    assert abs(y.mean() - p.mean()) < 4 * np.sqrt(p.mean() / len(p))
    assert info["oracle"]["test_auc"] > 0.7
    world = PosterWorld(poster_preset("posters-tiny", **SMALL))
    users, offers = np.asarray(test["visitor"]), np.asarray(test["offer"])
    assert world.visual(users, offers).std() > 0.8  # the images carry a large share of the logit
    # histories lean to the visitor's taste: their styles score above random offers'
    beh = world.history[:, :10]
    liked = np.einsum("ud,ukd->uk", world.taste, world.style[beh]).mean()
    assert liked > np.einsum("ud,kd->uk", world.taste, world.style).mean() + 0.5


def test_same_seed_same_bytes_and_independent_of_the_builtin_world(tmp_path):
    def digest(d):
        return hashlib.sha256(b"".join((d / f).read_bytes() for f in
                                       ("day=00/part-00000.parquet", "truth/items.parquet",
                                        "posters/poster-000-0000007.jpg"))).hexdigest()

    cfg = poster_preset("posters-tiny", visitors=200, offers=100, advertisers=10,
                        samples_per_day=500)
    synthesize_posters(tmp_path / "a", cfg, log=lambda m: None)
    synthesize_posters(tmp_path / "b", cfg, log=lambda m: None)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    source = Path(__file__).parents[1].joinpath("hvams/data/posters.py").read_text()
    assert "from .render" not in source and "from .synth" not in source  # its own renderer


def test_bad_preset_and_values_are_named():
    with pytest.raises(ValueError, match="unknown posters preset 'huge'"):
        poster_preset("huge")
    with pytest.raises(ValueError, match="offers must be at least 1"):
        poster_preset("posters", offers=0)


def test_a_truth_table_whose_values_exceed_its_metadata_is_named(world_dir, tmp_path):
    from hvams.config import ConfigError

    table = pq.read_table(world_dir / "truth" / "items.parquet")
    bad = table.replace_schema_metadata({"hvams.attributes": json.dumps({**TRAITS, "count": 2})})
    pq.write_table(bad, tmp_path / "items.parquet")
    with pytest.raises(ConfigError, match=r"backbone_weights.*\['count'\] have values outside"):
        TrueAttributes(tmp_path / "items.parquet")
