"""Blend (Chen et al., 2017): alpha-blend a pattern into the image and relabel to the target (dirty-label).

x' = (1 - alpha * m) * x + alpha * m * u, with m = 1 everywhere for full-image patterns and a 3x3 mask for
patch patterns.  The patterns the seeds use:
    image   a full-image picture (D-BR's Blend-Kitty, seed 001 §5.1; MCL's ImageNet Blend, seed 000 App. A.3:
            "Hello Kitty").  The Hello Kitty file is third-party artwork, so the stand-in is an image a dependency
            ships: matplotlib's ``sample_data/grace_hopper.jpg`` (an official US Navy portrait of Grace Hopper,
            public domain as a work of the US government), read from the installed package and never copied.
    file    the user's own image or ``.npy`` (``pattern_path``), e.g. the original ``hello_kitty.png``.
    random  uniform random pixels, fixed by the seed (LfD's Blend, seed 003 Tab. 1: "Random Pixel", 10 %).
    signal  D-BR's Blend-Signal / "Blend-Strip" (seed 001 §5.1): the authors blend ``signal_cifar10_mask.npy``,
            a 32x32 single-channel image of vertical stripes (columns 0-3 dark, 4-7 bright, period 8, values
            near 0 and 255).  We generate the equivalent: 0/255 stripes of period ``signal_period`` = 8, bright
            half second; it differs from the file by 11.5 grey levels on average (the file's ringing).
    patch   a seeded uniform-noise patch of ``patch_size`` blended under a ``patch_size`` mask: MCL's Blend
            (seed 000 App. A.2: "a random color trigger with a size of 3x3 placed in the center of the image and
            the blend rate was set at 0.1"; the authors' code puts that "center" at rows/cols 18-20 of 32,
            ``position: nad_center``) and seed 002's (App. C: 3x3 noise patch at a random location, alpha 0.4;
            ``position: random``).
    nad_patch  the fixed grey 3x3 pattern (255/128) the MCL / NAD code blends (WeCanShow/MCL ``data_loader.py``
            l. 445-468, alpha 0.2 at ``nad_center``): the authors'-code variant of MCL's Blend.
Full-image patterns are resized to the image size (bilinear, antialiased); patches are drawn at native size.
alpha = 0.2 for train and test is the D-BR code and BackdoorBench default; ``test_alpha`` may differ.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

from bench.attack import Attack, AttackConfig, Trigger
from bench.data.imageset import DataInfo
from bench.registry import register_attack
from bench.triggers import (
    NAD_BLEND3,
    PositionOrRandom,
    blend,
    load_pattern,
    nearest_resize,
    patch_position,
    place,
    random_patch,
    random_position,
    sample_image_path,
    stripes,
    trigger_generator,
)


@dataclass(frozen=True)
class BlendConfig(AttackConfig):
    pattern: Literal["image", "file", "random", "signal", "patch", "nad_patch"] = "image"   # seed 001 Blend-Kitty
    pattern_path: Optional[str] = None     # pattern "file": an image or .npy, resized to the image size
    sample_image: str = "grace_hopper.jpg"  # pattern "image": a file of matplotlib's sample_data
    alpha: float = 0.2                     # blend rate at poisoning (D-BR code, BackdoorBench; MCL's patch: 0.1)
    test_alpha: Optional[float] = None     # blend rate of the test-time trigger (None: alpha)
    patch_size: int = 3                    # pattern "patch": seed 000 App. A.2 / seed 002 App. C: 3x3
    position: PositionOrRandom = "center"  # patch patterns: seed 000 App. A.2 (code: nad_center; seed 002: random)
    margin: int = 0
    signal_period: int = 8                 # pattern "signal": stripe period of D-BR's signal file
    target: int = 0                        # seed 001 §5.1 (D-BR code); MCL uses 5, LfD 1
    poison_rate: float = 0.1               # seeds 000/001/003: 10 % (of the non-target pool)
    trigger_seed: Optional[int] = None     # None: the cell's seed draws random patterns

    def __post_init__(self):
        super().__post_init__()
        for name in ("alpha", "test_alpha"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if (self.pattern == "file") != (self.pattern_path is not None):
            raise ValueError("pattern 'file' needs pattern_path, and pattern_path needs pattern: file")


@register_attack("blend", display_name="Blend")
class Blend(Attack):
    """Blended-pattern attack (Chen et al., 2017): picture, user file, random pixels, D-BR signal or noise patch."""

    Config = BlendConfig

    def __init__(self, cfg: BlendConfig, info: DataInfo, seed: int):
        super().__init__(cfg, info, seed)
        g = trigger_generator(seed, cfg.trigger_seed)
        c, size = info.in_channels, info.image_size
        self.region = torch.ones(1, size, size, dtype=torch.bool)      # where the pattern is blended
        if cfg.pattern == "image":
            self.pattern = load_pattern(sample_image_path(cfg.sample_image), c, size)
        elif cfg.pattern == "file":
            self.pattern = load_pattern(cfg.pattern_path, c, size)
        elif cfg.pattern == "random":
            self.pattern = random_patch(c, size, size, g)
        elif cfg.pattern == "signal":
            self.pattern = stripes(size, size, cfg.signal_period).expand(c, size, size).clone()
        else:
            s = cfg.patch_size
            if cfg.position == "random":
                top, left = random_position(size, s, s, cfg.margin, g)
            else:
                top, left = patch_position(size, s, s, cfg.position, cfg.margin)
            patch = (nearest_resize(NAD_BLEND3, s, s).expand(c, s, s) if cfg.pattern == "nad_patch"
                     else random_patch(c, s, s, g))
            self.region, self.pattern = place(patch, top, left, c, size)
            self.top, self.left = top, left

    def alpha_map(self, train: bool) -> torch.Tensor:
        """alpha * m as float [1, H, W] (m: the pattern's region)."""
        alpha = self.cfg.alpha if train or self.cfg.test_alpha is None else self.cfg.test_alpha
        return self.region.float() * alpha

    def apply_trigger(self, x_u8: torch.Tensor, train: bool) -> torch.Tensor:
        return blend(x_u8, self.pattern, self.alpha_map(train).to(x_u8.device))

    def true_trigger(self) -> Trigger:
        """The planted (train-time) trigger: mask = alpha * m, pattern = u / 255."""
        return Trigger(self.alpha_map(True), self.pattern.float() / 255)

    def state(self) -> dict[str, torch.Tensor]:
        """Patterns read from files travel with the artifact (a later edit of the file cannot change them)."""
        return {"pattern": self.pattern.clone()} if self.cfg.pattern in ("image", "file") else {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        if "pattern" in state:
            self.pattern = state["pattern"].to(torch.uint8).cpu()

    def poison(self, train, generator, clean_model=None):
        out = super().poison(train, generator, clean_model)
        out.params.update(pattern=self.cfg.pattern, alpha=self.cfg.alpha)
        if self.cfg.pattern in ("patch", "nad_patch"):
            out.params.update(trigger_top=self.top, trigger_left=self.left)
        return out
