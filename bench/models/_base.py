"""The one interface every zoo model implements (timm-style), so defenses never test a model's name.

Contract:
    forward(x)            x: float [N, C, H, W] in [0, 1]; the model normalises with its own mean/std buffers.
    forward_features(x)   the penultimate representation, float [N, num_features] (after the final pooling).
    forward_head(f)       logits [N, num_classes] from that representation (``pre_logits=True`` returns f).
    feature_info          [{"name": <module path>, "channels": int, "reduction": int}, ...] for the named
                          intermediate blocks (NAD's attention maps, activation clustering, pruning); the last
                          entry is the last convolutional block.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn


class Backbone(nn.Module):
    num_features: int
    feature_info: list[dict]

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None, in_channels: int):
        super().__init__()
        mean = tuple(mean) if mean is not None else (0.5,) * in_channels
        std = tuple(std) if std is not None else (0.5,) * in_channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return f if pre_logits else self.fc(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Alias of ``forward_features`` (the penultimate representation)."""
        return self.forward_features(x)

    def block(self, name: str) -> nn.Module:
        return self.get_submodule(name)


def add_stages(model: nn.Module, block, layers: Sequence[int], widths: Sequence[int], cin: int,
               reduction: int) -> int:
    """Add ``layer1..layerN`` (``layers[i]`` blocks of ``block(cin, cout, stride)``; stride 2 from the second
    stage on) to ``model`` and record each in ``model.feature_info``; returns the last stage's width."""
    model.feature_info = []
    for i, (depth, cout) in enumerate(zip(layers, widths, strict=True)):
        stride = 1 if i == 0 else 2
        reduction *= stride
        blocks = [block(cin if j == 0 else cout, cout, stride if j == 0 else 1) for j in range(depth)]
        model.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        model.feature_info.append(dict(name=f"layer{i + 1}", channels=cout, reduction=reduction))
        cin = cout
    return cin


def input_normalization(opts: dict[str, Any], info) -> tuple[Any, Any]:
    """Pop a checkpoint spec's keys from ``opts`` (model options) -> the (mean, std) the model must use."""
    normalize = opts.pop("normalize", "dataset")
    for key in ("checkpoint", "sha256"):
        opts.pop(key, None)
    if normalize == "none":
        return (0.0,) * info.in_channels, (1.0,) * info.in_channels
    if isinstance(normalize, Mapping):
        return tuple(normalize["mean"]), tuple(normalize["std"])
    return info.mean, info.std
