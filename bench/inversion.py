"""Trigger inversion shared by Neural Cleanse and MCL's stage 1 (seed 000 §3.3, Eq. 1-2; App. A.4).

Neural Cleanse (Wang et al., S&P 2019, §IV) reverse-engineers, for a candidate target label y_t, the smallest
mask m and a pattern Δ that send clean images to y_t:

    x̂ = (1 - m) ⊙ x + m ⊙ Δ                                       (MCL Eq. 1)
    min_{m, Δ}  CE(f(x̂), y_t) + λ · |m|_1                          (MCL Eq. 2)

Both live in [0, 1] image space (m: [1, H, W], Δ: [C, H, W]); the zoo's models take [0, 1] input and normalise
internally, so there is no scale mismatch between the trigger and the input (MCL's code blends a [0, 1] trigger
into *normalised* images).  |m|_1 is the sum over the H×W mask (NC's code divides a channel-replicated mask's L1
by the channel count, which is the same number).

One setting serves both defenses by default: MCL App. A.4, "for the trigger inversion stage in our MCL and NC":
Adam lr 0.005 (momentum 0.9), batch 64, 100 epochs, λ = 0.01 (0.001 on the ImageNet subset), with the authors'
loop (WeCanShow/MCL ``main.py`` ``inversion``, lines 18-70): random initial mask and pattern, a fixed λ, mask and
pattern clipped to [0, 1] after every step (l. 53-54), the mask L1 read after each epoch (l. 55), the patience
counter reset on *any* decrease of that L1 and the loop stopped once it exceeds 30 (l. 58-66), and the *last*
trigger returned (l. 70); the clean loader carries crop + flip (``data_loader.py`` l. 19-24).
``InversionFields`` holds these settings for the two defenses' configs, so NC and MCL get the same inversion
unless a sweep changes one of them.

Two ways to weigh the L1 term, one option:
    ``schedule="fixed"``     the authors' loop above (the default).
    ``schedule="adaptive"``  NC's cost schedule (its code, bolunwang/backdoor visualizer.py): λ starts at 0 and is
        set to ``cost`` once the attack succeeds (≥ ``success_threshold``) for ``patience`` steps; then ×2 after
        ``patience`` successful steps, ÷2^1.5 after ``patience`` failing ones.  Early stop once λ has moved both
        up and down and the best successful mask L1 has not improved for ``early_stop_patience`` steps; the
        smallest-L1 trigger among successful epochs is returned (NC's ``SAVE_LAST False``), else the last one.
        NC's own code also uses Adam lr 0.1, betas (0.5, 0.9), init cost 1e-3, the tanh parametrisation and an
        early-stop patience of 25 (5 × patience): set those fields for NC's original inversion.
One NC "step" is one epoch over the defender's clean subset here (NC's code: 31 mini-batches of 32).
``found`` says whether the returned trigger reached ``success_threshold``: for the fixed loop, measured on the
inversion data after the loop (the authors' closing ``attack_with_trigger`` check, l. 68); for NC's schedule,
whether any epoch succeeded.

``scan`` inverts every label (or the given ones); ``mad_outliers`` is NC's anomaly index: the absolute deviation
from the median L1, over the median absolute deviation times the consistency constant 1.4826; a label is flagged
when its L1 is below the median and its index exceeds 2 (NC §IV-C).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.attack import Trigger
from bench.augment import augment
from bench.data.imageset import ImageSet
from bench.train import batch_indices, gen_for_device

INVERSION_STREAM = "inversion"
"""The seeded random stream (``DefenseContext.generator``) NC and MCL both invert with: given the same target, the
same clean subset and the shared default setting, they compute the very same trigger, so their Table 1 cells
differ only in the removal step.  (Each computes it; a cached inversion stage both read is not built.)"""
MAD_CONSISTENCY = 1.4826          # NC §IV-C: makes the MAD a consistent estimator of a normal's std
ANOMALY_THRESHOLD = 2.0           # NC §IV-C: index > 2 -> outlier with > 95 % probability


@dataclass(frozen=True)
class InversionConfig:
    """How to invert one label.  Defaults are MCL App. A.4 (its NC stage): Adam lr 0.005, batch 64, 100 epochs,
    λ = 0.01, crop + flip on the clean subset; NC's own code uses Adam lr 0.1 with betas (0.5, 0.9), init cost 1e-3."""

    epochs: int = 100
    batch_size: int = 64
    lr: float = 0.005
    betas: tuple[float, float] = (0.9, 0.999)
    cost: float = 0.01                              # λ (fixed) or NC's init_cost (adaptive)
    schedule: Literal["fixed", "adaptive"] = "fixed"
    parametrisation: Literal["clip", "tanh"] = "clip"   # MCL: clip to [0, 1]; NC: tanh(w) / (2 - eps) + 0.5
    augment: tuple[str, ...] = ("crop", "flip")
    success_threshold: float = 0.99                 # NC: ATTACK_SUCC_THRESHOLD
    patience: int = 5                               # NC: steps before a cost change
    cost_up: float = 2.0                            # NC: COST_MULTIPLIER (up)
    cost_down: float = 2.0 ** 1.5                   # NC: COST_MULTIPLIER ** 1.5 (down)
    early_stop_patience: int = 30                   # MCL code: 30 epochs; NC code: 5 * patience = 25 steps


