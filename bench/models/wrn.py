"""Wide residual networks (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016), NAD lineage.

WRN-16-1 is the model of NAD, ABL and MCL (seed 000, §4.1 and App. A, Tab. 7: CIFAR-10 and GTSRB). The layout
is the one of their shared ``models/wresnet.py`` (bboylyg/NAD, itself from xternalz/WideResNet-pytorch):
a 3x3 stem with 16 channels, three groups ``block1``/``block2``/``block3`` of (depth - 4) / 6 pre-activation
basic blocks (BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3) with 16k, 32k and 64k channels and strides 1, 2, 2,
then BN-ReLU, global average pooling and the linear classifier. NAD's attention maps are taken at the outputs
of the three groups, which ``feature_info`` names.

Two details of that lineage are kept on purpose: when a block changes the channel count, the 1x1 projection
shortcut reads the *pre-activated* input (BN-ReLU(x)), otherwise the shortcut is the raw x; and module names
(``conv1``, ``blockK.layer.J.{bn1,conv1,bn2,conv2,convShortcut}``, ``bn1``, ``fc``) match that code, so the
checkpoints shipped with NAD/ABL/MCL load with ``load_state_dict`` (give the model mean 0 / std 1 for NAD and
ABL, which train on unnormalised [0, 1] inputs; MCL normalises with the dataset statistics).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.config import ConfigError
from bench.models._base import Backbone
from bench.models.resnet import init_weights
from bench.registry import register_model


class WideBasicBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3(stride)-BN-ReLU-dropout-conv3x3, plus the shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.equal_in_out = cin == cout
        # camelCase only so that NAD/ABL/MCL checkpoints load unchanged
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        shortcut = x if self.convShortcut is None else self.convShortcut(pre)
        return shortcut + out


class _Group(nn.Module):
    """One group of ``n`` blocks (a module with a ``layer`` child, as the checkpoints expect)."""

    def __init__(self, n: int, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.layer = nn.Sequential(*[WideBasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1,
                                                    dropout) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(Backbone):
    """WRN-depth-k (Zagoruyko & Komodakis, BMVC 2016), as used by NAD/ABL/MCL (WRN-16-1, seed 000 §4.1).

    Args:
        num_classes: output classes.
        depth: total depth, 6n + 4 (16 -> 2 blocks per group, 28 -> 4).
        width: widening factor k (group channels 16k, 32k, 64k).
        dropout: dropout between the two convolutions of each block (0 in NAD/MCL; the WRN paper uses 0.3).
        in_channels: input channels.
        mean, std: per-channel normalisation in [0, 1] units.
    """

    def __init__(self, num_classes: int, depth: int = 16, width: int = 1, dropout: float = 0.0,
                 in_channels: int = 3, mean=None, std=None):
        super().__init__(mean, std, in_channels)
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...); got {depth}")
        if width < 1:
            raise ValueError(f"WRN width must be >= 1; got {width}")
        n = (depth - 4) // 6
        channels = (16, 16 * width, 32 * width, 64 * width)
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False)
        self.block1 = _Group(n, channels[0], channels[1], 1, dropout)
        self.block2 = _Group(n, channels[1], channels[2], 2, dropout)
        self.block3 = _Group(n, channels[2], channels[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(channels[3])  # the final BN before pooling (named as in the checkpoints)
        self.pool = nn.AdaptiveAvgPool2d(1)     # NAD: avg_pool2d(8) on the 8x8 map of a 32-px input
        self.num_features = channels[3]
        self.fc = nn.Linear(self.num_features, num_classes)
        self.feature_info = [dict(name="block1", channels=channels[1], reduction=1),
                             dict(name="block2", channels=channels[2], reduction=2),
                             dict(name="block3", channels=channels[3], reduction=4)]
        init_weights(self)
        nn.init.zeros_(self.fc.bias)  # as in the NAD lineage

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(self.normalize(x)))))
        return self.pool(F.relu(self.bn1(x))).flatten(1)


def _build(num_classes: int, in_channels: int, mean, std, depth: int, width: int,
           dropout: float) -> WideResNet:
    try:
        return WideResNet(num_classes, depth, width, dropout, in_channels, mean, std)
    except ValueError as err:
        raise ConfigError("model", str(err)) from err


@register_model("wrn", display_name="WRN")
def wrn(num_classes: int, in_channels: int = 3, image_size: int = 32, mean=None, std=None,
        depth: int = 16, width: int = 1, dropout: float = 0.0) -> WideResNet:
    """WideResNet-depth-width (Zagoruyko & Komodakis, 2016), NAD layout; depth = 6n + 4."""
    return _build(num_classes, in_channels, mean, std, depth, width, dropout)


@register_model("wrn16_1", display_name="WRN-16-1")
def wrn16_1(num_classes: int, in_channels: int = 3, image_size: int = 32, mean=None, std=None,
            dropout: float = 0.0) -> WideResNet:
    """WRN-16-1: the NAD/ABL/MCL model (MCL seed 000 §4.1; ~0.18 M parameters)."""
    return _build(num_classes, in_channels, mean, std, 16, 1, dropout)


@register_model("wrn16_2", display_name="WRN-16-2")
def wrn16_2(num_classes: int, in_channels: int = 3, image_size: int = 32, mean=None, std=None,
            dropout: float = 0.0) -> WideResNet:
    """WRN-16-2 (a wider student/teacher variant of the NAD lineage)."""
    return _build(num_classes, in_channels, mean, std, 16, 2, dropout)


@register_model("wrn28_10", display_name="WRN-28-10")
def wrn28_10(num_classes: int, in_channels: int = 3, image_size: int = 32, mean=None, std=None,
             dropout: float = 0.0) -> WideResNet:
    """WRN-28-10 (Zagoruyko & Komodakis, 2016, their best CIFAR model; ~36.5 M parameters, GPU only)."""
    return _build(num_classes, in_channels, mean, std, 28, 10, dropout)
