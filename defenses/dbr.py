"""D-BR, Distinguishment and Backdoor Removal (seed 001 §3.4, App. A.3 Algorithm 4), without any clean data.

SD module (§3.2, ``defenses/_sd.py``) splits the poisoned training set by FCT into D_c (bottom alpha_c = 20 %),
D_p (top alpha_p = 5 %) and D_u.  The BR module then runs rounds of
    unlearning (Eq. 4): one epoch minimising (1/|D_p|) sum log g(x)_y on D_p, i.e. gradient ascent on CE;
    relearning (Eq. 5): one epoch of cross-entropy on D_c,
20 rounds, SGD momentum 0.9, wd 5e-4, fixed lr 1e-4, batch 128 (``unlearn_relearn.py`` l. 20-23, 141, 163-171;
§4.3 "we run 20 epochs").  Checked against the code and correct as implemented: the lr is fixed at 1e-4
(``learning_rate_unlearning`` sets it every epoch), one SGD optimizer (momentum 0.9, wd 5e-4) serves both phases,
and the last partial batch is kept.  Augmentation per dataset as ``unlearn_relearn.py`` l. 112-121: CIFAR-10
RandomCrop(pad 4) + HFlip, CIFAR-100 RandomCrop only (no flip), ImageNet RandomRotation(20) + HFlip; the same
transform for the unlearned D_p and the relearned D_c.  Fig. 5's ablations: ``mode: pure_unlearn`` / ``pure_relearn`` run only one phase for the
same number of epochs.  Curves (``curves: true``): test BA/ASR after every round, for Fig. 5.

Deviation: the authors' code keeps the round with the best *test* ACC - ASR; we keep the last round (no model
selection on test data, ../shared/DESIGN.md; BackdoorBench's port does the same).  Both phases share one optimizer
(the momentum carries over between phases, as one optimizer in the authors' loop).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from bench.defense import Defense, DefenseContext, DefenseResult
from bench.registry import register_defense
from defenses._sd import SDConfig, ce_loss, distinguish, run_epoch


@dataclass(frozen=True)
class DBRConfig(SDConfig):
    rounds: int = 20                        # §4.3 / unlearn_relearn.py: 20 epochs of unlearn + relearn
    lr: float = 1e-4                        # learning_rate_unlearning, fixed (no schedule)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    augment: tuple[Literal["crop", "flip", "rotate"], ...] = ("crop", "flip")   # CIFAR; ImageNet: rotate 20 + flip
    mode: Literal["unlearn_relearn", "pure_unlearn", "pure_relearn"] = "unlearn_relearn"   # Fig. 5


def unlearn_loss(model, x, y) -> torch.Tensor:
    """Eq. 4: the mean log-likelihood of the (poisoned) label, minimised -- gradient ascent on cross-entropy."""
    return -F.cross_entropy(model(x), y)


@register_defense("dbr", display_name="D-BR")
class DBR(Defense):
    """SD module, then alternate one epoch of unlearning D_p and one epoch of relearning D_c."""

    Config = DBRConfig
    paradigm = "post_training"
    needs = frozenset({"backdoored_model", "poisoned_train"})
    # Augmentation follows the dataset, as the authors' code does (CIFAR-10 crop + flip, CIFAR-100 crop only,
    # ImageNet rotate 20 + flip).  Digits: none -- a flipped digit is another glyph, and with crop + flip the relearning epochs on 287 digits
    # wrecked BA (0.997 -> 0.59 at lr 0.01) while without them D-BR gives BA 0.93, ASR 0.00 (5 rounds, lr 0.01).
    per_dataset = {"digits": {"augment": ()}, "cifar100": {"augment": ("crop",)},
                   "imagenet_subset": {"augment": ("rotate", "flip")}}

    def run(self, ctx: DefenseContext) -> DefenseResult:
        cfg: DBRConfig = self.cfg
        split = distinguish(ctx.train, ctx.new_model, cfg, ctx.device, ctx.generator("sd"))
        train = ctx.train.to(ctx.device)
        d_p, d_c = train.subset(split.poisoned.to(ctx.device)), train.subset(split.clean.to(ctx.device))
        model = ctx.model
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        gen = ctx.generator("br")
        params = {"rotate": {"degrees": 20}} if "rotate" in cfg.augment else None
        for r in range(cfg.rounds):
            losses = {}
            if cfg.mode != "pure_relearn" and len(d_p):
                losses["unlearn_loss"] = run_epoch(model, d_p, opt, unlearn_loss, cfg.batch_size, gen,
                                                   cfg.augment, params)
            if cfg.mode != "pure_unlearn" and len(d_c):
                losses["relearn_loss"] = run_epoch(model, d_c, opt, ce_loss, cfg.batch_size, gen,
                                                   cfg.augment, params)
            if ctx.curves.enabled and ctx.evaluate is not None:
                ctx.curves.record(r + 1, **losses, **ctx.evaluate(model.eval()))
        metrics = {**split.metrics(), "rounds": float(cfg.rounds)}
        return DefenseResult(model=model.eval(), scores=split.scores, flags=split.flags(),
                             trusted=split.trusted(), metrics=metrics)
