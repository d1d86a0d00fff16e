"""WaNet (Nguyen & Tran, ICLR 2021) as data poisoning with fixed poisoned indices (seed 002 App. C).

The trigger is a smooth warp: a k x k field of uniform [-1, 1] offsets, normalised by its mean absolute value,
upsampled bicubically to the image size; grid = clamp((identity + s * field / size) * grid_rescale, -1, 1);
x' = grid_sample(x, grid) (bilinear, align_corners=True).  WaNet's defaults k = 4, s = 0.5, grid rescale 1
(also BackdoorBench's).  WaNet itself controls training (each batch re-poisons 10 % of its images); seed 002
instead "poisoned 10 % of the whole training set before training" (App. C; 5,000 images in §4 Tab. 2), which is
what this attack does: the poisoned indices are drawn once and stored.
Noise mode (WaNet's "cross" samples, ratio 2 in the paper; off by default as in seed 002): ``cross_ratio`` x the
poisoned count of other training images are warped with the grid plus per-sample random offsets
(uniform [-1, 1] / size) and keep their labels; their ground-truth kind is NOISE (neither clean nor poisoned).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from bench.attack import Attack, AttackConfig, PoisonedSet
from bench.data.imageset import DataInfo, ImageSet
from bench.registry import register_attack
from bench.triggers import noise_grids, trigger_generator, warp, warp_field

_CHUNK = 1024   # images warped per grid_sample call (bounds the memory of per-sample noise grids)


@dataclass(frozen=True)
class WaNetConfig(AttackConfig):
    k: int = 4                          # WaNet §4 / BackdoorBench: control grid size
    s: float = 0.5                      # WaNet / BackdoorBench: warping strength
    grid_rescale: float = 1.0           # WaNet / BackdoorBench
    cross_ratio: float = 0.0            # noise samples per poisoned sample (WaNet paper: 2; seed 002: none)
    target: int = 0                     # not stated in seed 002; the harness default
    poison_rate: float = 5000 / 45000   # seed 002 App. C / Tab. 2: 5,000 images (10 % of CIFAR-10's 50,000)
    trigger_seed: Optional[int] = None  # None: the cell's seed draws the warping field

    def __post_init__(self):
        super().__post_init__()
        if self.k < 2 or self.cross_ratio < 0:
            raise ValueError(f"k must be >= 2 and cross_ratio >= 0, got k {self.k}, cross_ratio {self.cross_ratio}")


@register_attack("wanet", display_name="WaNet")
class WaNet(Attack):
    """Warping-based trigger (WaNet), poisoned once into fixed indices; optional noise ("cross") samples."""

    Config = WaNetConfig

    def __init__(self, cfg: WaNetConfig, info: DataInfo, seed: int):
        super().__init__(cfg, info, seed)
        g = trigger_generator(seed, cfg.trigger_seed)
        self.grid = warp_field(info.image_size, cfg.k, cfg.s, cfg.grid_rescale, g)

    def apply_trigger(self, x_u8: torch.Tensor, train: bool) -> torch.Tensor:
        parts = [warp(x_u8[i:i + _CHUNK], self.grid) for i in range(0, len(x_u8), _CHUNK)]
        return torch.cat(parts) if parts else x_u8.clone()

    def apply_noise(self, x_u8: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The noise-mode warp: the trigger grid plus fresh random offsets for every image."""
        parts = [warp(x_u8[i:i + _CHUNK], noise_grids(self.grid, len(x_u8[i:i + _CHUNK]), generator))
                 for i in range(0, len(x_u8), _CHUNK)]
        return torch.cat(parts) if parts else x_u8.clone()

    def poison(self, train: ImageSet, generator: torch.Generator, clean_model=None) -> PoisonedSet:
        return self.poison_with_noise(train, generator, self.cfg.cross_ratio,
                                      lambda noise_idx: self.apply_noise(train.images[noise_idx], generator),
                                      k=self.cfg.k, s=self.cfg.s)
