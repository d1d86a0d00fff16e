"""MCR — Mode Connectivity Repair (Zhao, Chen, Das, Ramamurthy & Lin, ICLR 2020, "Bridging Mode Connectivity
in Loss Landscapes and Adversarial Robustness").  D-BR (seed 001) Table 2 compares against it with 1 % clean
training data.

§2 / §3.1: connect two end-point models θ0, θ1 by a quadratic Bézier curve (Garipov et al., 2018)

    θ(t) = (1 − t)² θ0 + 2 t (1 − t) θc + t² θ1,   t ∈ [0, 1]                                        (Eq. 2)

and train only the control point θc on the defender's clean ("bonafide") data, minimising the loss averaged
over the path, E_{t ~ U(0, 1)} L(θ(t)) with one t drawn per batch (Eq. 3).  §3.2: along the path the backdoor
fades out while clean accuracy stays high in the middle; the repaired model is θ(t) at a fixed t.

End points (§3.2, "limited bonafide data"): θ0 = the backdoored model, θ1 = a second, separately trained model:
the backdoored model fine-tuned on the same clean subset for the original's budget (IBM/model-sanitization
``backdoor/backdoor-cifar/train_baseline.py``: it loads the backdoored checkpoint, l. 91-94, and trains 100 epochs
at lr 0.015, wd 1e-4, l. 38-47, with the piecewise-linear schedule, l. 96-104).  The control point starts on the
segment, θc = (θ0 + θ1) / 2 (``train.py`` ``init_linear``).  Only parameters lie on the curve; BatchNorm running
statistics are not interpolated but recomputed on the clean subset for the chosen t, as Garipov et al. do for
every point they evaluate.

Epochs are tiled, as in the original: ``data.py`` ``loaders_part_test`` (l. 130-162) repeats the bonafide images
(1 % of 5,000) until they fill a 10,000-sample training set, so an "epoch" is 10,000 samples (~79 batches of 128)
whatever the subset size -- ``epoch_samples``.  (Before: one pass over a 90-image subset per epoch, so the end
point was ~20 steps from the backdoored model and the curve got ~200 steps.)  The original trains without
augmentation (its training set is built from the test split with the test transform, l. 96-100), in fp32,
keeping the last batch.

Curve training as the README's ResNet command (``--epochs=200 --lr=0.03 --wd=3e-4``, PreResNet; WideResNet uses
wd 5e-4, VGG16 600 epochs at 0.015), SGD momentum 0.9, the piecewise-linear schedule (``train.py`` l. 117-125:
lr constant for the first half, linear down to 1 % by 90 %, then 1 %).  Weight decay acts as the original's
curve regulariser, 0.5 · wd · ||θ(t)||² on the sampled point (``curves.py`` ``l2_regularizer``, with the
optimizer's own weight decay 0, ``train.py`` l. 138-143), here over every parameter of the point (the original
sums the weights of its curve layers).

Defaults: t = 0.4 (§3.2, Fig. 2: the CIFAR-10 range t ≈ 0.3-0.4 where the error on triggered data is near its
minimum while clean error is still low; BackdoorBench's MCR port also reads t = 0.4).  Nothing is selected on
test data: a given t is read off, or, with ``t_grid`` set, t is the grid point with the highest accuracy on the
held-out slice of the clean subset (ties: the point nearest the curve's middle).  Clean accuracy cannot see the
backdoor, so the grid should keep away from the end points (the paper's own choice is a fixed t).
``val_acc`` (held-out clean accuracy at the chosen t) is stored with the result.

Measured on NAD's released WRN-16-1 (docs/REPRODUCTION.md, 1 % clean, full CIFAR-10): this recipe leaves the
backdoor whole (71.28 / 100 at t = 0.4), because the second end point stays backdoored -- the end-point recipe
alone, 10 of its 100 epochs, gives 76.96 / 100 (75.32 / 99.27 with crop + flip) -- so the curve joins two
backdoored models.  BackdoorBench's port (``defense/mcr/mcr.py``) fine-tunes the end point with augmentation and
weight decay 5e-4, trains the curve at lr 0.01, reads t = 0.3 and keeps the checkpoint of best test accuracy
(a selection on test data, not copied here).
"""
from __future__ import annotations

