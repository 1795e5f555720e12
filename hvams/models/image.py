"""The shared image model: ``ImageEmbedder = backbone + head`` -> 12-d embedding.

Backbones: ``small-cnn`` (trainable from scratch, no batch norm, so it does not
depend on how images are split among servers) and torchvision's ``resnet18``,
``vgg16`` (cut at fc6 -> 4096-d, as in the paper) and ``mobilenet_v3_small``,
with weights from a local file or random, frozen or trainable. Batch norm
layers of torchvision backbones always use their running statistics, for the
same reason. ``true-attributes`` (the quality ceiling, ``attributes.py``)
reads an image key's true attributes instead of its pixels. The head is an
MLP, by default the paper's 256-64-12 on top of the backbone features.
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import mlp

PAPER_HEAD = [256, 64]
# Backbone output widths: known without building the network (vgg16 cut at fc6).
# true-attributes has none: its width is its truth table's (feature_dim_of).
FEATURE_DIMS = {"small-cnn": 64, "resnet18": 512, "vgg16": 4096, "mobilenet_v3_small": 576}


class SmallCNN(nn.Module):
    """Three strided conv layers and global pooling: 64-d features, cheap on a CPU.

    The features are standardised by ``feature_mean`` and ``feature_std``: the identity
    unless a pretraining measured them over its images, so that a head on the frozen
    features starts from unit-scale inputs. Weights saved without them load as identity.
    """

    out_dim = FEATURE_DIMS["small-cnn"]
    STANDARDISE = ("feature_mean", "feature_std")

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.register_buffer("feature_mean", torch.zeros(self.out_dim))
        self.register_buffer("feature_std", torch.ones(self.out_dim))

    def forward(self, x):
        return (self.net(x) - self.feature_mean) / self.feature_std

    @torch.no_grad()
    def set_standardisation(self, features: torch.Tensor) -> None:
        """Standardise by the mean and std of ``features`` (n, 64) of raw (identity) output."""
        std = features.std(0)
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(std.clamp_min(1e-3 * float(std.max())))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, fill in zip(self.STANDARDISE, (torch.zeros, torch.ones)):
            state_dict.setdefault(prefix + name, fill(self.out_dim))  # older files: identity
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class _Torchvision(nn.Module):
    def __init__(self, body: nn.Module, out_dim: int):
        super().__init__()
        self.body, self.out_dim = body, out_dim

    def forward(self, x):
        return self.body(x)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()  # running statistics: independent of the image split
        return self


def torchvision_backbone(name: str, weights: str | None) -> nn.Module:
    """A torchvision backbone cut before its classifier (vgg16: after fc6)."""
    import torchvision.models as tvm

    if name == "resnet18":
        net = tvm.resnet18(weights=None)
        full = net
        net.fc = nn.Identity()
        body = net
    elif name == "vgg16":
        full = tvm.vgg16(weights=None)
        # conv1..conv5, pool, flatten, fc6 + ReLU: the paper's fixed 4096-d part
        body = nn.Sequential(full.features, full.avgpool, nn.Flatten(), full.classifier[0],
                             full.classifier[1])
    elif name == "mobilenet_v3_small":
        full = tvm.mobilenet_v3_small(weights=None)
        body = nn.Sequential(full.features, full.avgpool, nn.Flatten())
    else:
        raise ValueError(f"unknown backbone {name!r}")
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        missing, unexpected = full.load_state_dict(state, strict=False)
        useful = [k for k in missing if not k.startswith(("fc.", "classifier.3", "classifier.6"))]
        if useful:
            raise ValueError(f"{weights}: weights for {name} lack {useful[:5]}...")
    return _Torchvision(body, FEATURE_DIMS[name])


class ImageEmbedder(nn.Module):
    """backbone -> head -> ``out_dim`` embedding, plus a learned missing-image row."""

    def __init__(self, backbone: str = "small-cnn", head: list[int] | None = None,
                 out_dim: int = 12, weights: str | None = None, frozen: bool = False):
        super().__init__()
        if backbone == "small-cnn":
            self.backbone = SmallCNN()
            if weights:
                self.backbone.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        elif backbone == "true-attributes":
            from .attributes import TrueAttributes

            self.backbone = TrueAttributes(weights)
            frozen = True  # a table, nothing to train
        else:
            self.backbone = torchvision_backbone(backbone, weights)
        self.frozen = frozen
        if frozen:
            self.backbone.requires_grad_(False)
        hidden = PAPER_HEAD if head is None else head
        self.head = mlp(self.backbone.out_dim, hidden, out_dim)
        self.missing = nn.Parameter(torch.zeros(out_dim))
        self.out_dim = out_dim

    @property
    def feature_dim(self) -> int:
        return self.backbone.out_dim

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone output; without autograd when the backbone is frozen."""
        if self.frozen:
            was = self.backbone.training
            if was:   # (train() walks every module: a cost per call when serving)
                self.backbone.eval()
            with torch.no_grad():
                out = self.backbone(images)
            if was:
                self.backbone.train(True)
            return out
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def param_groups(self, lr: float, backbone_scale: float = 1.0) -> list[dict]:
        """Optimizer groups with their ``base_lr``: one group, or, for a trainable backbone
        at ``lr * backbone_scale`` (fine-tuning pretrained weights gently), the backbone's
        own group first and then the head and the missing row."""
        params = self.trainable_parameters()
        if self.frozen or backbone_scale == 1.0:
            return [{"params": params, "lr": lr, "base_lr": lr}]
        own = {id(p) for p in self.backbone.parameters()}
        rest = [p for p in params if id(p) not in own]
        body = [p for p in params if id(p) in own]
        return [{"params": body, "lr": lr * backbone_scale, "base_lr": lr * backbone_scale},
                {"params": rest, "lr": lr, "base_lr": lr}]


def feature_dim_of(cfg) -> int:
    """Backbone output width of ``cfg`` (true-attributes: its truth table's one-hot width)."""
    if cfg.backbone == "true-attributes":
        from .attributes import table_of, width_of

        return width_of(table_of(cfg))
    return FEATURE_DIMS[cfg.backbone]


def build_image_model(cfg) -> ImageEmbedder:
    """The shared image model of ``cfg``, identical on every rank (seeded apart
    from the worker model, so every strategy starts from the same weights)."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed + 7919)
    weights = cfg.backbone_weights
    if cfg.backbone == "true-attributes":
        from .attributes import table_of

        weights = table_of(cfg)
    model = ImageEmbedder(cfg.backbone, cfg.head, cfg.emb_dim, weights, cfg.freeze_backbone)
    torch.random.set_rng_state(gen_state)
    return model
