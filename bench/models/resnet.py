"""ResNet-18/34 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016) with the stems that
backdoor papers use.

Stems (option ``stem``; ``auto`` picks ``cifar`` for ``image_size <= 64`` and ``imagenet`` above):
    cifar          3x3 conv stride 1, no max-pool: the usual CIFAR adaptation (MCL/LfD/SimCLR-cleansing
                   runs on 32x32; layer4 is 4x4 at 32 px).
    cifar_maxpool  3x3 conv stride 1 *plus* the 3x3/2 max-pool: the D-BR/D-ST repository's ``resnet18``
                   (SCLBD/Effective_backdoor_defense ``models/resnet_cifar10.py``;
                   ../shared/REFERENCE-DEFAULTS.md), so layer4 is 2x2 at 32 px.
    imagenet       7x7 conv stride 2 + 3x3/2 max-pool, as in the paper (MCL's 224-px ImageNet subset, LfD's
                   ResNet-34 student on the ImageNet subset).

Option ``pretrained: imagenet`` (ImageNet stem only) starts from torchvision's ImageNet weights, all but ``fc``
(``bench/models/pretrained.py``; D-BR's Table 5 fine-tunes a pretrained ResNet-18).

Module names follow torchvision (``conv1``, ``bn1``, ``layerK.J.{conv1,bn1,conv2,bn2,downsample.0/1}``,
``fc``), so its state dicts and those of repositories derived from it load unchanged. ``ResNet`` also takes
arbitrary per-stage depths and widths, which the low-capacity ResNets of LfD (``bench/models/lowcap.py``)
reuse.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.models._base import Backbone, add_stages
from bench.registry import register_model

Stem = Literal["auto", "cifar", "cifar_maxpool", "imagenet"]
_STEM_REDUCTION = {"cifar": 1, "cifar_maxpool": 2, "imagenet": 4}


def init_weights(model: nn.Module) -> None:
    """He-normal (fan-out) convolutions, unit/zero BatchNorm; linear layers keep PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def resolve_stem(stem: str, image_size: int) -> str:
    """``auto`` -> ``cifar`` up to 64 px (CIFAR, GTSRB, MNIST, Tiny-ImageNet), else ``imagenet``."""
    if stem == "auto":
        return "cifar" if image_size <= 64 else "imagenet"
    if stem not in _STEM_REDUCTION:
        raise ValueError(f"unknown stem {stem!r}; valid: auto, {', '.join(_STEM_REDUCTION)}")
    return stem


# ------------------------------------------------------------------------------------------ blocks

class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut; ReLU after the sum."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


# ------------------------------------------------------------------------------------------ model

class ResNet(Backbone):
    """ResNet with basic blocks (He et al., CVPR 2016, Tab. 1: ResNet-18 [2,2,2,2], ResNet-34 [3,4,6,3]).

    Args:
        num_classes: output classes.
        layers: blocks per stage (four stages, strides 1, 2, 2, 2).
        widths: channels per stage.
        stem_width: the stem's channels (default ``widths[0]``, as ResNet-18/34).
        in_channels: input channels (1 for MNIST-like data).
        stem: ``cifar``, ``cifar_maxpool`` or ``imagenet`` (resolved; see the module docstring).
        mean, std: per-channel normalisation in [0, 1] units.
    """

    def __init__(self, num_classes: int, layers: Sequence[int], widths: Sequence[int] = (64, 128, 256, 512),
                 in_channels: int = 3, stem: str = "cifar", mean=None, std=None, stem_width: int | None = None):
        super().__init__(mean, std, in_channels)
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError(f"ResNet needs 4 stages; got layers={tuple(layers)}, widths={tuple(widths)}")
        if stem not in _STEM_REDUCTION:
            raise ValueError(f"unknown stem {stem!r}; valid: {', '.join(_STEM_REDUCTION)}")
        self.stem_type = stem
        cin = widths[0] if stem_width is None else stem_width
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, cin, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, cin, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem != "cifar" else nn.Identity()
        reduction = _STEM_REDUCTION[stem]
        add_stages(self, BasicBlock, layers, widths, cin, reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = widths[-1]
        self.fc = nn.Linear(self.num_features, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(self.normalize(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.pool(x).flatten(1)


# ------------------------------------------------------------------------------------------ builders

def _pretrained(model: ResNet, arch: str, pretrained: str) -> ResNet:
    if pretrained == "none":
        return model
    from bench.models.pretrained import load_imagenet_weights
    return load_imagenet_weights(model, arch)


@register_model("resnet18", display_name="ResNet-18")
def resnet18(num_classes: int, in_channels: int = 3, image_size: int = 32, mean=None, std=None,
             stem: Stem = "auto", pretrained: Literal["none", "imagenet"] = "none") -> ResNet:
    """ResNet-18 (He et al., 2016): [2, 2, 2, 2] basic blocks, 64-512 channels; ``stem`` as above."""
    model = ResNet(num_classes, (2, 2, 2, 2), in_channels=in_channels, stem=resolve_stem(stem, image_size),
                   mean=mean, std=std)
    return _pretrained(model, "resnet18", pretrained)


@register_model("resnet34", display_name="ResNet-34")
def resnet34(num_classes: int, in_channels: int = 3, image_size: int = 32, mean=None, std=None,
             stem: Stem = "auto", pretrained: Literal["none", "imagenet"] = "none") -> ResNet:
    """ResNet-34 (He et al., 2016): [3, 4, 6, 3] basic blocks (LfD's student on the ImageNet subset)."""
    model = ResNet(num_classes, (3, 4, 6, 3), in_channels=in_channels, stem=resolve_stem(stem, image_size),
                   mean=mean, std=std)
    return _pretrained(model, "resnet34", pretrained)
