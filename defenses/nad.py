"""Neural Attention Distillation (NAD; Li et al., ICLR 2021), as MCL compares against it (seed 000 §4.1, App. A.4).

NAD §3: (1) the teacher is a copy of the backdoored model fine-tuned with cross-entropy on the defender's clean
subset; (2) the student (the backdoored model itself) is fine-tuned on the same subset with

    L = CE(f_S(x), y) + sum_i beta_i * L_AT(A_S^i, A_T^i)                                        (NAD Eq. 3)

where A^i is the attention map of the i-th block (NAD Eq. 1, the attention operator of Zagoruyko & Komodakis):
A = sum over channels of |a_c|^p, p = 2, flattened over H x W and L2-normalised per sample, and L_AT is the
distance between the teacher's and the student's normalised maps (NAD Eq. 2).  NAD's code (``at.py``) takes the
mean squared difference over batch and H x W; its beta values (500 / 1000 / 1000 for the three WRN groups,
``config.py``) are calibrated to that mean, so we compute the same mean.  MCL App. A.4 keeps NAD's settings on
CIFAR-10 and GTSRB and tuned beta by hand on the ImageNet subset (values not given): set ``betas`` there.

Training settings: MCL App. A.4, "for NAD, the training settings of the two stages are the same as the MCL
backdoor elimination stage" -- 20 epochs, SGD lr 0.1 (0.01 on GTSRB), lr / 10 after epochs 1 and 10 (2 and 10
on GTSRB: the MCL code's schedule, defenses/ft.py), momentum 0.9, wd 1e-4, batch 64, random crop + flip -- i.e.
FT's settings, which both stages reuse.  The rest
follows NAD: beta per block, p = 2, the teacher frozen in eval mode while distilling.  Blocks default to the
model's last three ``feature_info`` blocks (the three WRN groups; "the latest three residual groups" of
ResNet-18 on the ImageNet subset, App. A.4), or all of them when a model has fewer.

Deviations: NAD's code used Nesterov momentum and kept the checkpoint chosen by test-set ASR / BA thresholds;
MCL's App. A.4 fixes the optimizer to its elimination stage (plain momentum), and we return the last epoch
(no test data is used for selection).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.defense import Defense, DefenseContext, DefenseResult
from bench.features import block_names, tap
from bench.registry import register_defense
from bench.train import fit
from defenses.ft import FineTuning, FTConfig


@dataclass(frozen=True)
class NADConfig(FTConfig):
    """NAD: FT's fields (both stages, MCL App. A.4) plus the distillation's own."""

    betas: tuple[float, ...] = (500.0, 1000.0, 1000.0)  # NAD config.py: beta1..3 for WRN groups 1..3
    p: float = 2.0                                       # NAD Eq. 1: attention power
    blocks: tuple[str, ...] = ()                         # feature_info names; () = the last three (or all)


# ---- NAD Eq. 1-2: attention maps and the attention distillation loss ------------------------------------

def attention_map(a: torch.Tensor, p: float = 2.0, eps: float = 1e-6) -> torch.Tensor:
    """NAD Eq. 1: sum over channels of |a|^p, flattened and L2-normalised per sample.

    Args:
        a: float [N, C, H, W] activations of one block.
    Returns:
        float [N, H * W], each row of unit L2 norm (up to ``eps``, as NAD's ``at.py``).
    """
    am = a.float().abs().pow(p).sum(1).flatten(1)
    return am / (am.norm(dim=1, keepdim=True) + eps)


def at_loss(a_student: torch.Tensor, a_teacher: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """NAD Eq. 2: distance between the normalised attention maps (mean squared difference, as NAD's code)."""
    return F.mse_loss(attention_map(a_student, p), attention_map(a_teacher, p))


def default_blocks(model: nn.Module) -> tuple[str, ...]:
    """The model's last three ``feature_info`` blocks (all of them when it has fewer)."""
    return tuple(block_names(model)[-3:])


def block_betas(blocks: Sequence[str], betas: Sequence[float]) -> tuple[float, ...]:
    """Pair each block with its beta: betas align with the *last* blocks (the deepest gets the last beta).

    Raises:
        ValueError: fewer betas than blocks.
    """
    if len(betas) < len(blocks):
        raise ValueError(f"nad: {len(betas)} betas {list(betas)} for {len(blocks)} blocks {list(blocks)}; "
                         "give one beta per block")
    return tuple(betas[len(betas) - len(blocks):])


# ---- NAD §3: teacher fine-tuning, then attention distillation ------------------------------------------

def distillation_loss(teacher: nn.Module, blocks: Sequence[str], betas: Sequence[float], p: float):
    """NAD Eq. 3 as a ``fit`` loss: CE on the student + sum_i beta_i * L_AT on the named blocks."""
    teacher.eval()

    def loss_fn(student: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), tap(teacher, blocks, detach=True) as acts_t:
            teacher(x)
        with tap(student, blocks) as acts_s:
            logits = student(x)
        loss = F.cross_entropy(logits, y)
        for name, beta in zip(blocks, betas):
            loss = loss + beta * at_loss(acts_s[name], acts_t[name], p)
        return loss

    return loss_fn


@register_defense("nad", display_name="NAD")
class NeuralAttentionDistillation(Defense):
    """NAD: fine-tune a teacher copy on the clean subset, then distil its attention maps into the backdoored model."""

    Config = NADConfig
    paradigm = "post_training"
    needs = frozenset({"backdoored_model", "clean_subset"})
    per_dataset = FineTuning.per_dataset     # MCL §4.1 / code: lr 0.01 and milestones (2, 10) on GTSRB

    def run(self, ctx: DefenseContext) -> DefenseResult:
        cfg, recipe = self.cfg, self.cfg.recipe()
        blocks = cfg.blocks or default_blocks(ctx.model)
        betas = block_betas(blocks, cfg.betas)
        teacher = fit(copy.deepcopy(ctx.model), ctx.clean, recipe, device=ctx.device, seed=ctx.seed)       # stage 1: FT
        on_epoch = None
        if ctx.curves.enabled and ctx.evaluate is not None:
            def on_epoch(epoch: int, model: nn.Module) -> None:
                ctx.curves.record(epoch + 1, **ctx.evaluate(model))
        student = fit(ctx.model, ctx.clean, recipe, device=ctx.device, seed=ctx.seed,      # stage 2: Eq. 3
                      loss_fn=distillation_loss(teacher, blocks, betas, cfg.p), on_epoch=on_epoch)
        return DefenseResult(model=student)
