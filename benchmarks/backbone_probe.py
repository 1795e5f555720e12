"""How much of the ad image's click signal a frozen backbone lets a head learn.

    python benchmarks/backbone_probe.py data/bench --size 64 --days day=00 [--passes 6]

Trains the paper's image head (256-64-12, then a linear click output) for one
pass (``--passes``: more) over the training days' impressions, with the ad image
as the only input, twice: on the frozen backbone's features, and on the true
visual attributes (one-hot). Prints both test AUCs after each pass, the AUC of
the true visual appeal, and the backbone's linear-probe accuracy per attribute.
Many passes show what the features hold at all; one pass, what DICM's single
pass can learn from them.
"""
import json
from pathlib import Path

import click
import numpy as np
import pyarrow.parquet as pq
import torch
from sklearn.linear_model import LogisticRegression

from hvams.data.render import ATTRIBUTES
from hvams.data.synth import BACKBONE_FILE, World, WorldConfig
from hvams.imaging.source import normalize, resize_uint8
from hvams.metrics import auc
from hvams.models.image import SmallCNN
from hvams.models.layers import mlp
from hvams.store.decode import decode_rgb
from hvams.store.lmdb_store import ImageStore


def features(root: Path, world: World, size: int) -> torch.Tensor:
    store = ImageStore(root / "images")
    net = SmallCNN()
    net.load_state_dict(torch.load(root / BACKBONE_FILE, map_location="cpu", weights_only=True))
    net.eval()
    out = torch.zeros((world.n_images, net.out_dim))
    for lo in range(0, world.n_images, 1024):
        raw = store.get_many(world.image_ids[lo:lo + 1024])
        px = torch.stack([resize_uint8(decode_rgb(b), size) for b in raw])
        with torch.no_grad():
            out[lo:lo + len(px)] = net(normalize(px))
    return (out - out.mean(0)) / (out.std(0) + 1e-6)


def passes(x: torch.Tensor, image: np.ndarray, y: np.ndarray, seed: int, n: int):
    """The head after each of ``n`` passes over (image, click)."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(mlp(x.shape[1], [256, 64], 12), torch.nn.Linear(12, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    image, y = torch.from_numpy(image), torch.from_numpy(y).float()
    for _ in range(n):
        for b in torch.randperm(len(y)).split(1024):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x[image[b]])[:, 0], y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        yield net


@click.command()
@click.argument("root", type=click.Path(exists=True, path_type=Path))
@click.option("--size", default=64, show_default=True, help="pixels the backbone sees")
@click.option("--days", default="day=00", show_default=True, help="training days, comma-separated")
@click.option("--seed", default=0, show_default=True)
@click.option("--passes", "n_passes", default=1, show_default=True,
              help="passes over the training days; the AUCs are printed after each")
def main(root, size, days, seed, n_passes):
    info = json.loads((root / "world.json").read_text())
    world = World(WorldConfig(**info["config"]))
    feats = features(root, world, size)
    onehot = torch.cat([torch.nn.functional.one_hot(torch.from_numpy(world.image_attrs[:, j]), k).float()
                        for j, k in enumerate(ATTRIBUTES.values())], 1)

    def read(day):
        t = pq.read_table(root / day, columns=["ad_id", "click", "is_new_ad"])
        return {c: np.asarray(t[c]) for c in t.column_names}

    parts = [read(d.strip()) for d in days.split(",")]
    train = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
    test = read(info["test_day"])
    y, new = test["click"], test["is_new_ad"].astype(bool)
    test_img = torch.from_numpy(world.item_image_index[test["ad_id"]])
    n_train = len(train["click"])
    print(f"| head trained on {days} ({n_train:,} impressions) | passes | test AUC | new-ad AUC |")
    print("|---|---|---|---|")
    for name, x in [(f"frozen small-cnn features at {size} px", feats),
                    ("true attributes (one-hot)", onehot)]:
        for k, net in enumerate(passes(x, world.item_image_index[train["ad_id"]], train["click"],
                                       seed, n_passes), 1):
            with torch.no_grad():
                s = net(x[test_img])[:, 0].numpy()
            print(f"| {name} | {k} | {auc(y, s):.4f} | {auc(y[new], s[new]):.4f} |", flush=True)
    appeal = world.visual_appeal(world.item_attrs[test["ad_id"]])
    print(f"| the true visual appeal itself | – | {auc(y, appeal):.4f} | {auc(y[new], appeal[new]):.4f} |")
    n = world.n_images // 2
    acc = {a: LogisticRegression(max_iter=1000).fit(feats[:n], world.image_attrs[:n, j])
           .score(feats[n:], world.image_attrs[n:, j]) for j, a in enumerate(ATTRIBUTES)}
    print("\nlinear-probe accuracy of the features: " + ", ".join(f"{a} {v:.2f}" for a, v in acc.items()))


if __name__ == "__main__":
    main()
