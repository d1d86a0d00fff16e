"""ANP — Adversarial Neuron Pruning (Wu & Wang, NeurIPS 2021, "Adversarial Neuron Pruning Purifies Backdoored
Deep Models").  D-BR (seed 001) Table 2 compares against it with 1 % clean training data.

§3.2: a backdoored network is sensitive to *adversarial neuron perturbations*: multiply every neuron's weight
by (1 + δ_k) and its bias by (1 + ξ_k), |δ|, |ξ| <= ε, and the backdoor fires on clean inputs.  §3.3, Eq. 6:
learn a relaxed mask m ∈ [0, 1]^n on the neurons with

    min_m  α · L(m ⊙ w, b)  +  (1 − α) · max_{δ, ξ ∈ [−ε, ε]^n}  L((m + δ) ⊙ w, (1 + ξ) ⊙ b)          (Eq. 6)

on the defender's clean data, then prune the neurons with small mask values (§3.3 "pruning by threshold", or
a fixed number of the smallest).  A "neuron" is a BatchNorm channel (the authors perturb the BN affine of
every layer), found here generically as every ``nn.BatchNorm2d`` of the model — no model-name tests.

Defaults (§4.1 "Defense settings" and the authors' code, csdongxian/ANP_backdoor): ε = 0.4, α = 0.2, masks by
SGD (lr 0.2, momentum 0.9, batch 128, 2000 iterations; ``optimize_mask_cifar.py`` l. 21-37, 97); prune every
neuron whose mask is ``<= 0.2`` (§4.1's threshold; ``prune_neuron_cifar.py`` l. 140 prunes ``value <=
threshold``).  D-BR (seed 001) Table 2 runs ANP "as in the original papers", i.e. at that fixed threshold.
Pruning zeroes a neuron's BN weight (its bias stays, as m ⊙ w prunes only w; ``prune_neuron_cifar.py`` l. 108-112).

The inner maximisation follows the code, not the paper's prose: δ, ξ start uniform in [−ε, ε]
(``anp_batchnorm.py`` l. 26-29), then ``perturb_steps`` signed-gradient ascent steps of size ε / steps
(``optimize_mask_cifar.py`` l. 99: the noise optimizer is SGD with lr ``anp_eps / anp_steps`` on sign(grad),
l. 142-145 and 184-193) and *no projection* back onto [−ε, ε]: after the one default step a perturbation can
reach ±2ε = ±0.8.

Selection (an option, not the default): the authors' code prints test ACC/ASR for every pruning level and the
level is picked from those (BackdoorBench does the same, ../shared/REFERENCE-DEFAULTS.md).  ``select="clean_val"``
scans the levels (the code's grid: 0 to 0.90 in steps of 0.05, as mask thresholds or as fractions of all
neurons) and keeps the largest one whose accuracy on the defender's held-out clean slice stays within
``val_tolerance`` of the unpruned model.  Measured at mini (CIFAR-10, 1 % clean): that slice is 10 images, one
flipped image fails the 2 % tolerance, so level 0 won and ASR stayed 99.4 %, where the fixed threshold 0.2 gave
ASR 99.4 -> 6.6 % (BA 60 -> 42) -- hence ``select="fixed"`` by default.
On NAD's released WRN-16-1 (full CIFAR-10) neither rule helps: 230 / 222 of 464 masks end at or below 0.2 with
1 % / 5 % clean data (BA 10.7 / 10.0), and ``select="clean_val"`` picks level 0, where the 100 masks at exactly
0 already leave a chance-level model -- ε = 0.4, set for ResNet-18, is too strong for this thin network.

Where we differ: the code draws its 2000 batches of 128 with replacement from the clean set
(``RandomSampler(replacement=True)``, l. 81-84); here the batches are passes over the shuffled clean subset
(the same number of batches; partial tails dropped as the Recipe default), which at 1 % (~500 images) is the
same data seen the same number of times in expectation.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from bench.data.imageset import ImageSet
from bench.defense import Defense, DefenseConfig, DefenseContext, DefenseResult
from bench.recipes import Recipe
from bench.registry import register_defense
from bench.train import fit, predict


@dataclass(frozen=True)
class ANPConfig(DefenseConfig):
    eps: float = 0.4                    # §4.1: perturbation bound ε
    alpha: float = 0.2                  # §4.1: trade-off α between natural and perturbed loss (Eq. 6)
    perturb_steps: int = 1              # code: --anp-steps 1; each signed step is eps / steps, no projection
    mask_lr: float = 0.2                # §4.1: SGD lr of the masks, momentum 0.9
    mask_momentum: float = 0.9
    iterations: int = 2000              # §4.1: mask optimisation iterations (batches)
    batch_size: int = 128               # §4.1
    augment: tuple[Literal["crop", "flip"], ...] = ("crop", "flip")   # authors' optimize_mask script
    prune_by: Literal["threshold", "count"] = "threshold"             # §3.3
    threshold: float = 0.2              # §4.1: prune masks <= 0.2 (select="fixed")
    count: int = 0                      # neurons with the smallest masks to prune (prune_by="count", fixed)
    select: Literal["fixed", "clean_val"] = "fixed"       # papers: fixed threshold; clean_val: scan on held-out clean
    max_level: float = 0.9              # authors' scan: up to 0.90 ...
    level_step: float = 0.05            # ... in steps of 0.05 (thresholds, or fractions of all neurons)
    val_tolerance: float = 0.02         # bdbench: largest level whose clean_val accuracy drop is <= this

    def __post_init__(self):
        if not 0 <= self.eps <= 1 or not 0 <= self.alpha <= 1:
            raise ValueError(f"eps and alpha must lie in [0, 1], got eps={self.eps}, alpha={self.alpha}")
        if self.perturb_steps < 1:
            raise ValueError(f"perturb_steps must be >= 1, got {self.perturb_steps}")

    def recipe(self, n: int) -> Recipe:
        per_epoch = max(1, n // self.batch_size) if n > self.batch_size else 1
        return Recipe(optimizer="sgd", lr=self.mask_lr, momentum=self.mask_momentum, weight_decay=0.0,
                      batch_size=self.batch_size, epochs=max(1, math.ceil(self.iterations / per_epoch)),
                      schedule="none", augment=self.augment, amp=False)   # the authors' code runs in fp32


# --- neurons: every BatchNorm2d channel, with a mask m and perturbations δ (weight) and ξ (bias) ---------------

def bn_layers(model: nn.Module) -> list[str]:
    """Module paths of the model's BatchNorm2d layers (ANP's neurons are their channels)."""
    names = [name for name, mod in model.named_modules() if isinstance(mod, nn.BatchNorm2d)]
    if not names:
        raise ValueError(f"ANP perturbs BatchNorm2d channels; {type(model).__name__} has none")
    return names


class NeuronPerturbation(nn.Module):
    """Masks and perturbations for the BN channels of ``model`` (applied by ``functional_call``, model untouched)."""

    def __init__(self, model: nn.Module, eps: float):
        super().__init__()
        self.layers, self.eps = bn_layers(model), eps
        sizes = [model.get_submodule(n).num_features for n in self.layers]
        dev = next(model.parameters()).device
        self.masks = nn.ParameterList([nn.Parameter(torch.ones(s, device=dev)) for s in sizes])
        self.delta = [torch.zeros(s, device=dev) for s in sizes]      # weight perturbation δ
        self.xi = [torch.zeros(s, device=dev) for s in sizes]         # bias perturbation ξ

    def overrides(self, model: nn.Module, perturbed: bool) -> dict[str, torch.Tensor]:
        """Effective BN affine: weight (m + δ) ⊙ w and bias (1 + ξ) ⊙ b (δ = ξ = 0 when not perturbed)."""
        out = {}
        for name, m, d, x in zip(self.layers, self.masks, self.delta, self.xi):
            bn = model.get_submodule(name)
            out[f"{name}.weight"] = bn.weight * (m + d if perturbed else m)
            out[f"{name}.bias"] = bn.bias * (1 + x) if perturbed else bn.bias
        return out

    def random_start(self, generator: torch.Generator) -> None:
        for t in (*self.delta, *self.xi):
            u = torch.rand(t.shape, generator=generator)
            t.requires_grad_(False)
            t.copy_((2 * u - 1).mul_(self.eps).to(t.device))
            t.requires_grad_(True)

    def clip_masks(self) -> None:
        with torch.no_grad():
            for m in self.masks:
                m.clamp_(0.0, 1.0)


def anp_loss(model: nn.Module, pert: NeuronPerturbation, x: torch.Tensor, y: torch.Tensor, cfg: ANPConfig,
             generator: torch.Generator) -> torch.Tensor:
    """Eq. 6 on one batch: inner max over (δ, ξ) by signed-gradient ascent (steps of ε / steps from a random
    start, unprojected, as ``optimize_mask_cifar.py`` l. 181-193), then the α-weighted mask loss."""
    pert.clip_masks()                      # the paper clips m to [0, 1] after every step (= before this one)
    if cfg.eps > 0:
        pert.random_start(generator)
        noise = [*pert.delta, *pert.xi]
        for _ in range(cfg.perturb_steps):
            loss_adv = F.cross_entropy(functional_call(model, pert.overrides(model, True), (x,)), y)
            grads = torch.autograd.grad(loss_adv, noise)
            with torch.no_grad():
                for t, g in zip(noise, grads):
                    t.add_(cfg.eps / cfg.perturb_steps * g.sign())
        for t in noise:
            t.requires_grad_(False)
    loss_nat = F.cross_entropy(functional_call(model, pert.overrides(model, False), (x,)), y)
    if cfg.alpha >= 1:
        return loss_nat
    loss_rob = F.cross_entropy(functional_call(model, pert.overrides(model, cfg.eps > 0), (x,)), y)
    return cfg.alpha * loss_nat + (1 - cfg.alpha) * loss_rob


def learn_masks(model: nn.Module, clean: ImageSet, cfg: ANPConfig, device: torch.device, seed: int,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Optimise Eq. 6 on the clean subset; returns {BN layer path: mask float [C] in [0, 1]}.

    Works on a frozen copy of ``model`` in train mode, as the authors do (BN uses batch statistics); the copy's
    running statistics are discarded, so the model that gets pruned keeps its own.
    """
    work = copy.deepcopy(model).to(device)
    for p in work.parameters():
        p.requires_grad_(False)
    pert = NeuronPerturbation(work, cfg.eps)
    fit(work, clean, cfg.recipe(len(clean)), device=device, seed=seed, params=list(pert.masks),
        loss_fn=lambda mdl, x, y, idx: anp_loss(mdl, pert, x, y, cfg, generator))
    pert.clip_masks()
    return {name: m.detach().clone() for name, m in zip(pert.layers, pert.masks)}