@dataclass(frozen=True)
class InversionFields:
    """The inversion settings of a defense config (NC and MCL inherit these: one setting for both, App. A.4)."""

    inv_epochs: int = 100
    inv_batch_size: int = 64
    inv_lr: float = 0.005
    inv_betas: tuple[float, ...] = (0.9, 0.999)              # Adam (beta1, beta2); NC code: (0.5, 0.9)
    inv_lambda: float = 0.01                                 # λ (fixed) or NC's init_cost (adaptive; NC code 1e-3)
    inv_schedule: Literal["fixed", "adaptive"] = "fixed"     # the authors' loop | NC's cost schedule
    inv_parametrisation: Literal["clip", "tanh"] = "clip"    # MCL code: clip | NC code: tanh
    inv_augment: tuple[str, ...] = ("crop", "flip")
    inv_success_threshold: float = 0.99
    inv_patience: int = 5                                    # NC's cost-change patience (adaptive only)
    inv_early_stop: int = 30                                 # MCL code: > 30 epochs without a smaller mask

    def __post_init__(self):
        if len(self.inv_betas) != 2:
            raise ValueError(f"inv_betas must be two numbers, got {list(self.inv_betas)}")

    def inversion(self) -> InversionConfig:
        return InversionConfig(epochs=self.inv_epochs, batch_size=self.inv_batch_size, lr=self.inv_lr,
                               betas=(self.inv_betas[0], self.inv_betas[1]), cost=self.inv_lambda,
                               schedule=self.inv_schedule, parametrisation=self.inv_parametrisation,
                               augment=self.inv_augment, success_threshold=self.inv_success_threshold,
                               patience=self.inv_patience, early_stop_patience=self.inv_early_stop)


@dataclass
class Inversion:
    """One inverted label: the trigger, its mask L1, and how often it flips clean images to ``target``."""

    target: int
    trigger: Trigger
    mask_l1: float
    attack_success: float          # on the clean data passed as ``eval_data`` (non-target images, no augmentation)
    found: bool                    # the returned trigger reached cfg.success_threshold (see the module docstring)
    epochs: int                    # epochs actually run (early stop)

    def metrics(self) -> dict[str, float]:
        """The numbers a defense stores for its inversion (NC and MCL store the same ones)."""
        return {"mask_l1": self.mask_l1, "inversion_asr": self.attack_success,
                "inversion_found": float(self.found), "inversion_epochs": float(self.epochs)}


# ---------------------------------------------------------------------------------------------------------
# The parametrised trigger
# ---------------------------------------------------------------------------------------------------------

