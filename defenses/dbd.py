"""DBD, backdoor defense via decoupling the training process (Huang et al., ICLR 2022).

DBD §3 decouples end-to-end supervised training into three stages, so the poisoned labels never shape the
feature extractor:
    1. §3.2 Self-supervised learning: the backbone f_b and a projection head learn with SimCLR (NT-Xent) on the
       training images *without labels*, so triggered images are not pulled together into the target class.
    2. §3.3 Learning the classifier with the backbone frozen: a linear head on f_b, trained with the symmetric
       cross-entropy (SCE, Wang et al., 2019: α · CE + β · RCE) that is robust to the poisoned labels.  Poisoned
       samples keep a high SCE loss under a frozen, label-free backbone.
    3. §3.4 Semi-supervised fine-tuning: the ε = 50 % samples of lowest SCE loss are high-credible (kept
       labelled), the rest low-credible (labels dropped); the whole model is fine-tuned with MixMatch
       (Berthelot et al., 2019).  The split is recomputed with the current model before every epoch
       (as the authors' mixmatch_finetune.py does; seed 002 §2 describes it as iterative).

Defaults (DBD §4.1 / App. and the authors' SCLBD/DBD code, config/defense/{simclr,mixmatch_finetune}/): SimCLR
with temperature 0.5, SGD lr 0.4, momentum 0.9, wd 1e-4, batch 512, the 100-epoch checkpoint (the run's cosine
spans 1,000 epochs, so lr stays near 0.4 over those 100: schedule "none" here); views RandomResizedCrop(0.2-1)
+ flip + colour jitter (p 0.8) + grayscale (p 0.2) + Gaussian blur (p 0.5, σ 0.1-2; simclr example.yaml
l.14-31), both views of a batch encoded in one forward pass (utils/trainer/simclr.py l.25-34: BatchNorm sees
the 2N views together).  Head warm-up and MixMatch as mixmatch_finetune.py: SCE α 0.1, β 1, 10 epochs, batch
128, crop (pad 4) + flip (example.yaml l.7-14, 30-40); the backbone runs in *train* mode under no_grad
(utils/trainer/simclr.py l.145-160: ``model.train()``, so BatchNorm normalises by batch statistics and updates
its running ones); ONE Adam (lr 0.002) is built once over the whole model and kept through the warm-up and
every MixMatch epoch (mixmatch_finetune.py l.152, 167-203).  MixMatch: 190 epochs of 1,024 iterations, batch
64, K = 2 augmentations, sharpening T 0.5, mixup α 0.75, λ_u 15 ramped up linearly over 190 epochs.
Health check: before the first split, the head's accuracy on the training labels and the share of its most
predicted class are stored (``warmup_train_acc``, ``warmup_top_class_share``): a head that predicts the largest
class - the target class once the poison is added - gives the poisons the lowest SCE and inverts the split.
Deviations: the authors kept the checkpoint of best *test* accuracy, we keep the last; MixMatch forwards the
mixed batch at once instead of interleaving labelled and unlabelled batches for BatchNorm; the blur is a true
Gaussian (PIL approximates it with box blurs); the SimCLR projector is ``ProjectionHead`` (no BatchNorm1d between
its layers, model/model.py l.14-19 has one).
Output: the fine-tuned model (training-time paradigm) with scores = SCE loss and flags = the low-credible set
of the first split (``report_split``; "last" for the final re-split), so the runner stores its precision and
recall.  ``warmup_lr`` (default the one Adam's 0.002) sets the optimiser's lr during the warm-up only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.augment import augment
from bench.contrastive import ProjectionHead, nt_xent, two_view_loss
from bench.data.imageset import ImageSet
from bench.defense import Defense, DefenseConfig, DefenseContext, DefenseResult, top_flags
from bench.recipes import Augment, Recipe
from bench.registry import register_defense
from bench.train import fit, gen_for_device, predict


@dataclass(frozen=True)
class DBDConfig(DefenseConfig):
    # -- §3.2 self-supervised SimCLR extractor ---------------------------------------------------------
    simclr_epochs: int = 100                   # authors' mixmatch config loads the epoch-100 SimCLR checkpoint
    simclr_lr: float = 0.4
    simclr_batch_size: int = 512
    simclr_weight_decay: float = 1e-4
    temperature: float = 0.5                   # NT-Xent τ
    proj_dim: int = 128                        # SimCLR's projection output
    # -- §3.3 linear head on the frozen backbone, SCE ------------------------------------------------------
    sce_alpha: float = 0.1
    sce_beta: float = 1.0
    warmup_epochs: int = 10
    warmup_batch_size: int = 128
    warmup_lr: float = 0.002                   # the authors' one Adam serves both stages (a field for small runs)
    blur_p: float = 0.5                        # SimCLR views: Gaussian blur probability (0 = the SimCLR pipeline)
    # -- §3.4 semi-supervised fine-tuning ------------------------------------------------------------------
    epsilon: float = 0.5                       # high-credible fraction (lowest SCE loss)
    semi_epochs: int = 190
    semi_iterations: int = 1024                # MixMatch iterations per epoch
    semi_batch_size: int = 64
    k_augment: int = 2                         # K: augmentations for label guessing
    sharpen_t: float = 0.5                     # T
    mix_alpha: float = 0.75                    # mixup Beta(α, α)
    lambda_u: float = 15.0                     # unlabelled-loss weight (75 × 200/1024 in the authors' note)
    rampup_epochs: int = 190                   # λ_u ramps up linearly over these epochs
    lr: float = 0.002                          # Adam, head warm-up and MixMatch
    augment: tuple[Augment, ...] = ("crop", "flip")
    # Which split the stored scores/flags describe: "first" = the SCE split of the §3.3 classifier (the metric
    # seed 001 §4.3 compares), "last" = the split before the final MixMatch epoch (after the re-splits drift).
    report_split: Literal["first", "last"] = "first"

    def adam(self, epochs: int, batch_size: int, augment: tuple[str, ...], lr: float | None = None) -> Recipe:
        return Recipe(optimizer="adam", lr=self.lr if lr is None else lr, weight_decay=0.0, batch_size=batch_size, epochs=epochs,
                      schedule="none", augment=augment)


# ---------------------------------------------------------------------------------------------------------
# Losses and MixMatch pieces
# ---------------------------------------------------------------------------------------------------------


def sce_loss(logits: torch.Tensor, y: torch.Tensor, alpha: float, beta: float,
             reduction: str = "mean") -> torch.Tensor:
    """Symmetric cross-entropy (Wang et al., 2019, Eq. 6): α · CE(q, p) + β · RCE, RCE = -Σ_k p_k log q_k with
    the one-hot label q clamped to [1e-4, 1] (so RCE = -log(1e-4) · (1 - p_y)) and p clamped to [1e-7, 1]."""
    ce = F.cross_entropy(logits, y, reduction="none")
    p = F.softmax(logits.float(), dim=1).clamp(min=1e-7, max=1.0)
    q = F.one_hot(y, logits.shape[1]).float().clamp(min=1e-4, max=1.0)
    rce = -(p * q.log()).sum(1)
    loss = alpha * ce + beta * rce
    return loss.mean() if reduction == "mean" else loss


def sharpen(p: torch.Tensor, t: float) -> torch.Tensor:
    """MixMatch Eq. 7: p_i^(1/T) / Σ_j p_j^(1/T)."""
    p = p ** (1.0 / t)
    return p / p.sum(1, keepdim=True)


def mixup(x: torch.Tensor, targets: torch.Tensor, lam: float, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MixMatch Eq. 8-11: λ' = max(λ, 1 - λ), so each mixed sample stays closer to its own (first) input."""
    lam = max(lam, 1.0 - lam)
    return lam * x + (1 - lam) * x[perm], lam * targets + (1 - lam) * targets[perm]


