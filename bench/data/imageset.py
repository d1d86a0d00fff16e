"""``ImageSet``: images as one uint8 tensor plus labels — a subset is ``images[idx]`` (airbench style)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass(frozen=True)
class ImageSet:
    """A labelled image set.

    Attributes:
        images: uint8 [N, C, H, W] in [0, 255] (never normalised: triggers act in pixel space).
        labels: int64 [N].
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N,C,H,W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be [N={self.images.shape[0]}], got {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx: torch.Tensor) -> "ImageSet":
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.labels.device)
        return ImageSet(self.images[idx], self.labels[idx])

    def to(self, device: torch.device | str) -> "ImageSet":
        return ImageSet(self.images.to(device, non_blocking=True), self.labels.to(device, non_blocking=True))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


@dataclass(frozen=True)
class DataBundle:
    """A dataset as the harness uses it: train and test image sets plus what models and reports need.

    ``mean``/``std`` are per-channel statistics in [0, 1] units; models normalise inside ``forward`` so every
    consumer (training, trigger inversion, evaluation) feeds images in [0, 1].
    """

    name: str
    train: ImageSet
    test: ImageSet
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()
    source: str = ""                       # where it came from (path + checksum, or 'generated')
    extra: dict = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])

    def info(self) -> "DataInfo":
        return DataInfo(self.name, self.num_classes, self.in_channels, self.image_size, self.mean, self.std)

    def limited(self, train_idx: torch.Tensor | None, test_idx: torch.Tensor | None) -> "DataBundle":
        train = self.train if train_idx is None else self.train.subset(train_idx)
        test = self.test if test_idx is None else self.test.subset(test_idx)
        return replace(self, train=train, test=test)


@dataclass(frozen=True)
class DataInfo:
    """The facts about a dataset that models, attacks and defenses need (no tensors)."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
