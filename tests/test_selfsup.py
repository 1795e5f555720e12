"""``hvams images pretrain``: contrastive pretraining on the store's own images."""
import numpy as np
import torch
from click.testing import CliRunner

from cli.main import main
from hvams.data.posters import TRAITS, poster_preset, synthesize_posters
from hvams.models.attributes import attribute_labels
from hvams.models.image import ImageEmbedder, SmallCNN
from hvams.pretrain.selfsup import (augment, backbone_features, linear_probe, load_store_pixels,
                                  nt_xent, pretrain_on_pixels)


def test_nt_xent_rewards_matching_views():
    torch.manual_seed(0)
    z = torch.randn(64, 16)
    same = nt_xent(z, z + 0.01 * torch.randn_like(z), 0.2)
    shuffled = nt_xent(z, z[torch.randperm(64)], 0.2)
    assert same < 0.5 * np.log(127) < np.log(127) < shuffled  # chance: log(2k - 1)


def test_augment_is_seeded_and_keeps_the_shape():
    x = torch.randn(8, 3, 32, 32)
    a = augment(x, torch.Generator().manual_seed(1), channel_jitter=0.2)
    b = augment(x, torch.Generator().manual_seed(1), channel_jitter=0.2)
    c = augment(x, torch.Generator().manual_seed(2), channel_jitter=0.2)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)


def test_pretraining_on_the_store_reads_more_than_random_weights(tmp_path):
    """Direction: after a short pretraining on a posters store (contrastive, then a cluster
    round), a linear probe reads the hatch and the glyph count better than from the same
    network at random init."""
    synthesize_posters(tmp_path / "w", poster_preset("posters-tiny", visitors=200,
                                                     samples_per_day=500), log=lambda m: None)
    pixels, ids, bad = load_store_pixels(str(tmp_path / "w" / "images"), 32, None, 0, 1 << 24)
    assert bad == 0
    weights = tmp_path / "ssl.pt"
    result = pretrain_on_pixels(pixels, str(weights), epochs=30, batch=64, clusters=64, seed=0,
                                threads=2, log=lambda m: None)
    assert result["images"] == 1500 and result["loss_last"] < result["loss_first"]
    assert result["clusters"] == 64 and result["cluster_rounds"] == 1
    names, labels, known = attribute_labels(tmp_path / "w" / "truth" / "items.parquet", ids)
    assert names == list(TRAITS) and known.all()
    torch.manual_seed(0)
    nets = {"random": SmallCNN(), "pretrained": SmallCNN()}
    nets["pretrained"].load_state_dict(torch.load(weights, weights_only=True))
    acc = {k: linear_probe(backbone_features(n, pixels), labels, names) for k, n in nets.items()}
    for trait in ("hatch", "count"):
        assert acc["pretrained"][trait] > acc["random"][trait] + 0.05, acc
    # the saved features are standardised over the images pretrained on
    feats = backbone_features(nets["pretrained"], pixels)
    live = feats.std(0) > 0.5
    assert live.sum() >= 32 and feats.mean(0).abs().max() < 1e-3
    assert (feats.std(0)[live] - 1).abs().max() < 1e-3


def test_weights_saved_without_standardisation_load_as_identity(tmp_path):
    torch.manual_seed(0)
    net = SmallCNN()
    x = torch.randn(6, 3, 32, 32)
    old = {k: v for k, v in net.state_dict().items() if k not in SmallCNN.STANDARDISE}
    torch.save(old, tmp_path / "old.pt")
    frozen = ImageEmbedder("small-cnn", weights=str(tmp_path / "old.pt"), frozen=True)
    assert torch.equal(frozen.features(x), net.net(x))
    # a standardised file carries its statistics into the frozen backbone
    net.set_standardisation(net.net(torch.randn(64, 3, 32, 32)))
    torch.save(net.state_dict(), tmp_path / "new.pt")
    loaded = ImageEmbedder("small-cnn", weights=str(tmp_path / "new.pt"), frozen=True)
    assert torch.equal(loaded.features(x), (net.net(x) - net.feature_mean) / net.feature_std)
    assert not torch.equal(loaded.features(x), frozen.features(x))


def test_cli_names_a_missing_or_empty_store(tmp_path):
    r = CliRunner().invoke(main, ["images", "pretrain", "--store", str(tmp_path / "nope"),
                                  "--out", str(tmp_path / "w.pt")])
    assert r.exit_code == 2 and "nope" in r.output
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(main, ["images", "pretrain", "--store", str(tmp_path / "empty"),
                                  "--out", str(tmp_path / "w.pt")])
    assert r.exit_code == 2 and "hvams: error:" in r.output and "empty" in r.output, r.output
