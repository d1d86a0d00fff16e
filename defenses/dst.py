"""D-ST, Distinguishment and Secure Training from scratch (seed 001 §3.3, App. A.2 Algorithm 3).

SD module (§3.2, ``defenses/_sd.py``): D_c / D_p / D_u by FCT.  Then the two-stage ST module:
    Stage 1, SS-CTL (Eq. 2): the extractor f = the cell's model's ``forward_features`` with a projection head
        (MLP dim -> dim -> 128, L2-normalised), trained on two SimCLR views of every sample with the SimCLR loss
        for D_p u D_u anchors (their only positive is their other view) and SupCon for pairs inside D_c
        (``bench.contrastive.supcon`` with label -1 outside D_c).  README run of ``ST/train_extractor.py``:
        200 epochs, lr 0.5, temperature 0.1, cosine, batch 512, SGD momentum 0.9, wd 1e-4.
    Stage 2, mixed CE (Eq. 3): frozen encoder (eval mode), linear head, on D_c u D_p:
        CE on a batch's D_c samples - lambda_p CE on its D_p samples, lambda_p = 0.001 (§4.3, Fig. 6 sweeps
        0, 1e-3, 1e-2, 1e-1, 1).  ``ST/train_classifier.py``: 10 epochs, lr 5, batch 512, momentum 0.9, wd 0,
        constant lr (its decay epochs 60/75/90 lie past 10), the SimCLR augmentation.
Ablations: ``extractor`` ctl | s_ctl | ss_ctl (Table 3, classifier always Eq. 3); ``mode`` baseline1 (SimCLR
extractor + a classifier trained with CE on the whole poisoned set) and baseline2 (SupCon extractor on all labels,
same classifier) of Table 1; the baselines run no SD module.

Extractor network: SupContrast's ``SupConResNet`` ResNet-18 (``ST/networks/resnet_big.py``: 3x3 stride-1 stem,
no max-pool) -- sweeps/dbr_table1.yaml and dbr_table3.yaml give D-ST cells ``{name: resnet18, stem: cifar}``.  The
extractor is the cell's model, so the SD model is that network too, where the authors' SD model is their
``models/resnet_cifar10.py`` ResNet-18 (with max-pool): a deviation, kept because the SD model only scores
samples and one cell has one architecture.
Loss and schedule as SupContrast's code (README: "parameters are set as the same in Supervised Contrastive
Learning"): the loss is scaled by tau / 0.07 (``bench.contrastive``), both views go through the network in one
batch (``train_extractor.py`` l. 285-298), cosine from 0.5 to eta_min = 0.5 * 0.1^3 (``util.py``
``adjust_learning_rate``) after a 10-epoch per-iteration warm-up from 0.01 (on because batch 512 > 256,
``train_extractor.py`` l. 179-190); the last partial batch is kept (their DataLoader has no drop_last).
Deviations: the authors' SS-CTL code lets a D_c anchor take every same-label sample of the batch as a positive
(whatever its split; ``ST/losses.py`` l. 137-140 only clears the rows of non-clean anchors); we follow Eq. 2
(pairs inside D_c).  Baseline1's classifier is a linear head on the frozen extractor (the paper does not say
whether the extractor is fine-tuned).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bench.augment import SIMCLR
from bench.contrastive import ProjectionHead, supcon, two_view_loss
from bench.data.imageset import ImageSet
from bench.defense import Defense, DefenseContext, DefenseResult
from bench.recipes import Recipe
from bench.registry import register_defense
from bench.train import fit, gen_for_device
from defenses._sd import SDConfig, distinguish


@dataclass(frozen=True)
class DSTConfig(SDConfig):
    mode: Literal["dst", "baseline1", "baseline2"] = "dst"        # Table 1 (baselines skip the SD module)
    extractor: Literal["ss_ctl", "ctl", "s_ctl"] = "ss_ctl"       # Table 3 (mode dst only)
    ctl_epochs: int = 200                   # README: train_extractor.py --epochs 200
    ctl_lr: float = 0.5                     # README --learning_rate 0.5, --cosine
    ctl_temperature: float = 0.1            # README --temp 0.1
    ctl_batch_size: int = 512               # README --batch_size 512
    ctl_momentum: float = 0.9
    ctl_weight_decay: float = 1e-4          # SupContrast default
    ctl_warmup_epochs: int = 10             # SupContrast: warm-up for batch > 256, 10 epochs from lr 0.01
    ctl_warmup_from: float = 0.01
    ctl_eta_min: float = 1e-3               # SupContrast cosine floor: lr * lr_decay_rate ** 3
    proj_dim: int = 128                     # SupConResNet head: dim_in -> dim_in -> 128
    cls_epochs: int = 10                    # README: train_classifier.py --epochs 10
    cls_lr: float = 5.0                     # README --learning_rate 5
    cls_batch_size: int = 512
    cls_momentum: float = 0.9
    cls_weight_decay: float = 0.0           # train_classifier.py default
    lambda_p: float = 0.001                 # Eq. 3; hard-coded 0.001 in train_classifier.py; Fig. 6 sweeps it

    def ctl_recipe(self) -> Recipe:
        # augment=(): the loss draws the two SimCLR views itself from the un-augmented batch.
        return Recipe(optimizer="sgd", lr=self.ctl_lr, momentum=self.ctl_momentum,
                      weight_decay=self.ctl_weight_decay, batch_size=self.ctl_batch_size, epochs=self.ctl_epochs,
                      schedule="cosine", eta_min=self.ctl_eta_min, warmup_epochs=self.ctl_warmup_epochs,
                      warmup_from=self.ctl_warmup_from, augment=(), drop_last=False, amp=False)

    def cls_recipe(self) -> Recipe:
        return Recipe(optimizer="sgd", lr=self.cls_lr, momentum=self.cls_momentum,
                      weight_decay=self.cls_weight_decay, batch_size=self.cls_batch_size, epochs=self.cls_epochs,
                      schedule="none", augment=SIMCLR, drop_last=False, amp=False)


# ---------------------------------------------------------------------------------------------------------
# Stage 1: contrastive extractor (Eq. 2 and its Table 3 / Table 1 variants).
# ---------------------------------------------------------------------------------------------------------


class _Contrastive(nn.Module):
    """The cell's model as encoder (``forward_features``) plus the projection head."""

    def __init__(self, encoder: nn.Module, proj_dim: int):
        super().__init__()
        self.encoder = encoder
        self.head = ProjectionHead(encoder.num_features, proj_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.forward_features(x))


