"""BadNets (Gu et al., 2017): stamp a small patch, relabel to the target (dirty-label, all2one or all2all).

Patterns, as the seeds use them:
    grid3   the 3x3 black/white grid of the NAD lineage (``gridTrigger``) in the bottom-right corner, no margin:
            rows [0 0 255; 0 255 0; 255 0 255] on every channel.  MCL (seed 000 App. A.2: "grid trigger of size
            3x3 placed in the lower right corner", target 5, 10 %), D-BR (seed 001 §5.1, BadNets-all2one and
            -all2all, 10 %), LfD's BN-G (seed 003 §5.1 / Tab. 1).  ``size`` > 3 draws the same grid nearest-
            upscaled at the image's resolution (MCL App. A.3 uses a 32x32 grid on 224 px ImageNet images).
    white   a white square (LfD's BN-W, seed 003 §5.1); ``size`` pixels, ``margin`` from the border (D-BR's
            ``squareTrigger``: 3 px at margin 1; Neural Cleanse / I-BAU: 4 px at margin 1).
    noise   a seeded uniform-noise patch (seed 002 App. C: "m is a 3x3 mask and u is a 3x3 noise patch; both
            the location of the mask and the patch are randomly generated": use ``position: random``).
Patches are drawn at the image's own resolution with an explicit mask, never bilinear-resized (BackdoorBench
resizes a 32 px patch to larger images, which turns a 3x3 grid into a blurred ~7x7 one).
all2all relabels y -> (y + 1) mod C (D-BR's BadNets-all2all) and draws from the whole training set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

from bench.attack import Attack, AttackConfig, Trigger
from bench.data.imageset import DataInfo
from bench.registry import register_attack
from bench.triggers import (
    GRID3,
    PositionOrRandom,
    nearest_resize,
    patch_position,
    place,
    random_patch,
    random_position,
    stamp_patch,
    trigger_generator,
)


@dataclass(frozen=True)
class BadNetsConfig(AttackConfig):
    pattern: Literal["grid3", "white", "noise"] = "grid3"   # seed 000 App. A.2 / seed 001 §5.1: the 3x3 grid
    size: int = 3                                           # patch side in pixels at the dataset's resolution
    position: PositionOrRandom = "bottom_right"             # seed 000 App. A.2: lower right corner
    margin: int = 0                                         # pixels between patch and border (NAD grid: 0)
    target: int = 0                                         # seed 001 §5.1 (D-BR code); MCL uses 5, LfD 1
    poison_rate: float = 0.1                                # seeds 000/001/003: 10 % (of the non-target pool)
    trigger_seed: Optional[int] = None                      # None: the cell's seed draws random patterns

    def __post_init__(self):
        super().__post_init__()
        if self.size < 1 or self.margin < 0:
            raise ValueError(f"size must be >= 1 and margin >= 0, got size {self.size}, margin {self.margin}")


@register_attack("badnets", display_name="BadNets")
class BadNets(Attack):
    """BadNets patch attack (Gu et al., 2017): grid, white or noise patch; all2one or all2all."""

    Config = BadNetsConfig

    def __init__(self, cfg: BadNetsConfig, info: DataInfo, seed: int):
        super().__init__(cfg, info, seed)
        g = trigger_generator(seed, cfg.trigger_seed)
        c, s = info.in_channels, cfg.size
        if s + cfg.margin > info.image_size:
            raise ValueError(f"a {s}px patch with margin {cfg.margin} does not fit {info.name}'s "
                             f"{info.image_size}px images")
        if cfg.pattern == "grid3":
            self.patch = nearest_resize(GRID3, s, s).unsqueeze(0).expand(c, s, s).clone()
        elif cfg.pattern == "white":
            self.patch = torch.full((c, s, s), 255, dtype=torch.uint8)
        else:
            self.patch = random_patch(c, s, s, g)
        if cfg.position == "random":
            self.top, self.left = random_position(info.image_size, s, s, cfg.margin, g)
        else:
            self.top, self.left = patch_position(info.image_size, s, s, cfg.position, cfg.margin)

    def apply_trigger(self, x_u8: torch.Tensor, train: bool) -> torch.Tensor:
        return stamp_patch(x_u8, self.patch, self.top, self.left)

    def true_trigger(self) -> Trigger:
        mask, pattern = place(self.patch, self.top, self.left, self.info.in_channels, self.info.image_size)
        return Trigger(mask.float(), pattern.float() / 255)

    def poison(self, train, generator, clean_model=None):
        out = super().poison(train, generator, clean_model)
        out.params.update(trigger_top=self.top, trigger_left=self.left, trigger_size=self.cfg.size,
                          pattern=self.cfg.pattern)
        return out