# ---------------------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------------------


class _SimCLRModel(nn.Module):
    def __init__(self, backbone: nn.Module, proj_dim: int):
        super().__init__()
        self.backbone = backbone
        self.head = ProjectionHead(backbone.num_features, proj_dim)


def _simclr_loss(cfg: DBDConfig, gen: torch.Generator):
    """NT-Xent over both views in one forward pass; the blur closes the views' pipeline (as its last op).

    Unscaled (``base_temperature=None``): DBD's ``SimCLRLoss`` (SCLBD/DBD ``model/loss.py``, taken from
    wvangansbeke/Unsupervised-Classification) averages -log p over the positives with no ``τ/0.07`` factor, unlike
    SupContrast's loss that seed 002's cleansing and D-ST use."""
    def encode(model, views):
        views = augment(views, ("gaussian_blur",), gen, params={"gaussian_blur": {"p": cfg.blur_p}})
        return model.head(model.backbone.forward_features(views))
    return two_view_loss(lambda z1, z2, y, idx: nt_xent(z1, z2, cfg.temperature, None), gen, encode=encode,
                         joint=True)


def _frozen_head_loss(cfg: DBDConfig):
    """§3.3: only the linear head learns; the backbone gives no gradients but stays in train mode, as the
    authors' ``poison_linear_train`` (BatchNorm uses and updates batch statistics)."""
    def loss_fn(model, x, y, idx):
        with torch.no_grad():
            f = model.forward_features(x)
        return sce_loss(model.forward_head(f), y, cfg.sce_alpha, cfg.sce_beta)
    return loss_fn


