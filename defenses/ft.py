"""Fine-tuning (FT) on the defender's clean subset, as MCL compares against it (seed 000 §4.1, App. A.4):
20 epochs, SGD momentum 0.9, wd 1e-4, batch 64, lr 0.1 (0.01 on GTSRB), random crop + horizontal flip.  The lr
is divided by 10 after epoch 1 and epoch 10 on CIFAR-10 and the ImageNet subset (0.1, 0.01 × 9, 0.001 × 10) and
after epochs 2 and 10 on GTSRB: the authors' ``fine_defense_adjust_learning_rate`` (WeCanShow/MCL
``utils/util.py`` l. 76-99), which all their elimination stages share; App. A.4's "at the 2nd and the 10th
epochs" is their GTSRB schedule.  The same settings serve NAD's two stages and MCL's elimination stage.
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
    milestones: tuple[int, ...] = (1, 10)         # MCL code utils/util.py l. 77-85 (GTSRB (2, 10): per_dataset)
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
    per_dataset = {"gtsrb": {"lr": 0.01, "milestones": (2, 10)}}   # §4.1; MCL code utils/util.py l. 86-94

    def run(self, ctx: DefenseContext) -> DefenseResult:
        model = fit(ctx.model, ctx.clean, self.cfg.recipe(), device=ctx.device, seed=ctx.seed)
        return DefenseResult(model=model)