def contrastive_labels(labels: torch.Tensor, clean: torch.Tensor | None, extractor: str) -> torch.Tensor | None:
    """Per-sample SupCon labels: ctl -> None (SimCLR), s_ctl -> every label, ss_ctl -> label on D_c, -1 elsewhere."""
    if extractor == "ctl":
        return None
    if extractor == "s_ctl":
        return labels
    out = torch.full_like(labels, -1)
    out[clean] = labels[clean]
    return out


def train_extractor(model: nn.Module, train: ImageSet, labels: torch.Tensor | None, cfg: DSTConfig,
                    device: torch.device, seed: int, gen: torch.Generator) -> nn.Module:
    """Stage 1: minimise supcon(z(view1), z(view2); labels) over the training set; returns the encoder."""
    net = _Contrastive(model, cfg.proj_dim)
    labels = labels.to(device) if labels is not None else None

    loss_fn = two_view_loss(lambda z1, z2, y, idx: supcon(z1, z2, None if labels is None else labels[idx],
                                                          cfg.ctl_temperature),
                            gen_for_device(gen, device), joint=True)
    fit(net, train, cfg.ctl_recipe(), device=device, seed=seed, loss_fn=loss_fn)
    return net.encoder


# ---------------------------------------------------------------------------------------------------------
# Stage 2: linear head on the frozen encoder, mixed cross-entropy (Eq. 3).
# ---------------------------------------------------------------------------------------------------------