# --- pruning -----------------------------------------------------------------------------------------------------

def prune_order(masks: dict[str, torch.Tensor]) -> list[tuple[str, int, float]]:
    """All neurons as (layer, channel, mask value), smallest mask first (ties: layer order, then channel)."""
    rows = [(name, c, float(v)) for name, m in masks.items() for c, v in enumerate(m.tolist())]
    return sorted(rows, key=lambda r: r[2])


def neurons_to_prune(masks: dict[str, torch.Tensor], prune_by: str, level: float) -> list[tuple[str, int]]:
    """The neurons pruned at one level: mask <= level (threshold, ``prune_neuron_cifar.py`` l. 140), or the
    ``level`` smallest masks (count)."""
    order = prune_order(masks)
    if prune_by == "threshold":
        # The code compares the 4-decimal values of its mask file ('{:.4f}', optimize_mask_cifar.py l. 244).
        return [(n, c) for n, c, v in order if round(v, 4) <= level]
    return [(n, c) for n, c, _ in order[:int(level)]]


def prune(model: nn.Module, neurons: list[tuple[str, int]]) -> nn.Module:
    """A copy of ``model`` with the BN weight of each (layer, channel) set to 0 (m = 0 in m ⊙ w)."""
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for name, c in neurons:
            pruned.get_submodule(name).weight[c] = 0.0
    return pruned.eval()


