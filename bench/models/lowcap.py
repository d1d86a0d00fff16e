"""Low-capacity models of LfD ("Learning from Distinction: Mitigating backdoors using a low-capacity model",
seed 003). The teacher of LfD is ResNet-S on every dataset (§5 "Defense Setup"); Fig. 4a compares ResNet-S1 <
ResNet-S < ResNet-S2 < ResNet-18 as teachers, and Fig. 6 trains VGG-S, LeNet-S and MobileNetV2-S. All widths
below are the ones of §5.3 ("Exploration Across Various Model Architectures"), which the paper counts as
"neurons" (= output channels of a convolution, units of a linear layer). The paper has no appendix or code
with more detail; what it leaves open is chosen here and marked "not stated" in each docstring.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.config import ConfigError
from bench.models._base import Backbone
from bench.models.resnet import ResNet, Stem, init_weights, resolve_stem
from bench.registry import register_model

# ------------------------------------------------------------------------------------------ ResNet-S


def _resnet_s(num_classes: int, in_channels: int, image_size: int, mean, std, stem: str,
              widths: Sequence[int], stem_width: int | None) -> ResNet:
    # §5.3: "the first four layers consist of only one block each"; the stem's width is not stated
    return ResNet(num_classes, (1, 1, 1, 1), widths, in_channels, resolve_stem(stem, image_size), mean, std,
                  stem_width)


@register_model("resnet_s", display_name="ResNet-S")
def resnet_s(num_classes: int, in_channels: int = 3, image_size: int = 32, mean=None, std=None,
             stem: Stem = "auto", stem_width: int | None = None) -> ResNet:
    """ResNet-S, LfD's teacher (seed 003 §5.3): one basic block per stage with 2, 2, 2, 4 channels.

    Not stated in the paper, chosen here: the stem has as many channels as layer1 (2), strides and stems
    follow ``resnet18`` (CIFAR stem up to 64 px, ImageNet stem above), shortcuts are 1x1 conv-BN projections.
    """
    return _resnet_s(num_classes, in_channels, image_size, mean, std, stem, (2, 2, 2, 4), stem_width)


@register_model("resnet_s1", display_name="ResNet-S1")
def resnet_s1(num_classes: int, in_channels: int = 3, image_size: int = 32, mean=None, std=None,
              stem: Stem = "auto", stem_width: int | None = None) -> ResNet:
    """ResNet-S1 (seed 003 §5.3, Fig. 4a): one basic block per stage, 1 channel each (stem 1, not stated)."""
    return _resnet_s(num_classes, in_channels, image_size, mean, std, stem, (1, 1, 1, 1), stem_width)


@register_model("resnet_s2", display_name="ResNet-S2")
def resnet_s2(num_classes: int, in_channels: int = 3, image_size: int = 32, mean=None, std=None,
              stem: Stem = "auto", stem_width: int | None = None) -> ResNet:
    """ResNet-S2 (seed 003 §5.3, Fig. 4a): one basic block per stage with 64, 128, 256, 512 channels
    (ResNet-18's widths at half its depth, i.e. a ResNet-10; stem: 64, not stated)."""
    return _resnet_s(num_classes, in_channels, image_size, mean, std, stem, (64, 128, 256, 512), stem_width)


# ------------------------------------------------------------------------------------------ VGG-S

def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class VGGS(Backbone):
    """VGG-S (LfD, seed 003 §5.3): VGG (Simonyan & Zisserman, ICLR 2015) with conv widths 4, 8, 16, 16, 32,
    32, 32, 512.

    The eight widths are read as VGG-11 (configuration A, eight 3x3 convolutions) with max-pooling after
    convolutions 1, 2, 4, 6 and 8; the last width (512) is taken literally, as printed. Not stated, chosen
    here: the VGG-11 layout, BatchNorm after every convolution and a single linear classifier on the globally
    pooled 512-d feature (the common CIFAR form of VGG). Pools use ``ceil_mode`` so inputs that are not
    multiples of 32 (e.g. 28 px) still work; at 32 px this is the plain 2x2 pool. ``feature_info`` names the
    five stages (``stageK``: max-pool of the previous stage, then its convolutions).
    """

    widths = (4, 8, 16, 16, 32, 32, 32, 512)
    stages = ((0,), (1,), (2, 3), (4, 5), (6, 7))  # conv indices per stage (VGG-11)

    def __init__(self, num_classes: int, in_channels: int = 3, mean=None, std=None):
        super().__init__(mean, std, in_channels)
        cin, self.feature_info = in_channels, []
        for s, idx in enumerate(self.stages):
            layers = [] if s == 0 else [nn.MaxPool2d(2, ceil_mode=True)]
            for i in idx:
                layers.append(_conv_bn(cin, self.widths[i]))
                cin = self.widths[i]
            self.add_module(f"stage{s + 1}", nn.Sequential(*layers))
            self.feature_info.append(dict(name=f"stage{s + 1}", channels=cin, reduction=2 ** s))
        self.pool = nn.Sequential(nn.MaxPool2d(2, ceil_mode=True), nn.AdaptiveAvgPool2d(1))
        self.num_features = cin
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        for s in range(len(self.stages)):
            x = getattr(self, f"stage{s + 1}")(x)
        return self.pool(x).flatten(1)


@register_model("vgg_s", display_name="VGG-S")
def vgg_s(num_classes: int, in_channels: int = 3, image_size: int = 32, mean=None, std=None) -> VGGS:
    """VGG-S (seed 003 §5.3): VGG-11 layout with conv widths 4, 8, 16, 16, 32, 32, 32, 512."""
    return VGGS(num_classes, in_channels, mean, std)


# ------------------------------------------------------------------------------------------ LeNet-S

class LeNetS(Backbone):
    """LeNet-S (LfD, seed 003 §5.3): LeNet (LeCun et al., Proc. IEEE 1998) reduced to 2 convolutions and 2
    linear layers with 1, 2, 20 and 10 (= classes) units.

    Not stated, chosen here: LeNet-5's 5x5 unpadded convolutions, each followed by ReLU and 2x2 max-pooling
    (``block1``, ``block2``), then flatten -> linear(20) -> ReLU (the penultimate feature, ``num_features``
    = 20) -> ``fc``. The flattened size depends on ``image_size`` (2 x 5 x 5 at 32 px), so the model needs
    inputs of exactly that size, at least 16 px.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, image_size: int = 32, mean=None, std=None):
        super().__init__(mean, std, in_channels)
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"LeNet-S needs image_size >= 16; got {image_size}")
        self.block1 = nn.Sequential(nn.Conv2d(in_channels, 1, 5), nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(1, 2, 5), nn.ReLU(), nn.MaxPool2d(2))
        self.fc1 = nn.Linear(2 * side * side, 20)
        self.num_features = 20
        self.fc = nn.Linear(self.num_features, num_classes)
        self.feature_info = [dict(name="block1", channels=1, reduction=2),
                             dict(name="block2", channels=2, reduction=4)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.normalize(x)))
        return F.relu(self.fc1(x.flatten(1)))


@register_model("lenet_s", display_name="LeNet-S")
def lenet_s(num_classes: int, in_channels: int = 3, image_size: int = 32, mean=None, std=None) -> LeNetS:
    """LeNet-S (seed 003 §5.3): conv(1) - conv(2) - linear(20) - linear(classes); needs image_size >= 16."""
    try:
        return LeNetS(num_classes, in_channels, image_size, mean, std)
    except ValueError as err:
        raise ConfigError("model", str(err)) from err


# ------------------------------------------------------------------------------------------ MobileNetV2-S

class InvertedResidual(nn.Module):
    """MobileNetV2 bottleneck block (Sandler et al., CVPR 2018): 1x1 expand-BN-ReLU6, 3x3 depthwise-BN-ReLU6,
    1x1 linear projection-BN; residual when the stride is 1 and the channels match."""

    def __init__(self, cin: int, hidden: int, cout: int, stride: int):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6())
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


class MobileNetV2S(Backbone):
    """MobileNetV2-S (LfD, seed 003 §5.3): MobileNetV2 (Sandler et al., CVPR 2018) cut to two bottlenecks.

    Widths as stated: stem conv 4; bottleneck 1 = one block with convs 4, 4, 8 (expand, depthwise, project);
    bottleneck 2 = two blocks with 4, 4, 8 and 8, 8, 8; final 1x1 conv 16; then pooling and ``fc``.
    Not stated, chosen here: kernel sizes, BN and ReLU6 as in MobileNetV2, residuals only where the stride is
    1 and the channels match (here the two blocks of bottleneck 2), and the strides. With the CIFAR stem
    (``auto`` up to 64 px) every stride is 1, as in the common CIFAR port of MobileNetV2 (stem and the
    24-channel stage at stride 1); with the ImageNet stem the strides are those of MobileNetV2's Table 2
    (stem 2, bottleneck 1 1, bottleneck 2 2).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, stem: str = "cifar", mean=None, std=None):
        super().__init__(mean, std, in_channels)
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"MobileNetV2-S stem must be auto, cifar or imagenet; got {stem!r}")
        s0, s2 = (1, 1) if stem == "cifar" else (2, 2)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 4, 3, stride=s0, padding=1, bias=False),
                                  nn.BatchNorm2d(4), nn.ReLU6())
        self.stage1 = nn.Sequential(InvertedResidual(4, 4, 8, 1))
        self.stage2 = nn.Sequential(InvertedResidual(8, 4, 8, s2), InvertedResidual(8, 8, 8, 1))
        self.conv_head = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = 16
        self.fc = nn.Linear(16, num_classes)
        self.feature_info = [dict(name="stem", channels=4, reduction=s0),
                             dict(name="stage1", channels=8, reduction=s0),
                             dict(name="stage2", channels=8, reduction=s0 * s2),
                             dict(name="conv_head", channels=16, reduction=s0 * s2)]
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_head(self.stage2(self.stage1(self.stem(self.normalize(x)))))
        return self.pool(x).flatten(1)


@register_model("mobilenetv2_s", display_name="MobileNetV2-S")
def mobilenetv2_s(num_classes: int, in_channels: int = 3, image_size: int = 32, mean=None, std=None,
                  stem: Literal["auto", "cifar", "imagenet"] = "auto") -> MobileNetV2S:
    """MobileNetV2-S (seed 003 §5.3): stem 4, bottlenecks (4-4-8) and (4-4-8, 8-8-8), head conv 16."""
    return MobileNetV2S(num_classes, in_channels, resolve_stem(stem, image_size), mean, std)
