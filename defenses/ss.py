"""Spectral Signatures, SS (Tran, Li & Madry, NeurIPS 2018): training-set cleansing.

Tran et al. §4 (Algorithm 1): train a network on the (possibly poisoned) set; for each label y, take the learned
representations R_i of the samples labelled y, centre them (R_i - mean_y), compute the top right-singular vector
v of the centred matrix, and score each sample by its squared correlation with v,
    τ_i = ((R_i - mean_y) · v)²                                                        (Algorithm 1)
The backdoor leaves a "spectral signature" along v, so poisoned samples score highest.  Remove the top 1.5 · ε
scores of each class (ε an upper bound on the poisoned count there), then retrain on the rest (§4, §5; here the
runner's retrain_kept).

Knowledge: the paper's §5 removes 1.5 × the number of poisoned images, and seed 002 §4 ran SS knowing the target
class and that number.  ``poison_count`` (with ``target_class``) is that privileged setting, marked in reports.
Without them: ``eps`` is the assumed poisoned fraction of each class (each class loses its top 1.5 · eps · n_y),
or ``percentile`` removes the scores above that per-class percentile.  ``poison_count`` without a target class
is spread over classes as eps = poison_count / N.  Representations: the penultimate layer (``bench.train.embed``)
of a model trained with the cell's model and recipe (``teacher_epochs`` overrides its length).  Seed 002
retrained the kept set with SupCon; we retrain with the cell's recipe.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from bench.defense import Defense, DefenseConfig, DefenseContext, DefenseResult, top_flags
from bench.registry import register_defense
from bench.train import embed
from defenses.ac import class_groups, train_on_poisoned


@dataclass(frozen=True)
class SSConfig(DefenseConfig):
    removal_factor: float = 1.5                  # Algorithm 1 / §5: remove 1.5 × the (bound on the) poison count
    poison_count: Optional[int] = None           # seed 002 §4, Tran §5: the number of poisoned images (privileged)
    target_class: Optional[int] = None           # seed 002 §4: the attacker's target class (privileged)
    eps: float = 0.1                             # without poison_count: assumed poisoned fraction per class
    percentile: Optional[float] = None           # instead: remove scores above this per-class percentile
    teacher_epochs: Optional[int] = None         # None: the cell's recipe as it is
    teacher_augment: Optional[tuple[str, ...]] = None

    def __post_init__(self):
        if self.percentile is not None and not 0 <= self.percentile <= 100:
            raise ValueError(f"percentile={self.percentile} must lie in [0, 100]")
        if self.poison_count is not None and self.poison_count < 0:
            raise ValueError(f"poison_count={self.poison_count} must be >= 0")


def spectral_scores(reps: torch.Tensor) -> torch.Tensor:
    """Algorithm 1's outlier score τ_i = ((R_i - mean) · v)² with v the top right-singular vector.

    Args:
        reps: float [n, d] representations of one class.
    Returns:
        float [n] scores (higher = more suspicious).
    """
    centred = reps.double() - reps.double().mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return ((centred @ vh[0]) ** 2).float()


@register_defense("ss", display_name="SS")
class SpectralSignatures(Defense):
    """Per class: score by the top singular direction of centred representations, remove the top 1.5 · ε."""

    Config = SSConfig
    paradigm = "cleansing"
    needs = frozenset({"poisoned_train"})
    privileged = ("poison count (when poison_count is set)", "target class (when target_class is set)")

    def removal_count(self, n_class: int, n_total: int) -> int:
        """How many samples one analysed class loses (Algorithm 1's 1.5 · ε)."""
        cfg = self.cfg
        if cfg.poison_count is not None and cfg.target_class is not None:
            return int(round(cfg.removal_factor * cfg.poison_count))
        eps = cfg.poison_count / n_total if cfg.poison_count is not None else cfg.eps
        return int(math.ceil(cfg.removal_factor * eps * n_class))

    def run(self, ctx: DefenseContext) -> DefenseResult:
        cfg, train = self.cfg, ctx.train
        model = train_on_poisoned(ctx, cfg.teacher_epochs, cfg.teacher_augment)
        feats = embed(model, train.images, ctx.device)
        flags, scores = torch.zeros(len(train), dtype=torch.bool), torch.zeros(len(train))
        ties = ctx.generator("ss.ties")
        for idx in class_groups(train, cfg.target_class):
            if len(idx) < 2:
                continue
            s = spectral_scores(feats[idx])
            scores[idx] = s
            if cfg.percentile is not None:
                flags[idx] = s > torch.quantile(s.double(), cfg.percentile / 100).float()
            else:
                flags[idx] = top_flags(s, self.removal_count(len(idx), len(train)), generator=ties)
        return DefenseResult(model=None, scores=scores, flags=flags)
