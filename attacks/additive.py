"""Additive chessboard attack (seed 002 App. C, after Xiang et al.): g(x, v) = clip(x + v), dirty-label.

"A global 'chessboard' pattern, where one of two adjacent pixels are perturbed by 3/255 in all color
channels": v(i, j) = +amplitude where (i + j) is even and 0 where it is odd, on every channel; ``signed: true``
makes the odd pixels -amplitude instead (the "+-3/255 on alternate pixels" reading).  Values are clipped to
[0, 255] (the paper's domain clipping [.]_c).  Seed 002 poisons 1,000 non-target CIFAR-10 images (§4, Tab. 2);
the default rate 1000/45000 of the non-target pool gives exactly that count on CIFAR-10 and scales with the
dataset elsewhere (set ``poison_count: 1000`` for the absolute count).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.attack import Attack, AttackConfig, Trigger
from bench.data.imageset import DataInfo
from bench.registry import register_attack
from bench.triggers import add_signal, chessboard


@dataclass(frozen=True)
class AdditiveConfig(AttackConfig):
    amplitude: float = 3.0             # seed 002 App. C: 3/255, in pixel units
    signed: bool = False               # seed 002 App. C: one of two adjacent pixels perturbed (+), the other not
    target: int = 0                    # not stated in seed 002; the harness default
    poison_rate: float = 1000 / 45000  # seed 002 §4 Tab. 2: 1,000 poisoned images on CIFAR-10 (non-target pool)

    def __post_init__(self):
        super().__post_init__()
        if self.amplitude < 0:
            raise ValueError(f"amplitude must be >= 0, got {self.amplitude}")


@register_attack("additive", display_name="Additive")
class Additive(Attack):
    """Global additive chessboard perturbation of +3/255 (seed 002 App. C)."""

    Config = AdditiveConfig

    def __init__(self, cfg: AdditiveConfig, info: DataInfo, seed: int):
        super().__init__(cfg, info, seed)
        self.signal = chessboard(info.image_size, info.image_size, cfg.amplitude, cfg.signed)

    def apply_trigger(self, x_u8: torch.Tensor, train: bool) -> torch.Tensor:
        return add_signal(x_u8, self.signal)

    def true_trigger(self) -> Trigger:
        return Trigger.additive(self.signal, self.info.in_channels)

    def poison(self, train, generator, clean_model=None):
        out = super().poison(train, generator, clean_model)
        out.params.update(amplitude=self.cfg.amplitude, signed=self.cfg.signed)
        return out
