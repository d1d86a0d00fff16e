"""BadNets (Gu et al., 2017): stamp a small patch, relabel to the target (dirty-label).

Patterns:
    grid3   the 3x3 black/white grid in the bottom-right corner of the NAD lineage, used by MCL (seed 000 §4.1)
            and D-BR (seed 001 §5.1): rows [0 0 1; 0 1 0; 1 0 1] x 255, no margin.
    white   a white square (LfD's BN-W, seed 003 §5.1); ``size`` pixels, ``margin`` from the border.
    noise   a seeded random 3x3 noise patch at a seeded random position (seed 002 App. C).
Patches are drawn at the image's own resolution with an explicit mask (never bilinear-resized).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

from bench.attack import Attack, AttackConfig, Trigger
from bench.data.imageset import DataInfo
from bench.registry import register_attack
from bench.triggers import patch_position, stamp_patch

GRID3 = torch.tensor([[0, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)


@dataclass(frozen=True)
class BadNetsConfig(AttackConfig):
    pattern: Literal["grid3", "white", "noise"] = "grid3"    # seed 000 §4.1 / seed 001 §5.1: 3x3 grid
    size: int = 3                                           # patch side in pixels
    position: Literal["bottom_right", "top_left", "top_right", "bottom_left", "center", "random"] = "bottom_right"
    margin: int = 0
    target: int = 0
    poison_rate: float = 0.1                                # seed 001 §5.1: 10 %
    trigger_seed: Optional[int] = None                      # None: the cell's seed draws random patterns


@register_attack("badnets", display_name="BadNets")
class BadNets(Attack):
    """BadNets patch attack (dirty-label, all2one or all2all)."""

    Config = BadNetsConfig

    def __init__(self, cfg: BadNetsConfig, info: DataInfo, seed: int):
        super().__init__(cfg, info, seed)
        g = torch.Generator().manual_seed(cfg.trigger_seed if cfg.trigger_seed is not None else seed)
        c, s = info.in_channels, cfg.size
        if cfg.pattern == "grid3":
            if s != 3:
                raise ValueError("pattern 'grid3' is 3x3; set size: 3 or use pattern 'white'")
            self.patch = GRID3.unsqueeze(0).expand(c, 3, 3).clone()
        elif cfg.pattern == "white":
            self.patch = torch.full((c, s, s), 255, dtype=torch.uint8)
        else:
            self.patch = torch.randint(0, 256, (c, s, s), generator=g, dtype=torch.uint8)
        if cfg.position == "random":
            hi = info.image_size - s - cfg.margin
            self.top, self.left = (int(v) for v in torch.randint(cfg.margin, hi + 1, (2,), generator=g))
        else:
            self.top, self.left = patch_position(info.image_size, s, s, cfg.position, cfg.margin)

    def apply_trigger(self, x_u8: torch.Tensor, train: bool) -> torch.Tensor:
        return stamp_patch(x_u8, self.patch, self.top, self.left)

    def true_trigger(self) -> Trigger:
        c, size = self.info.in_channels, self.info.image_size
        mask = torch.zeros(1, size, size)
        pattern = torch.zeros(c, size, size)
        s = self.cfg.size
        mask[:, self.top:self.top + s, self.left:self.left + s] = 1
        pattern[:, self.top:self.top + s, self.left:self.left + s] = self.patch.float() / 255
        return Trigger(mask, pattern)
