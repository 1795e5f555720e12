"""The image model: every backbone, local weight files, frozen vs trainable."""
import numpy as np
import pytest
import torch

from hvams.config import TrainConfig
from hvams.models.image import ImageEmbedder, build_image_model


@pytest.mark.parametrize("backbone,features", [("small-cnn", 64), ("resnet18", 512),
                                               ("vgg16", 4096), ("mobilenet_v3_small", 576)])
def test_backbones_give_features_and_12d_embeddings(backbone, features):
    torch.manual_seed(0)
    model = ImageEmbedder(backbone, head=[32, 16] if backbone != "vgg16" else None)
    x = torch.randn(2, 3, 32, 32)
    assert model.feature_dim == features
    assert tuple(model.features(x).shape) == (2, features)
    out = model(x)
    assert tuple(out.shape) == (2, 12)
    if backbone == "vgg16":  # the paper's head on fc6: 4096-256-64-12
        dims = [m.out_features for m in model.head if isinstance(m, torch.nn.Linear)]
        assert dims == [256, 64, 12] and model.head[0].in_features == 4096


def test_batch_norm_uses_running_statistics():
    model = ImageEmbedder("resnet18", head=[16]).train()
    x = torch.randn(4, 3, 32, 32)
    alone = model(x[:1])
    together = model(x)[:1]
    assert torch.allclose(alone, together, atol=1e-5)  # independent of the batch it is in


@pytest.mark.parametrize("backbone", ["small-cnn", "mobilenet_v3_small"])
def test_weights_from_a_local_file_and_freezing(tmp_path, backbone):
    src = ImageEmbedder(backbone)
    full = src.backbone if backbone == "small-cnn" else None
    if backbone == "small-cnn":
        state = full.state_dict()
    else:  # a torchvision checkpoint of the whole network, as users have them
        import torchvision.models as tvm

        torch.manual_seed(3)
        state = tvm.mobilenet_v3_small(weights=None).state_dict()
    path = tmp_path / "w.pt"
    torch.save(state, path)
    cfg = TrainConfig(data="x", backbone=backbone, backbone_weights=str(path), freeze_backbone=True)
    model = build_image_model(cfg)
    own = model.backbone.state_dict()
    if backbone == "mobilenet_v3_small":  # the file's first conv landed in the body
        assert torch.equal(own["body.0.0.0.weight"], state["features.0.0.weight"])
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())      # frozen
    assert all(p.grad is not None for p in model.head.parameters())      # the head trains
    if backbone == "small-cnn":
        for k, v in state.items():
            assert torch.equal(own[k], v), k