class _LinearProbe(nn.Module):
    """Trains only ``model.fc`` on detached features; the encoder stays in eval mode (BN statistics frozen)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def train(self, mode: bool = True) -> "_LinearProbe":
        super().train(mode)
        self.model.eval()
        self.model.fc.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            f = self.model.forward_features(x)
        return self.model.fc(f.detach())


def mixed_ce(logits: torch.Tensor, y: torch.Tensor, in_clean: torch.Tensor, in_poison: torch.Tensor,
             lambda_p: float) -> torch.Tensor:
    """Eq. 3 on a batch: CE over its D_c samples - lambda_p CE over its D_p samples (an absent part counts 0)."""
    loss = logits.sum() * 0.0
    if in_clean.any():
        loss = loss + F.cross_entropy(logits[in_clean], y[in_clean])
    if lambda_p and in_poison.any():
        loss = loss - lambda_p * F.cross_entropy(logits[in_poison], y[in_poison])
    return loss


def train_classifier(model: nn.Module, data: ImageSet, is_poison: torch.Tensor | None, cfg: DSTConfig,
                     device: torch.device, seed: int) -> nn.Module:
    """Stage 2: a fresh linear head on the frozen encoder; ``is_poison`` [len(data)] marks D_p (None: plain CE)."""
    model.fc.reset_parameters()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.fc.parameters():
        p.requires_grad_(True)
    flag = is_poison.to(device) if is_poison is not None else None

    def loss_fn(m, x, y, idx):
        logits = m(x)
        if flag is None:
            return F.cross_entropy(logits, y)
        return mixed_ce(logits, y, ~flag[idx], flag[idx], cfg.lambda_p)

    fit(_LinearProbe(model), data, cfg.cls_recipe(), device=device, seed=seed, loss_fn=loss_fn,
        params=model.fc.parameters())
    for p in model.parameters():
        p.requires_grad_(True)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------
# The method.
# ---------------------------------------------------------------------------------------------------------


@register_defense("dst", display_name="D-ST")
class DST(Defense):
    """SD module, then SS-CTL extractor (Eq. 2) and a linear head trained with the mixed CE (Eq. 3)."""

    Config = DSTConfig
    paradigm = "training_time"
    needs = frozenset({"poisoned_train"})

    def run(self, ctx: DefenseContext) -> DefenseResult:
        cfg: DSTConfig = self.cfg
        train = ctx.train
        if cfg.mode != "dst":                   # Table 1 baselines: no SD, classifier on the whole poisoned set
            extractor = "ctl" if cfg.mode == "baseline1" else "s_ctl"
            model = train_extractor(ctx.new_model(), train, contrastive_labels(train.labels, None, extractor),
                                    cfg, ctx.device, ctx.seed, ctx.generator("ctl"))
            return DefenseResult(model=train_classifier(model, train, None, cfg, ctx.device, ctx.seed))
        split = distinguish(train, ctx.new_model, cfg, ctx.device, ctx.generator("sd"))
        labels = contrastive_labels(train.labels, split.clean, cfg.extractor)
        model = train_extractor(ctx.new_model(), train, labels, cfg, ctx.device, ctx.seed, ctx.generator("ctl"))
        keep = torch.cat([split.clean, split.poisoned])          # D_u is unused in stage 2
        is_poison = torch.cat([torch.zeros(len(split.clean), dtype=torch.bool),
                               torch.ones(len(split.poisoned), dtype=torch.bool)])
        model = train_classifier(model, train.subset(keep), is_poison, cfg, ctx.device, ctx.seed)
        return DefenseResult(model=model, scores=split.scores, flags=split.flags(), trusted=split.trusted(),
                             metrics=split.metrics())
