"""Fine-Pruning (Liu, Dolan-Gavitt & Garg, RAID 2018, "Fine-Pruning: Defending Against Backdooring Attacks on
Deep Neural Networks").  LfD (seed 003) Table 2 compares against it ("we pruned the last convolutional layer").

§4.1, the pruning defense: run the clean validation data through the network, record the mean activation of
every channel of the *last convolutional layer*, and prune channels in increasing order of mean activation
(backdoor neurons stay dormant on clean inputs), re-measuring clean validation accuracy after each one; stop
when the accuracy has dropped by more than a threshold (4 % in §5's evaluation).  §4.2, fine-pruning: then
fine-tune the pruned network on the clean data, the pruned channels staying pruned.

Generic over the zoo: activations are the last ``feature_info`` block's output (``bench.features.last_block``,
averaged over H x W), and a channel is pruned *at that output*: a forward hook multiplies the block's output by
a 0/1 channel mask.  On a ResNet the block output is ``relu(branch + shortcut)``, so zeroing the last conv/BN
of the residual branch (what this file did before) left the channel alive through the identity shortcut --
the activations are ranked after the residual sum, so the mask must act there too (issue 19, item 3).  The
original prunes the last convolutional layer's output channels of plain CNNs (Caffe, ``conv_output_prune.py``
in kangliucn/Fine-pruning-defense), where the two coincide.

Persistence: a hook is not part of a state dict, and the runner stores models as state dicts.  Between the last
block and the logits every zoo model applies only per-channel maps (BN, ReLU), global pooling and ``fc``, so a
masked channel reaches ``fc`` as a constant; ``bake_into_head`` folds that constant into ``fc.bias`` and zeroes
the channel's ``fc`` column (checked: the constant must not vary over the clean images).  The returned model
keeps the hook (its block output is zero at the pruned channels) *and* the baked head, so a reloaded copy
without the hook computes the same logits.  During fine-tuning the hook stays on, so the pruned channels stay
pruned and their ``fc`` columns get zero gradients.

The pruning stops on the defender's held-out clean slice (``ctx.clean_val``), never on test data (the
original and BackdoorBench report the sweep on test data, ../shared/REFERENCE-DEFAULTS.md).  Fine-tuning
settings are not fixed by the paper: SGD lr 0.01, momentum 0.9, wd 5e-4, 10 epochs, crop + flip.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from bench.data.imageset import ImageSet
from bench.defense import Defense, DefenseConfig, DefenseContext, DefenseResult
from bench.features import block_activations, last_block
from bench.recipes import Recipe
from bench.registry import register_defense
from bench.train import fit, predict


@dataclass(frozen=True)
class FPConfig(DefenseConfig):
    acc_drop: float = 0.04                  # §5: stop once clean validation accuracy falls > 4 points
    max_ratio: float = 1.0                  # never prune more than this fraction of the layer's channels
    ft_epochs: int = 10                     # §4.2 fine-tuning (count not fixed by the paper)
    ft_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    augment: tuple[Literal["crop", "flip"], ...] = ("crop", "flip")

    def recipe(self) -> Recipe:
        return Recipe(optimizer="sgd", lr=self.ft_lr, momentum=self.momentum, weight_decay=self.weight_decay,
                      batch_size=self.batch_size, epochs=self.ft_epochs, schedule="cosine", augment=self.augment)


# --- the pruning mask on the last block's output ----------------------------------------------------------------

def mask_block_output(model: nn.Module, channels: list[int]) -> torch.utils.hooks.RemovableHandle:
    """Zero the given channels of the last block's output in every forward pass (a forward hook on the block)."""
    block = model.get_submodule(last_block(model))
    keep = torch.ones(model.feature_info[-1]["channels"])
    keep[channels] = 0.0

    def hook(_mod, _inp, out):
        return out * keep.to(out.device, out.dtype).view(1, -1, *([1] * (out.dim() - 2)))
    return block.register_forward_hook(hook)


