"""No attack: the clean training set (the 'clean model' column of every table)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.attack import Attack, AttackConfig, PoisonedSet
from bench.data.imageset import ImageSet
from bench.registry import register_attack


@dataclass(frozen=True)
class NoneConfig(AttackConfig):
    poison_rate: float = 0.0


@register_attack("none", display_name="No attack")
class NoAttack(Attack):
    """Leaves the training set unchanged; ASR is evaluated with no trigger (so it measures the target-class rate)."""

    Config = NoneConfig

    def apply_trigger(self, x_u8: torch.Tensor, train: bool) -> torch.Tensor:
        return x_u8.clone()

    def poison(self, train: ImageSet, generator: torch.Generator, clean_model=None) -> PoisonedSet:
        empty = torch.zeros(0, dtype=torch.long)
        return PoisonedSet(train.labels.clone(), torch.zeros(len(train), dtype=torch.int8), empty,
                           train.images[:0].clone(), {"poisoned": 0, "pool": 0, "base": "none"})