def accuracy(model: nn.Module, data: ImageSet) -> float:
    return float((predict(model, data.images) == data.labels.cpu()).float().mean()) if len(data) else float("nan")


def candidate_levels(cfg: ANPConfig, n_neurons: int) -> list[float]:
    steps = int(round(cfg.max_level / cfg.level_step))
    fractions = [i * cfg.level_step for i in range(steps + 1)]
    if cfg.prune_by == "threshold":
        return fractions
    return sorted({float(int(round(f * n_neurons))) for f in fractions})


def select_level(model: nn.Module, masks: dict[str, torch.Tensor], val: ImageSet, cfg: ANPConfig,
                 ctx: DefenseContext | None = None) -> tuple[float, dict[float, float]]:
    """Largest level whose clean_val accuracy is within ``val_tolerance`` of the unpruned model's."""
    n = sum(len(m) for m in masks.values())
    base = accuracy(model, val)
    accs, best = {}, 0.0
    for step, level in enumerate(candidate_levels(cfg, n)):
        acc = accuracy(prune(model, neurons_to_prune(masks, cfg.prune_by, level)), val)
        accs[level] = acc
        if ctx is not None and ctx.curves.enabled:
            pruned = prune(model, neurons_to_prune(masks, cfg.prune_by, level))
            ctx.curves.record(step, level=level, val_acc=acc, **ctx.evaluate(pruned))
        if acc >= base - cfg.val_tolerance:
            best = level
    return best, accs


@register_defense("anp", display_name="ANP")
class ANP(Defense):
    """Learn BN-neuron masks under adversarial neuron perturbation (Eq. 6), prune the small ones."""

    Config = ANPConfig
    paradigm = "post_training"
    needs = frozenset({"backdoored_model", "clean_subset"})
    uses_clean_val = True

    def run(self, ctx: DefenseContext) -> DefenseResult:
        cfg = self.cfg
        masks = learn_masks(ctx.model, ctx.clean, cfg, ctx.device, ctx.seed, ctx.generator("anp-perturb"))
        if cfg.select == "clean_val" and ctx.clean_val is not None and len(ctx.clean_val):
            level, _ = select_level(ctx.model, masks, ctx.clean_val, cfg, ctx)
        else:
            level = cfg.threshold if cfg.prune_by == "threshold" else float(cfg.count)
        neurons = neurons_to_prune(masks, cfg.prune_by, level)
        all_masks = torch.cat(list(masks.values()))
        metrics = {"pruned": float(len(neurons)), "neurons": float(len(all_masks)), "level": level,
                   "mask_mean": float(all_masks.mean())}
        return DefenseResult(model=prune(ctx.model, neurons), metrics=metrics)