import copy
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
from bench.train import fit, predict, recompute_bn


@dataclass(frozen=True)
class MCRConfig(DefenseConfig):
    t: float = 0.4                         # §3.2, Fig. 2 (CIFAR-10)
    t_grid: tuple[float, ...] = ()         # choose t among these on held-out clean data (empty: use t)
    epoch_samples: int = 10_000            # data.py: the clean subset tiled to 10,000 samples per epoch
    curve_epochs: int = 200                # README, ResNet curve: --epochs=200
    lr: float = 0.03                       # README, ResNet curve: --lr=0.03
    weight_decay: float = 3e-4             # README, ResNet curve: --wd=3e-4 (as 0.5 wd ||θ(t)||²)
    endpoint_epochs: int = 100             # train_baseline.py: 100 epochs from the backdoored model ...
    endpoint_lr: float = 0.015             # ... lr 0.015 ...
    endpoint_weight_decay: float = 1e-4    # ... wd 1e-4 (SGD weight decay)
    momentum: float = 0.9
    batch_size: int = 128
    schedule: Literal["piecewise_linear", "cosine", "none"] = "piecewise_linear"   # train.py l. 117-125
    augment: tuple[Literal["crop", "flip"], ...] = ()                # trained with the test transform

    def __post_init__(self):
        if not all(0.0 <= t <= 1.0 for t in (self.t, *self.t_grid)):
            raise ValueError(f"t and t_grid must lie in [0, 1], got {self.t}, {list(self.t_grid)}")

    def curve_recipe(self) -> Recipe:
        """The control point's optimizer: no SGD weight decay (the regulariser is in ``curve_loss``)."""
        return Recipe(optimizer="sgd", lr=self.lr, momentum=self.momentum, weight_decay=0.0,
                      batch_size=self.batch_size, epochs=self.curve_epochs, schedule=self.schedule,
                      augment=self.augment, drop_last=False, amp=False)

    def endpoint_recipe(self) -> Recipe:
        return Recipe(optimizer="sgd", lr=self.endpoint_lr, momentum=self.momentum,
                      weight_decay=self.endpoint_weight_decay, batch_size=self.batch_size,
                      epochs=self.endpoint_epochs, schedule=self.schedule, augment=self.augment, drop_last=False,
                      amp=False)


def tiled(data: ImageSet, n: int) -> ImageSet:
    """The set repeated in order until it holds exactly ``n`` samples (``data.py`` l. 140-152); ``fit`` reshuffles
    it every epoch, so one epoch over it is ``n`` samples whatever ``len(data)``."""
    if not len(data):
        raise ValueError("MCR needs a non-empty clean subset")
    return data.subset(torch.arange(n, device=data.labels.device) % len(data))


# --- the curve -----------------------------------------------------------------------------------------------