@torch.no_grad()
def head_health(model: nn.Module, data: ImageSet, device: torch.device) -> dict[str, float]:
    """The warm-up head's accuracy on the (poisoned) training labels and the share of its most predicted class."""
    pred = predict(model, data.images, device)
    return {"warmup_train_acc": float((pred == data.labels.cpu()).double().mean()),
            "warmup_top_class_share": float(torch.bincount(pred).max() / len(pred))}


@torch.no_grad()
def sce_per_sample(model: nn.Module, data: ImageSet, cfg: DBDConfig, device: torch.device) -> torch.Tensor:
    """SCE loss of every training sample (float [N], CPU), eval mode, no augmentation: DBD's split criterion."""
    model.eval()
    out = []
    for s in range(0, len(data), 512):
        x = data.images[s:s + 512].to(device).float().div_(255)
        out.append(sce_loss(model(x).float(), data.labels[s:s + 512].to(device), cfg.sce_alpha, cfg.sce_beta,
                            reduction="none").cpu())
    return torch.cat(out)


class _MixMatch:
    """MixMatch's loss for one labelled batch (from ``fit``) plus an unlabelled batch it draws itself."""

    def __init__(self, cfg: DBDConfig, unlabelled: torch.Tensor, num_classes: int, gen: torch.Generator,
                 rng: np.random.Generator, iters_per_epoch: int):
        self.cfg, self.u, self.c, self.gen, self.rng = cfg, unlabelled, num_classes, gen, rng
        self.iters, self.step, self.epoch = iters_per_epoch, 0, 0

    def weight(self) -> float:
        """λ_u · linear ramp-up over ``rampup_epochs`` (counted in fractional epochs)."""
        progress = (self.epoch + self.step / self.iters) / max(self.cfg.rampup_epochs, 1)
        return self.cfg.lambda_u * float(np.clip(progress, 0.0, 1.0))

    def __call__(self, model, x, y, idx):
        cfg, b = self.cfg, len(x)
        pick = torch.randint(len(self.u), (b,), generator=self.gen, device=self.gen.device).to(self.u.device)
        u_views = [augment(self.u[pick], cfg.augment, self.gen) for _ in range(cfg.k_augment)]
        with torch.no_grad():     # label guessing: average over the K views, then sharpen (Eq. 6-7)
            p = torch.stack([F.softmax(model(v).float(), 1) for v in u_views]).mean(0)
            q = sharpen(p, cfg.sharpen_t)
        inputs = torch.cat([x, *u_views])
        targets = torch.cat([F.one_hot(y, self.c).float(), *([q] * cfg.k_augment)])
        perm = torch.randperm(len(inputs), generator=self.gen, device=self.gen.device).to(inputs.device)
        mixed_x, mixed_t = mixup(inputs, targets, float(self.rng.beta(cfg.mix_alpha, cfg.mix_alpha)), perm)
        logits = model(mixed_x).float()
        loss_x = -(mixed_t[:b] * F.log_softmax(logits[:b], 1)).sum(1).mean()           # Eq. 3
        loss_u = ((F.softmax(logits[b:], 1) - mixed_t[b:]) ** 2).mean()                 # Eq. 4 (squared L2)
        self.step += 1
        return loss_x + self.weight() * loss_u


