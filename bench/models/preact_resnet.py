"""Pre-activation ResNet-18 (He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016), in the
form BackdoorBench uses as its default CIFAR/GTSRB/Tiny-ImageNet model (SCLBD/BackdoorBench
``models/preact_resnet.py``).

Facts of that form, kept here: a 3x3 stride-1 stem with 64 channels and no BN/ReLU of its own (the first
block pre-activates it), four stages of two pre-activation basic blocks (BN-ReLU-conv3x3-BN-ReLU-conv3x3)
with 64, 128, 256, 512 channels and strides 1, 2, 2, 2, a 1x1 convolution (no BN) on the *pre-activated*
input as the projection shortcut, and **no final BN-ReLU** before the global average pooling (the ECCV paper
has one; BackdoorBench does not). Module names match BackdoorBench's except the classifier, ``fc`` here and
``linear`` there; weights keep PyTorch's default initialisation, as there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.models._base import Backbone, add_stages
from bench.registry import register_model


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3 plus identity or a 1x1 projection of the pre-activation."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + shortcut


class PreActResNet(Backbone):
    """Pre-activation ResNet (He et al., ECCV 2016), BackdoorBench variant (no final BN-ReLU).

    Args:
        num_classes: output classes.
        layers: blocks per stage (ResNet-18: [2, 2, 2, 2]).
        in_channels: input channels.
        mean, std: per-channel normalisation in [0, 1] units.
    """

    def __init__(self, num_classes: int, layers=(2, 2, 2, 2), in_channels: int = 3, mean=None, std=None):
        super().__init__(mean, std, in_channels)
        widths = (64, 128, 256, 512)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        cin, reduction = widths[0], 1
        add_stages(self, PreActBlock, layers, widths, cin, reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)  # BackdoorBench: AvgPool2d(4) at 32 px, adaptive later
        self.num_features = widths[-1]
        self.fc = nn.Linear(self.num_features, num_classes)
        # weights keep PyTorch's default initialisation, as in BackdoorBench

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.normalize(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.pool(x).flatten(1)


@register_model("preact_resnet18", display_name="PreAct-ResNet-18")
def preact_resnet18(num_classes: int, in_channels: int = 3, image_size: int = 32, mean=None,
                    std=None) -> PreActResNet:
    """PreAct-ResNet-18 (He et al., ECCV 2016), BackdoorBench's default model; 3x3 stem at every size."""
    return PreActResNet(num_classes, (2, 2, 2, 2), in_channels, mean, std)