def bezier(theta0: torch.Tensor, theta_c: torch.Tensor, theta1: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Eq. 2: the quadratic Bézier point; exactly θ0 at t = 0 and exactly θ1 at t = 1."""
    return (1 - t) ** 2 * theta0 + 2 * t * (1 - t) * theta_c + t ** 2 * theta1


class BezierCurve(nn.Module):
    """The curve's parameters: frozen end points (dicts by parameter name) and the trainable control point."""

    def __init__(self, start: nn.Module, end: nn.Module):
        super().__init__()
        p0, p1 = dict(start.named_parameters()), dict(end.named_parameters())
        self.names = list(p0)
        self.theta0 = {n: p0[n].detach().clone() for n in self.names}
        self.theta1 = {n: p1[n].detach().clone() for n in self.names}
        self.control = nn.ParameterList([nn.Parameter((self.theta0[n] + self.theta1[n]) / 2) for n in self.names])

    def point(self, t: float | torch.Tensor) -> dict[str, torch.Tensor]:
        """{parameter name: θ(t)} (differentiable in the control point)."""
        return {n: bezier(self.theta0[n], c, self.theta1[n], t) for n, c in zip(self.names, self.control)}


def curve_loss(model: nn.Module, curve: BezierCurve, x: torch.Tensor, y: torch.Tensor,
               generator: torch.Generator, weight_decay: float = 0.0) -> torch.Tensor:
    """Eq. 3 on one batch: CE of θ(t) with t ~ U(0, 1) drawn once for the batch, plus the original's curve
    regulariser 0.5 · wd · ||θ(t)||²."""
    t = float(torch.rand((), generator=generator))
    point = curve.point(t)
    loss = F.cross_entropy(functional_call(model, point, (x,)), y)
    if weight_decay:
        loss = loss + 0.5 * weight_decay * sum(p.pow(2).sum() for p in point.values())
    return loss


@torch.no_grad()
def model_at(base: nn.Module, curve: BezierCurve, t: float, clean: ImageSet, batch_size: int,
             device: torch.device) -> nn.Module:
    """A standalone model with θ(t) loaded and BN statistics recomputed on the clean subset."""
    model = copy.deepcopy(base)
    with torch.no_grad():
        point = curve.point(t)
        for name, p in model.named_parameters():
            p.copy_(point[name])
            p.requires_grad_(True)
    return recompute_bn(model, clean, batch_size, device)


def accuracy(model: nn.Module, data: ImageSet) -> float:
    return float((predict(model, data.images) == data.labels.cpu()).float().mean()) if len(data) else float("nan")


@register_defense("mcr", version=2, display_name="MCR")   # v2: recompute_bn over shuffled batches
class MCR(Defense):
    """Fine-tune a second end point, train the Bézier control point on the tiled clean data, read the model at t."""

    Config = MCRConfig
    paradigm = "post_training"
    needs = frozenset({"backdoored_model", "clean_subset"})
    uses_clean_val = True

    def run(self, ctx: DefenseContext) -> DefenseResult:
        cfg = self.cfg
        start = copy.deepcopy(ctx.model)
        data = tiled(ctx.clean.to(ctx.device), cfg.epoch_samples)
        end = fit(copy.deepcopy(ctx.model), data, cfg.endpoint_recipe(), device=ctx.device, seed=ctx.seed)
        curve = BezierCurve(start, end).to(ctx.device)
        work = copy.deepcopy(start)
        for p in work.parameters():
            p.requires_grad_(False)
        gen = ctx.generator("mcr-t")

        def on_epoch(epoch: int, _model: nn.Module) -> None:
            if ctx.curves.enabled:
                probe = model_at(start, curve, cfg.t, ctx.clean, cfg.batch_size, ctx.device)
                ctx.curves.record(epoch, val_acc=accuracy(probe, ctx.clean_val), **ctx.evaluate(probe))

        fit(work, data, cfg.curve_recipe(), device=ctx.device, seed=ctx.seed + 1, params=list(curve.control),
            loss_fn=lambda m, x, y, idx: curve_loss(m, curve, x, y, gen, cfg.weight_decay), on_epoch=on_epoch)
        t, metrics = cfg.t, {}
        if cfg.t_grid:
            if ctx.clean_val is None or not len(ctx.clean_val):
                raise ValueError("mcr t_grid needs a held-out clean slice (clean_val) to choose t on")
            scores = {g: accuracy(model_at(start, curve, g, ctx.clean, cfg.batch_size, ctx.device), ctx.clean_val)
                      for g in cfg.t_grid}
            t = max(scores, key=lambda g: (scores[g], -abs(g - 0.5)))
            metrics.update({f"val_acc_t{g:g}": a for g, a in scores.items()})
        model = model_at(start, curve, t, ctx.clean, cfg.batch_size, ctx.device)
        metrics.update(t=t, epoch_samples=float(len(data)))
        if ctx.clean_val is not None and len(ctx.clean_val):
            metrics["val_acc"] = accuracy(model, ctx.clean_val)
            metrics["val_acc_endpoint"] = accuracy(end, ctx.clean_val)
        return DefenseResult(model=model, metrics=metrics)
