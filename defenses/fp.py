"""Fine-Pruning (Liu, Dolan-Gavitt & Garg, RAID 2018, "Fine-Pruning: Defending Against Backdooring Attacks on
Deep Neural Networks").  LfD (seed 003) Table 2 compares against it ("we pruned the last convolutional layer").

§4.1, the pruning defense: run the clean validation data through the network, record the mean activation of
every channel of the *last convolutional layer*, and prune channels in increasing order of mean activation
(backdoor neurons stay dormant on clean inputs), re-measuring clean validation accuracy after each one; stop
when the accuracy has dropped by more than a threshold (4 % in §5's evaluation).  §4.2, fine-pruning: then
fine-tune the pruned network on the clean data, the pruned channels staying pruned.

Generic over the zoo: activations are the last ``feature_info`` block's output (``bench.features.last_block``,
averaged over H x W); a channel is pruned by zeroing the filter of the block's last ``nn.Conv2d`` with that
many output channels and the affine of the BatchNorm that follows it, so the change lives in the weights
(it survives a state-dict round trip).  During fine-tuning the gradients of those entries are masked to zero.

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


# --- the last convolutional layer of the last block ------------------------------------------------------------

def last_conv(model: nn.Module) -> tuple[nn.Conv2d, nn.Module | None]:
    """The last Conv2d inside the last block whose out_channels match the block's, and the BN right after it."""
    name = last_block(model)
    channels = model.feature_info[-1]["channels"]
    mods = list(model.get_submodule(name).modules())
    for i in range(len(mods) - 1, -1, -1):
        conv = mods[i]
        if isinstance(conv, nn.Conv2d) and conv.out_channels == channels:
            bn = next((m for m in mods[i + 1:] if isinstance(m, nn.modules.batchnorm._BatchNorm)
                       and m.num_features == channels), None)
            return conv, bn
    raise ValueError(f"no Conv2d with {channels} output channels in block {name!r} of {type(model).__name__}")


def channel_params(model: nn.Module) -> list[nn.Parameter]:
    conv, bn = last_conv(model)
    params = [conv.weight] + ([conv.bias] if conv.bias is not None else [])
    return params + ([bn.weight, bn.bias] if bn is not None and bn.affine else [])


def prune_channels(model: nn.Module, channels: list[int]) -> nn.Module:
    """Zero the given output channels of the last conv layer (filter, bias, BN affine) in place."""
    with torch.no_grad():
        for p in channel_params(model):
            p[channels] = 0.0
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
    """Prune ``order`` one channel at a time while the val accuracy stays within ``acc_drop`` of the start.

    Returns the pruned channels (the last step that crossed the threshold is undone) and the val accuracy
    after each step (index 0 = unpruned).
    """
    base = accuracy(model, val)
    accs, pruned = [base], []
    for k, c in enumerate(order[:max_count]):
        prune_channels(model, [c])
        acc = accuracy(model, val)
        accs.append(acc)
        if ctx is not None and ctx.curves.enabled:
            ctx.curves.record(k + 1, val_acc=acc, **ctx.evaluate(model))
        if acc < base - acc_drop:
            break
        pruned.append(c)
    return pruned, accs


def finetune_pruned(model: nn.Module, channels: list[int], clean: ImageSet, cfg: FPConfig,
                    device: torch.device, seed: int) -> nn.Module:
    """§4.2: fine-tune on the clean subset; the pruned entries get zero gradients so they stay zero."""
    params = channel_params(model)
    keep = []
    for p in params:
        mask = torch.ones_like(p)
        mask[channels] = 0.0
        keep.append(mask)
    handles = [p.register_hook(lambda g, m=m: g * m) for p, m in zip(params, keep)]
    try:
        model = fit(model, clean, cfg.recipe(), device=device, seed=seed)
    finally:
        for h in handles:
            h.remove()
    return model


@register_defense("fp", display_name="Fine-Pruning")
class FinePruning(Defense):
    """Prune dormant last-layer channels until clean_val accuracy drops past ``acc_drop``, then fine-tune."""

    Config = FPConfig
    paradigm = "post_training"
    needs = frozenset({"backdoored_model", "clean_subset"})
    uses_clean_val = True

    def run(self, ctx: DefenseContext) -> DefenseResult:
        cfg = self.cfg
        model = copy.deepcopy(ctx.model).eval()
        order = pruning_order(mean_activations(model, ctx.clean.images))
        val = ctx.clean_val if ctx.clean_val is not None and len(ctx.clean_val) else ctx.clean
        probe = copy.deepcopy(model)
        pruned, accs = prune_until(probe, order, val, cfg.acc_drop, int(cfg.max_ratio * len(order)), ctx)
        prune_channels(model, pruned)
        metrics = {"pruned": float(len(pruned)), "channels": float(len(order)),
                   "val_acc_pruned": accs[len(pruned)], "val_acc_before": accs[0]}
        if cfg.ft_epochs > 0:
            model = finetune_pruned(model, pruned, ctx.clean, cfg, ctx.device, ctx.seed)
            metrics["val_acc"] = accuracy(model, val)
        return DefenseResult(model=model, metrics=metrics)
