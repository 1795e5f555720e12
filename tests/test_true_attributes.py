"""The ``true-attributes`` backbone: an image key's true attributes, one-hot, from the truth."""
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from hvams.config import ConfigError, TrainConfig
from hvams.data.render import ATTRIBUTES
from hvams.imaging.embed import KeyEmbedder, embedder_for
from hvams.models.attributes import TrueAttributes, truth_file
from hvams.models.image import build_image_model


def unique_images(world, columns=("image_id", *ATTRIBUTES)):
    """Columns of truth/items.parquet, one row per image."""
    t = pq.read_table(truth_file(world), columns=list(columns))
    _, first = np.unique(np.asarray(t["image_id"]), return_index=True)
    return {c: np.asarray(t[c])[first] for c in columns}


def test_lookup_is_the_one_hot_of_the_truth(tiny_world):
    items = unique_images(tiny_world)
    backbone = TrueAttributes(truth_file(tiny_world))
    keys = torch.tensor(np.r_[items["image_id"][:50], [12345, -7]], dtype=torch.int64)
    feats, known = backbone.lookup(keys, torch.float64)
    assert known.tolist() == [True] * 50 + [False, False]
    assert feats.shape == (52, 20) and feats.dtype == torch.float64
    assert feats[50:].abs().sum() == 0
    sizes = list(ATTRIBUTES.values())
    start = 0
    for name, k in zip(ATTRIBUTES, sizes):
        block = feats[:50, start:start + k]
        assert block.sum(1).tolist() == [1.0] * 50
        assert block.argmax(1).tolist() == items[name][:50].tolist(), name
        start += k


def test_keys_not_pixels_reach_the_head(tiny_world):
    cfg = TrainConfig(data=str(tiny_world), model="dicm", backbone="true-attributes",
                      freeze_backbone=True).validate()
    model = build_image_model(cfg)
    embedder = embedder_for(model)
    assert isinstance(embedder, KeyEmbedder) and model.frozen
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert "keys" not in model.state_dict() and "backbone.keys" not in model.state_dict()
    keys = np.r_[unique_images(tiny_world, ["image_id"])["image_id"][:8], [999]]
    out = embedder.embed_from(source=None, keys=keys)  # no store needed: keys are looked up
    assert out.shape == (9, cfg.emb_dim)
    assert torch.equal(out[8], model.missing.detach())  # unknown key: the learned missing row
    out.sum().backward()
    assert model.head[0].weight.grad is not None  # the head trains


def test_true_attributes_must_be_frozen_and_needs_the_truth(tiny_world, tmp_path):
    with pytest.raises(ConfigError, match="freeze_backbone"):
        TrainConfig(data=str(tiny_world), backbone="true-attributes").validate()
    with pytest.raises(ConfigError, match="backbone_weights.*does not exist"):
        TrueAttributes(tmp_path / "nowhere.parquet")
    bad = tmp_path / "bad.parquet"
    pq.write_table(pq.read_table(truth_file(tiny_world), columns=["image_id", "hue"]), bad)
    with pytest.raises(ConfigError, match="backbone_weights.*not a truth table"):
        TrueAttributes(bad)
