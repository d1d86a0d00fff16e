"""A small CNN for CPU-scale runs and tests (not from a paper): 4 conv layers, global average pooling."""
from __future__ import annotations

from torch import nn

from bench.models._base import Backbone
from bench.registry import register_model


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(Backbone):
    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 32, mean=None, std=None):
        super().__init__(mean, std, in_channels)
        w = width
        self.block1 = nn.Sequential(_conv(in_channels, w), _conv(w, w))
        self.block2 = nn.Sequential(nn.MaxPool2d(2), _conv(w, 2 * w))
        self.block3 = nn.Sequential(nn.MaxPool2d(2), _conv(2 * w, 4 * w))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = 4 * w
        self.fc = nn.Linear(self.num_features, num_classes)
        self.feature_info = [dict(name="block1", channels=w, reduction=1),
                             dict(name="block2", channels=2 * w, reduction=2),
                             dict(name="block3", channels=4 * w, reduction=4)]

    def forward_features(self, x):
        x = self.block3(self.block2(self.block1(self.normalize(x))))
        return self.pool(x).flatten(1)


@register_model("small_cnn")
def small_cnn(num_classes: int, in_channels: int = 3, image_size: int = 32, mean=None, std=None,
              width: int = 32) -> SmallCNN:
    """Small CNN (4 conv + BN + ReLU, GAP, linear): the CPU/test model; ``width`` channels in the first block."""
    return SmallCNN(num_classes, in_channels, width, mean, std)