@register_defense("dbd", display_name="DBD")
class DBD(Defense):
    """SimCLR backbone, SCE-trained linear head on it frozen, then MixMatch with the low-credible half unlabelled."""

    Config = DBDConfig
    paradigm = "training_time"
    needs = frozenset({"poisoned_train"})

    def run(self, ctx: DefenseContext) -> DefenseResult:
        cfg, train, device = self.cfg, ctx.train, ctx.device
        gen = gen_for_device(ctx.generator("dbd"), device)

        # §3.2: SimCLR on the images alone (labels unused).
        model = ctx.new_model()
        simclr = Recipe(optimizer="sgd", lr=cfg.simclr_lr, momentum=0.9, weight_decay=cfg.simclr_weight_decay,
                        batch_size=cfg.simclr_batch_size, epochs=cfg.simclr_epochs, schedule="none", augment=())
        fit(_SimCLRModel(model, cfg.proj_dim), train, simclr, device=device, seed=ctx.seed,
            loss_fn=_simclr_loss(cfg, gen))

        # §3.3: the linear head with the backbone frozen, symmetric cross-entropy; one Adam from here to the end.
        adam = torch.optim.Adam(model.parameters(), lr=cfg.warmup_lr)
        fit(model, train, cfg.adam(cfg.warmup_epochs, cfg.warmup_batch_size, cfg.augment), device=device,
            seed=ctx.seed + 1, loss_fn=_frozen_head_loss(cfg), optimizer=adam)
        health = head_health(model, train, device)
        for group in adam.param_groups:
            group["lr"] = cfg.lr

        # §3.4: re-split by SCE loss before each epoch, MixMatch with the low-credible samples unlabelled.
        rng = np.random.default_rng(ctx.seed)
        losses, flags = self._split(model, train, device, ctx)
        reported = (losses, flags)
        for epoch in range(cfg.semi_epochs):
            labelled = train.subset(torch.nonzero(~flags).flatten())
            per_pass = max(len(labelled) // cfg.semi_batch_size, 1)
            mm = _MixMatch(cfg, train.images[flags].to(device), ctx.info.num_classes, gen, rng, cfg.semi_iterations)
            mm.epoch = epoch
            passes = max(1, math.ceil(cfg.semi_iterations / per_pass))
            fit(model, labelled, cfg.adam(passes, cfg.semi_batch_size, cfg.augment), device=device,
                seed=ctx.seed + 2 + epoch, loss_fn=mm, optimizer=adam)
            if ctx.curves.enabled and ctx.evaluate is not None:
                ctx.curves.record(epoch + 1, **ctx.evaluate(model))
            if epoch + 1 < cfg.semi_epochs:
                losses, flags = self._split(model, train, device, ctx)
        if cfg.report_split == "last":
            reported = (losses, flags)
        return DefenseResult(model=model.eval(), scores=reported[0], flags=reported[1], trusted=~reported[1],
                             metrics={"low_credible": float(reported[1].sum()), **health})

    def _split(self, model: nn.Module, train: ImageSet, device: torch.device,
               ctx: DefenseContext) -> tuple[torch.Tensor, torch.Tensor]:
        """SCE losses and flags (True = low-credible: outside the ε lowest-loss fraction)."""
        losses = sce_per_sample(model, train, self.cfg, device)
        n_high = int(round(self.cfg.epsilon * len(losses)))
        return losses, ~top_flags(losses, n_high, largest=False, generator=ctx.generator("dbd.ties"))