def test_bad_weight_file_is_named(tmp_path):
    torch.save({"nonsense": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt"):
        ImageEmbedder("resnet18", weights=str(tmp_path / "bad.pt"))


def test_frozen_features_skip_decoding_cached_keys(tiny_world):
    """A frozen backbone's cached keys are not read again; embeddings equal the uncached path."""
    import numpy as np

    from hvams.imaging.embed import PixelEmbedder
    from hvams.imaging.source import ImageSource
    import pyarrow.parquet as pq

    from hvams.store.lmdb_store import ImageStore

    torch.manual_seed(0)
    model = ImageEmbedder("small-cnn", frozen=True)
    store = ImageStore(tiny_world / "images")
    keys = np.unique(np.asarray(pq.read_table(tiny_world / "day=00", columns=["ad_image"])["ad_image"]))
    keys = np.concatenate([keys[:40], [123456789]])  # one key the store does not have
    source = ImageSource(store, 32)
    embedder = PixelEmbedder(model)
    first = embedder.embed_from(source, keys)
    assert source.counts["requested"] == 41 and source.counts["missing"] == 1
    again = embedder.embed_from(source, keys[::-1].copy())
    # only the missing key (never cached) is asked of the store again
    assert source.counts["requested"] == 42 and source.counts["missing"] == 2
    assert torch.equal(again, first.flip(0))
    pixels, valid = ImageSource(store, 32).load(keys)
    assert valid.tolist() == [True] * 40 + [False]
    assert torch.allclose(PixelEmbedder(model).embed(keys, pixels, valid), first, atol=1e-6)


def test_a_trainable_backbone_gets_its_own_scaled_group():
    m = ImageEmbedder("small-cnn", frozen=False)
    (one,) = m.param_groups(1e-3)  # scale 1: one group, as before the option existed
    assert one["params"] == m.trainable_parameters() and one["base_lr"] == 1e-3
    body, rest = m.param_groups(1e-3, 0.1)
    assert body["lr"] == body["base_lr"] == pytest.approx(1e-4) and rest["lr"] == 1e-3
    assert {id(p) for p in body["params"]} == {id(p) for p in m.backbone.parameters()}
    assert sorted(map(id, body["params"] + rest["params"])) == \
        sorted(map(id, m.trainable_parameters()))
    frozen = ImageEmbedder("small-cnn", frozen=True)
    (only,) = frozen.param_groups(1e-3, 0.1)  # nothing of the backbone trains
    assert only["params"] == frozen.trainable_parameters()


def test_image_products_start_unweighted_and_learn(tiny_world):
    """With ``image_products`` the tower's first layer starts at zero on the products and
    every other weight is the paper model's (same seed), so at init it is the paper's
    model whatever the products hold; they get gradients."""
    from hvams.data.schema import Schema
    from hvams.models import build_model
    from hvams.models.inputs import Inputs

    schema = Schema.load(tiny_world)
    cfg = TrainConfig(data=str(tiny_world), model="dicm", image_products=True)
    model = build_model(cfg, schema)
    plain = build_model(TrainConfig(data=str(tiny_world), model="dicm"), schema)
    extra = model.agg.out_dim
    first = model.tower[0].weight
    assert first.shape[1] == plain.tower[0].weight.shape[1] + extra
    assert torch.equal(first[:, -extra:], torch.zeros_like(first[:, -extra:]))
    # every weight of the paper's model, seeded alike, is there unchanged
    wide = dict(model.state_dict())
    for name, value in plain.state_dict().items():
        got = wide[name][:, :value.shape[1]] if name == "tower.0.weight" else wide[name]
        assert torch.equal(got, value), name
    n, m, d = 4, 10, cfg.emb_dim
    g = torch.Generator().manual_seed(0)
    single = {f.name: torch.randn(n, d, generator=g) for f in schema.fields
              if (f.is_id and not f.is_list) or f.name == schema.ad_image}
    lists = {f.name: torch.randn(m, d, generator=g) for f in schema.fields if f.is_list}
    lengths = torch.tensor([1, 2, 3, 4])
    inp = Inputs(n, single, lists, torch.repeat_interleave(torch.arange(n), lengths), lengths)
    model(inp).sum().backward()
    assert first.grad[:, -extra:].abs().sum() > 0


@pytest.mark.parametrize("backbone", ["small-cnn", "resnet18"])
def test_a_trainable_backbone_in_chunks_equals_one_pass(backbone):
    """Above ``chunk`` images, a trainable backbone runs chunk by chunk and recomputes each
    chunk in backward (at most one chunk's activations alive): the same embeddings and
    parameter gradients as one pass over all images."""
    from hvams.imaging.embed import PixelEmbedder
    from hvams.runtime import Runtime

    pixels = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    valid = np.ones(10, bool)
    valid[3] = False
    grad = torch.randn(10, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results = []
    for chunk in (100, 4):
        torch.manual_seed(0)
        emb = PixelEmbedder(ImageEmbedder(backbone), 0, Runtime.cpu("fp64"), chunk=chunk)
        emb.model.train()  # (batch norm on its running statistics, as in training)
        calls = []  # a pre-hook: the recompute stops once it has what backward needs
        emb.model.backbone.register_forward_pre_hook(lambda m, i: calls.append(len(i[0])))
        out = emb.embed(np.arange(10), pixels, valid)
        out.backward(grad)
        results.append((out.detach(), [p.grad.clone() for p in emb.model.trainable_parameters()]))
        # 9 valid images: one pass, or 3 chunks forward and the same 3 again in backward
        if chunk == 100:
            assert calls == [9]
        else:
            assert calls[:3] == [4, 4, 1] and sorted(calls[3:]) == [1, 4, 4]
    (a, ga), (b, gb) = results
    assert torch.allclose(a, b, rtol=0, atol=1e-12)
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, rtol=1e-10, atol=1e-12)