@torch.no_grad()
def bake_into_head(model: nn.Module, channels: list[int], images_u8: torch.Tensor) -> nn.Module:
    """Fold the masked channels into ``fc``: their (constant) pooled features go into the bias, their columns to 0.

    Run with the mask hook on.  Raises if a masked channel's feature varies over ``images_u8`` (a model whose
    head mixes channels spatially before pooling could not be baked this way).
    """
    if not channels:
        return model
    device = next(model.parameters()).device
    model.eval()
    f = model.forward_features(images_u8[:64].to(device).float().div(255)).float()[:, channels]
    if (f.max(0).values - f.min(0).values).abs().max() > 1e-4 * (1 + f.abs().max()):
        raise ValueError(f"{type(model).__name__}: a masked channel's feature is not constant; cannot bake FP's mask")
    fc = model.fc
    fc.bias += fc.weight[:, channels] @ f[0].to(fc.weight.dtype)
    fc.weight[:, channels] = 0.0
    return model


# --- §4.1: order by mean clean activation, prune until validation accuracy drops ------------------------------

def mean_activations(model: nn.Module, images_u8: torch.Tensor) -> torch.Tensor:
    """float [C]: each channel's mean activation of the last block over the clean images."""
    return block_activations(model, images_u8, last_block(model)).mean(0)


def pruning_order(activations: torch.Tensor) -> list[int]:
    """Channels in increasing order of mean activation (stable: ties keep channel order)."""
    return torch.sort(activations, stable=True).indices.tolist()


def accuracy(model: nn.Module, data: ImageSet) -> float:
    return float((predict(model, data.images) == data.labels.cpu()).float().mean()) if len(data) else float("nan")


def prune_until(model: nn.Module, order: list[int], val: ImageSet, acc_drop: float, max_count: int,
                ctx: DefenseContext | None = None) -> tuple[list[int], list[float]]:
    """Mask ``order`` one channel at a time while the val accuracy stays within ``acc_drop`` of the start.

    Returns the pruned channels (the last step that crossed the threshold is undone) and the val accuracy
    after each step (index 0 = unpruned).  ``model`` is left without a mask.
    """
    base = accuracy(model, val)
    accs, pruned = [base], []
    for k, c in enumerate(order[:max_count]):
        handle = mask_block_output(model, pruned + [c])
        acc = accuracy(model, val)
        if ctx is not None and ctx.curves.enabled:
            ctx.curves.record(k + 1, val_acc=acc, **ctx.evaluate(model))
        handle.remove()
        accs.append(acc)
        if acc < base - acc_drop:
            break
        pruned.append(c)
    return pruned, accs


def finetune_pruned(model: nn.Module, channels: list[int], clean: ImageSet, cfg: FPConfig,
                    device: torch.device, seed: int) -> nn.Module:
    """§4.2: fine-tune on the clean subset with the mask on (the pruned channels stay zero at the block output)."""
    return fit(model, clean, cfg.recipe(), device=device, seed=seed)


@register_defense("fp", display_name="Fine-Pruning")
class FinePruning(Defense):
    """Prune dormant last-block channels until clean_val accuracy drops past ``acc_drop``, then fine-tune."""

    Config = FPConfig
    paradigm = "post_training"
    needs = frozenset({"backdoored_model", "clean_subset"})
    uses_clean_val = True

    def run(self, ctx: DefenseContext) -> DefenseResult:
        cfg = self.cfg
        model = copy.deepcopy(ctx.model).eval()
        order = pruning_order(mean_activations(model, ctx.clean.images))
        val = ctx.clean_val if ctx.clean_val is not None and len(ctx.clean_val) else ctx.clean
        pruned, accs = prune_until(model, order, val, cfg.acc_drop, int(cfg.max_ratio * len(order)), ctx)
        mask_block_output(model, pruned)
        metrics = {"pruned": float(len(pruned)), "channels": float(len(order)),
                   "val_acc_pruned": accs[len(pruned)], "val_acc_before": accs[0]}
        if cfg.ft_epochs > 0:
            model = finetune_pruned(model, pruned, ctx.clean, cfg, ctx.device, ctx.seed)
            metrics["val_acc"] = accuracy(model, val)
        return DefenseResult(model=bake_into_head(model, pruned, ctx.clean.images), metrics=metrics)