class _TriggerParams(nn.Module):
    """Mask [1, H, W] and pattern [C, H, W] in [0, 1], either clipped raw values or tanh-squashed ones."""

    def __init__(self, channels: int, size: tuple[int, int], mode: str, generator: torch.Generator):
        super().__init__()
        self.mode = mode
        mask, pattern = torch.rand(1, *size, generator=generator), torch.rand(channels, *size, generator=generator)
        if mode == "tanh":   # store atanh((v - 0.5) * (2 - eps)) so the initial values are the same draw
            mask, pattern = (torch.atanh((v - 0.5) * (2 - 1e-3)) for v in (mask, pattern))
        self.mask_raw, self.pattern_raw = nn.Parameter(mask), nn.Parameter(pattern)

    def values(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "tanh":
            return (torch.tanh(self.mask_raw) / (2 - 1e-3) + 0.5, torch.tanh(self.pattern_raw) / (2 - 1e-3) + 0.5)
        return self.mask_raw, self.pattern_raw

    @torch.no_grad()
    def project(self) -> None:
        if self.mode == "clip":
            self.mask_raw.clamp_(0, 1)
            self.pattern_raw.clamp_(0, 1)

    def trigger(self) -> Trigger:
        m, p = self.values()
        return Trigger(m.detach().clone().cpu(), p.detach().clone().cpu())


class _CostSchedule:
    """λ over the epochs: constant (MCL) or NC's adaptive schedule with its early-stop rule."""

    def __init__(self, cfg: InversionConfig):
        self.cfg = cfg
        self.adaptive = cfg.schedule == "adaptive"
        self.cost = 0.0 if self.adaptive else cfg.cost          # NC: RESET_COST_TO_ZERO
        self.set_count = self.up_count = self.down_count = 0
        self.moved_up = self.moved_down = False
        self.since_best = 0

    def update(self, success: float, improved: bool) -> bool:
        """Adjust λ after an epoch; return True to stop early.

        ``improved``: fixed schedule, the mask L1 decreased (any decrease, MCL code l. 59); adaptive, a successful
        epoch gave a smaller mask than the best so far (NC code).
        """
        c, ok = self.cfg, success >= self.cfg.success_threshold
        self.since_best = 0 if improved else self.since_best + 1
        if not self.adaptive:
            return self.since_best > c.early_stop_patience      # MCL code l. 65: ``min_norm_count > 30``
        if self.cost == 0:
            self.set_count = self.set_count + 1 if ok else 0
            if self.set_count >= c.patience:          # first switch-on: λ = init cost, counters restart
                self.cost, self.up_count, self.down_count = c.cost, 0, 0
                self.moved_up = self.moved_down = False
            return False
        self.up_count, self.down_count = (self.up_count + 1, 0) if ok else (0, self.down_count + 1)
        if self.up_count >= c.patience:
            self.up_count, self.cost, self.moved_up = 0, self.cost * c.cost_up, True
        elif self.down_count >= c.patience:
            self.down_count, self.cost, self.moved_down = 0, self.cost / c.cost_down, True
        return self.moved_up and self.moved_down and self.since_best >= c.early_stop_patience


# ---------------------------------------------------------------------------------------------------------
# Inversion of one label, a scan over labels, and the MAD outlier test
# ---------------------------------------------------------------------------------------------------------

@torch.no_grad()
def attack_success(model: nn.Module, data: ImageSet, trigger: Trigger, target: int, batch_size: int = 512) -> float:
    """Fraction of ``data``'s non-target images that ``trigger`` sends to ``target`` (model in eval mode)."""
    device = next(model.parameters()).device
    keep = data.labels.cpu() != target
    images = data.images[keep.to(data.images.device)]
    if len(images) == 0:
        return float("nan")
    model.eval()
    hits = 0
    for s in range(0, len(images), batch_size):
        x = trigger.apply(images[s:s + batch_size].to(device).float().div_(255))
        hits += int((model(x).argmax(1) == target).sum())
    return hits / len(images)


def _epoch(model: nn.Module, params: _TriggerParams, opt: torch.optim.Optimizer, images: torch.Tensor, target: int,
           cost: float, cfg: InversionConfig, generator: torch.Generator, aug_gen: torch.Generator | None) -> float:
    """One pass over ``images`` minimising Eq. 2 at cost λ; returns the fraction of batches' images sent to target."""
    hits = seen = 0
    for idx in batch_indices(len(images), cfg.batch_size, generator, images.device):
        x = augment(images[idx], cfg.augment, aug_gen)
        m, p = params.values()
        logits = model((1 - m) * x + m * p)                                   # Eq. 1
        y = torch.full((len(idx),), target, dtype=torch.long, device=images.device)
        loss = F.cross_entropy(logits, y) + cost * m.abs().sum()              # Eq. 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        params.project()
        hits, seen = hits + int((logits.argmax(1) == y).sum()), seen + len(idx)
    return hits / max(seen, 1)


def invert(model: nn.Module, data: ImageSet, target: int, cfg: InversionConfig, *, device: torch.device,
           generator: torch.Generator, eval_data: ImageSet | None = None) -> Inversion:
    """Reverse-engineer a trigger for ``target`` on ``data`` (MCL Eq. 2).  The model is left unchanged.

    Args:
        model: the classifier (x in [0, 1]); put in eval mode, its parameters are not updated.
        data: the defender's clean images (uint8 [N, C, H, W]) and labels.
        generator: a CPU generator (initial values, batch order, augmentation).
        eval_data: where ``attack_success`` is measured (default ``data``).
    Returns:
        The trigger (fixed schedule: the last one, as the authors' loop; adaptive: the smallest mask among
        successful epochs, else the last), its L1, attack success, whether it succeeded and the epochs run.
    """
    model.eval()
    was = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        params = _TriggerParams(data.images.shape[1], tuple(data.images.shape[2:]), cfg.parametrisation,
                                generator).to(device)
        opt = torch.optim.Adam(params.parameters(), lr=cfg.lr, betas=cfg.betas)
        schedule, images = _CostSchedule(cfg), data.images.to(device)
        aug_gen = gen_for_device(generator, device)
        best: tuple[float, Trigger] | None = None        # adaptive: smallest successful mask
        min_l1 = math.inf                                # fixed: the authors' ``min_norm``
        epochs_run = 0
        for _ in range(cfg.epochs):
            epochs_run += 1
            success = _epoch(model, params, opt, images, target, schedule.cost, cfg, generator, aug_gen)
            l1 = float(params.values()[0].detach().abs().sum())
            if schedule.adaptive:
                improved = success >= cfg.success_threshold and (best is None or l1 < best[0])
                if improved:
                    best = (l1, params.trigger())
            else:
                improved, min_l1 = l1 < min_l1, min(l1, min_l1)
            if schedule.update(success, improved):
                break
        if schedule.adaptive and best is not None:
            l1, trigger, found = best[0], best[1], True
        else:
            trigger = params.trigger()
            l1 = float(trigger.mask.abs().sum())
            found = (not schedule.adaptive
                     and attack_success(model, data, trigger, target) >= cfg.success_threshold)
        asr = attack_success(model, eval_data if eval_data is not None else data, trigger, target)
        return Inversion(target, trigger, l1, asr, found, epochs_run)
    finally:
        for p, w in zip(model.parameters(), was):
            p.requires_grad_(w)


def scan(model: nn.Module, data: ImageSet, cfg: InversionConfig, *, device: torch.device,
         generator: torch.Generator, labels: Sequence[int] | None = None,
         eval_data: ImageSet | None = None) -> list[Inversion]:
    """``invert`` every label in ``labels`` (default: every class of the model's head), in order."""
    if labels is None:
        labels = range(model.fc.out_features)
    return [invert(model, data, int(t), cfg, device=device, generator=generator, eval_data=eval_data)
            for t in labels]


@dataclass(frozen=True)
class Outliers:
    """NC's MAD test over per-label mask L1 norms."""

    index: torch.Tensor            # float [K] anomaly index of every label
    flagged: list[int]             # labels (positions) with L1 below the median and index > threshold
    min_label: int                 # position of the smallest mask
    anomaly_index: float           # the smallest mask's index (NC's reported number)


def mad_outliers(l1: torch.Tensor | Sequence[float], threshold: float = ANOMALY_THRESHOLD) -> Outliers:
    """Anomaly index |l1 - median| / (1.4826 · median(|l1 - median|)) per label (NC §IV-C).

    ``median`` is the midpoint median (numpy's, as NC's code uses), not torch's lower median.
    """
    l1 = torch.as_tensor(l1, dtype=torch.float64)
    med = torch.quantile(l1, 0.5)
    mad = MAD_CONSISTENCY * torch.quantile((l1 - med).abs(), 0.5)
    index = (l1 - med).abs() / mad if mad > 0 else torch.where(l1 == med, 0.0, float("inf")).double()
    flagged = [int(k) for k in torch.nonzero((l1 < med) & (index > threshold)).flatten()]
    k = int(l1.argmin())
    return Outliers(index, flagged, k, float(index[k]))
