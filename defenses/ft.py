"""Fine-tuning (FT) on the defender's clean subset, as MCL compares against it (seed 000 §4.1, App. A.4):
20 epochs, SGD momentum 0.9, wd 1e-4, batch 64, lr 0.1 (0.01 on GTSRB) divided by 10 at epochs 2 and 10,
random crop + horizontal flip.  The same settings serve NAD's teacher and MCL's elimination stage.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bench.defense import Defense, DefenseConfig, DefenseContext, DefenseResult
from bench.recipes import Recipe
from bench.registry import register_defense
from bench.train import fit


@dataclass(frozen=True)
class FTConfig(DefenseConfig):
    epochs: int = 20                              # App. A.4
    lr: float = 0.1                               # §4.1 (GTSRB 0.01: per_dataset)
    milestones: tuple[int, ...] = (2, 10)         # App. A.4: lr / 10 at the 2nd and 10th epochs
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 64
    augment: tuple[Literal["crop", "flip"], ...] = ("crop", "flip")

    def recipe(self) -> Recipe:
        return Recipe(optimizer="sgd", lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                      batch_size=self.batch_size, epochs=self.epochs, schedule="multistep",
                      milestones=tuple(m for m in self.milestones if m < self.epochs), augment=self.augment)


@register_defense("ft", display_name="FT")
class FineTuning(Defense):
    """Fine-tune the backdoored model with cross-entropy on the clean subset."""

    Config = FTConfig
    paradigm = "post_training"
    needs = frozenset({"backdoored_model", "clean_subset"})
    per_dataset = {"gtsrb": {"lr": 0.01}}

    def run(self, ctx: DefenseContext) -> DefenseResult:
        model = fit(ctx.model, ctx.clean, self.cfg.recipe(), device=ctx.device, seed=ctx.seed)
        return DefenseResult(model=model)
