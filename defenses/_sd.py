"""Sample distinguishment (SD) of D-BR / D-ST (seed 001 §3.2, App. A.1 Algorithm 1), shared by both methods.

1. SD model: a fresh model of the cell's architecture trained briefly on the poisoned set *without*
   augmentation (2 epochs, SGD lr 0.01, momentum 0.9, wd 5e-4, batch 128, CosineAnnealingLR T_max 100 --
   the authors' ``train_attack_noTrans.py``), then fine-tuned 10 epochs with the intra-class loss
   (``finetune_attack_noTrans.py`` l. 39-54: cosine similarities of the L2-normalised centres of the classes
   present in a batch, diagonal zeroed, averaged over all k^2 entries -- so (k - 1)/k of the off-diagonal mean,
   ~11 % smaller at k = 9 present classes; no cross-entropy), continuing the same optimizer and schedule (the
   authors reload both).
2. FCT, Eq. 1: Delta_trans(x) = ||f(x) - f(tau(x))||^2, averaged over the feature dimensions
   (``calculate_consistency.py`` l. 30-36), with tau = RandomRotation(180) then RandomAffine(translate=(0.2, 0.2))
   (§4.1); App. E's flip / crop / blur / erase are selectable.  FCT is an *unnormalised* squared distance: the
   L_intra fine-tune is what separates poisoned from clean samples; with too little of it (few epochs, a weak
   backdoor) the score mostly ranks images by the norm of their features.
3. Split: bottom alpha_c = 20 % -> D_c (clean), top alpha_p = 5 % -> D_p (poisoned), the rest D_u (§4.1).
   Sizes are exact here (floor(N alpha)).  Deviation: the authors compute the thresholds gamma_c, gamma_p as the
   order statistics of one FCT draw (``calculate_gamma.py`` l. 18-23) and then split by *re-drawing* tau for
   every sample (``separate_samples.py``), so their split sizes only approximate alpha_c, alpha_p; one draw
   here keeps the sizes exact and the split reproducible.
Normalisation: every zoo model normalises inside ``forward`` with its dataset's statistics; the authors'
``utils/utils.py`` ``normalization`` uses CIFAR-10 (0.4914, 0.4822, 0.4465) / (0.2023, 0.1994, 0.2010), CIFAR-100
(0.5071, 0.4865, 0.4409) / (0.2673, 0.2564, 0.2762) and Tiny-ImageNet's statistics for their ImageNet subset.  A
per-channel affine difference of the input (absorbed by the first BatchNorm); stated, not reproduced.

Fig. 4 replaces FCT by other metrics, kept small and computed on the same SD model: ``spectral`` (Tran et al.:
per labelled class, squared projection of the centred features on their top singular vector), ``dbd_sce``
(DBD's symmetric cross-entropy, alpha 0.1, beta 1, log 0 clipped at -4), ``abl_lga`` (ABL: a fresh model trained
with the local-gradient-ascent loss sign(L - gamma) L, gamma 0.5; the score is minus the per-sample loss, since
ABL isolates the *lowest*-loss samples).  Every score is oriented so that higher = more likely poisoned.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bench.augment import augment
from bench.data.imageset import ImageSet
from bench.defense import DefenseConfig, seeded_order
from bench.train import batch_indices, gen_for_device

Transform = Literal["rotate_affine", "rotate", "translate", "flip", "crop", "blur", "erase"]
Metric = Literal["fct", "spectral", "dbd_sce", "abl_lga"]


@dataclass(frozen=True)
class SDConfig(DefenseConfig):
    """The SD module's fields; D-BR's and D-ST's configs inherit them (so a sweep sets them flat)."""

    alpha_c: float = 0.20                   # §4.1: bottom 20 % of FCT -> D_c
    alpha_p: float = 0.05                   # §4.1: top 5 % -> D_p
    sd_metric: Metric = "fct"               # Fig. 4 replaces FCT by spectral / dbd_sce / abl_lga
    sd_transform: Transform = "rotate_affine"   # §4.1 "rotate+affine"; App. E: flip, crop, blur, erase
    sd_train_epochs: int = 2                # README: train_attack_noTrans.py --epochs 2
    sd_finetune_epochs: int = 10            # README: finetune_attack_noTrans.py, checkpoint 9.tar
    sd_lr: float = 0.01                     # utils/args.py
    sd_momentum: float = 0.9
    sd_weight_decay: float = 5e-4
    sd_batch_size: int = 128
    sd_cosine_tmax: int = 100               # CosineAnnealingLR(T_max=100) whatever the (12) epochs, as the code
    abl_epochs: int = 10                    # ABL's tuning_epochs (only for sd_metric abl_lga)
    abl_lr: float = 0.1                     # ABL: SGD lr 0.1, momentum 0.9, wd 1e-4
    abl_gamma: float = 0.5                  # ABL's LGA threshold


@dataclass
class Split:
    """The SD module's output over the N training samples (indices are int64, into the training set)."""

    scores: torch.Tensor                    # float [N], higher = more suspicious
    clean: torch.Tensor                     # D_c
    poisoned: torch.Tensor                  # D_p
    uncertain: torch.Tensor                 # D_u

    def flags(self) -> torch.Tensor:
        """bool [N]: True for D_p membership (what the runner scores as the flagged set)."""
        out = torch.zeros(len(self.scores), dtype=torch.bool)
        out[self.poisoned] = True
        return out

    def trusted(self) -> torch.Tensor:
        """bool [N]: True for D_c membership (the set relearned / trained with labels)."""
        out = torch.zeros(len(self.scores), dtype=torch.bool)
        out[self.clean] = True
        return out

    def metrics(self) -> dict[str, float]:
        return {"sd_n_clean": float(len(self.clean)), "sd_n_poisoned": float(len(self.poisoned)),
                "sd_n_uncertain": float(len(self.uncertain))}


# ---------------------------------------------------------------------------------------------------------
# Training the SD model (one optimizer and one schedule across both stages, as the authors' checkpoints do).
# ---------------------------------------------------------------------------------------------------------

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def run_epoch(model: nn.Module, data: ImageSet, opt: torch.optim.Optimizer, loss_fn: LossFn, batch_size: int,
              gen: torch.Generator, ops: tuple[str, ...] = (), params: dict | None = None,
              drop_last: bool = False) -> float:
    """One pass over ``data`` (on the model's device) minimising ``loss_fn(model, x01, y)``; returns the mean loss.

    For methods whose structure alternates objectives or data between epochs under one optimizer (the SD
    model's two stages, D-BR's unlearn/relearn rounds), which ``bench.train.fit`` (one optimizer per call) can't.
    """
    model.train()
    total, count = 0.0, 0
    for idx in batch_indices(len(data), batch_size, gen, data.images.device, drop_last=drop_last):
        x = augment(data.images[idx], ops, gen_for_device(gen, data.images.device), params=params)
        loss = loss_fn(model, x, data.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total, count = total + float(loss.detach()) * len(idx), count + len(idx)
    return total / max(count, 1)


def ce_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def intra_class_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L_intra of ``finetune_attack_noTrans.py`` l. 39-54: the cosine similarities of the batch's per-class feature
    centres (each centre L2-normalised, classes present in the batch), diagonal zeroed, mean over all k^2
    entries; pushing class centres apart.  Zero if one class is present."""
    f = model.forward_features(x)
    classes, inv = torch.unique(y, return_inverse=True)
    k = len(classes)
    if k < 2:
        return f.sum() * 0.0
    sums = torch.zeros(k, f.shape[1], device=f.device, dtype=f.dtype).index_add_(0, inv, f)
    centres = F.normalize(sums / torch.bincount(inv, minlength=k).unsqueeze(1).to(f.dtype), dim=1)
    sim = centres @ centres.t()
    return (sim.sum() - sim.diagonal().sum()) / (k * k)


def train_sd_model(model: nn.Module, data: ImageSet, cfg: SDConfig, gen: torch.Generator) -> nn.Module:
    """Step 1 of the SD pipeline: ``sd_train_epochs`` of CE, then ``sd_finetune_epochs`` of L_intra, no
    augmentation, SGD with CosineAnnealingLR(T_max=sd_cosine_tmax) stepped per epoch over both stages."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.sd_lr, momentum=cfg.sd_momentum,
                          weight_decay=cfg.sd_weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.sd_cosine_tmax, 1))
    for epoch in range(cfg.sd_train_epochs + cfg.sd_finetune_epochs):
        loss_fn = ce_loss if epoch < cfg.sd_train_epochs else intra_class_loss
        run_epoch(model, data, opt, loss_fn, cfg.sd_batch_size, gen)
        sched.step()
    return model.eval()


# ---------------------------------------------------------------------------------------------------------
# Transformations tau (App. E) and the FCT score (Eq. 1).
# ---------------------------------------------------------------------------------------------------------


def gaussian_blur(x: torch.Tensor, gen: torch.Generator, kernel: int = 15,
                  sigma: tuple[float, float] = (0.1, 2.0)) -> torch.Tensor:
    """GaussianBlur(kernel 15, sigma U(0.1, 2.0) per image), separable, reflect padding, batched."""
    n, c, h, w = x.shape
    s = sigma[0] + (sigma[1] - sigma[0]) * torch.rand(n, generator=gen).to(x.device)
    r = torch.arange(kernel, device=x.device, dtype=x.dtype) - (kernel - 1) / 2
    k = torch.exp(-(r[None] ** 2) / (2 * s[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)           # [N*C, K], one kernel per image
    pad = kernel // 2
    mode = "reflect" if min(h, w) > pad else "replicate"
    y = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode=mode)
    y = F.conv2d(y, k.view(n * c, 1, 1, kernel), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, kernel, 1), groups=n * c)
    return y.view(n, c, h, w)


def random_erase(x: torch.Tensor, gen: torch.Generator, scale: tuple[float, float] = (0.2, 0.3),
                 ratio: tuple[float, float] = (0.5, 1.0)) -> torch.Tensor:
    """RandomErasing(p=1, scale, ratio, value='random'): one box per image filled with N(0, 1) noise.

    As torchvision, up to 10 (area, aspect) draws; the first box that fits is erased, else the image is kept.
    """
    n, c, h, w = x.shape
    dev, tries = x.device, 10
    area = h * w * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, tries, generator=gen))
    aspect = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0]))
                       * torch.rand(n, tries, generator=gen))
    eh, ew = torch.round(torch.sqrt(area * aspect)), torch.round(torch.sqrt(area / aspect))
    fits = (eh < h) & (ew < w)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)
    eh, ew, found = eh.gather(1, first)[:, 0], ew.gather(1, first)[:, 0], fits.any(1)
    top = torch.floor(torch.rand(n, generator=gen) * (h - eh + 1))
    left = torch.floor(torch.rand(n, generator=gen) * (w - ew + 1))
    rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    box = ((rows >= top.view(-1, 1, 1)) & (rows < (top + eh).view(-1, 1, 1))
           & (cols >= left.view(-1, 1, 1)) & (cols < (left + ew).view(-1, 1, 1)) & found.view(-1, 1, 1))
    noise = torch.randn(x.shape, generator=gen).to(dev, x.dtype)
    return torch.where(box.unsqueeze(1).to(dev), noise, x)


def transform(x_u8: torch.Tensor, name: Transform, gen: torch.Generator) -> torch.Tensor:
    """tau of ``calculate_consistency.py`` on uint8 [N, C, H, W]; returns float [0, 1] (erase: unclamped noise)."""
    if name == "rotate_affine":
        return augment(x_u8, ("rotate", "translate"), gen)
    if name == "flip":
        return augment(x_u8, ("flip",), gen, params={"flip": {"p": 1.0}})
    if name in ("rotate", "translate", "crop"):
        return augment(x_u8, (name,), gen)
    x = x_u8.float().div(255)
    return gaussian_blur(x, gen) if name == "blur" else random_erase(x, gen)


@torch.no_grad()
def fct_scores(model: nn.Module, images_u8: torch.Tensor, tau: Transform, gen: torch.Generator,
               batch_size: int = 512) -> torch.Tensor:
    """Eq. 1: mean over feature dimensions of (f(x) - f(tau(x)))^2, float [N] on CPU (model in eval mode)."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    for s in range(0, len(images_u8), batch_size):
        x_u8 = images_u8[s:s + batch_size].cpu()
        f0 = model.forward_features(x_u8.to(device).float().div(255))
        f1 = model.forward_features(transform(x_u8, tau, gen).to(device))
        out.append((f0 - f1).pow(2).mean(1).float().cpu())
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------------------
# Fig. 4's alternative metrics (small versions on the same SD model).
# ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def _features_logits(model: nn.Module, images_u8: torch.Tensor, batch_size: int = 512):
    device = next(model.parameters()).device
    model.eval()
    feats, logits = [], []
    for s in range(0, len(images_u8), batch_size):
        f = model.forward_features(images_u8[s:s + batch_size].to(device).float().div(255))
        feats.append(f.float().cpu())
        logits.append(model.forward_head(f).float().cpu())
    return torch.cat(feats), torch.cat(logits)


def spectral_scores(feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Spectral signatures: per labelled class, (<f - mean, v>)^2 with v the top right singular vector."""
    out = torch.zeros(len(labels))
    for c in labels.unique():
        m = labels == c
        centred = feats[m] - feats[m].mean(0)
        v = torch.linalg.svd(centred, full_matrices=False).Vh[0]
        out[m] = (centred @ v) ** 2
    return out


def sce_scores(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.1, beta: float = 1.0,
               log_floor: float = -4.0) -> torch.Tensor:
    """DBD's symmetric cross-entropy per sample: alpha CE + beta RCE, RCE = -log_floor (1 - p_y)."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    p_y = logits.softmax(1).gather(1, labels[:, None])[:, 0]
    return alpha * ce + beta * (-log_floor) * (1 - p_y)


def abl_lga_scores(model: nn.Module, data: ImageSet, cfg: SDConfig, gen: torch.Generator) -> torch.Tensor:
    """ABL's isolation: train with sign(L - gamma) L (batch 128, no augmentation), score = -per-sample CE."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.abl_lr, momentum=0.9, weight_decay=1e-4)

    def lga(m, x, y):
        loss = F.cross_entropy(m(x), y)
        return torch.sign(loss - cfg.abl_gamma) * loss

    for _ in range(cfg.abl_epochs):
        run_epoch(model, data, opt, lga, cfg.sd_batch_size, gen)
    _, logits = _features_logits(model, data.images)
    return -F.cross_entropy(logits, data.labels.cpu(), reduction="none")


# ---------------------------------------------------------------------------------------------------------
# The module: train, score, split.
# ---------------------------------------------------------------------------------------------------------


def split_by_score(scores: torch.Tensor, alpha_c: float, alpha_p: float,
                   generator: torch.Generator | None = None) -> Split:
    """Bottom floor(N alpha_c) scores -> D_c, top floor(N alpha_p) -> D_p, the rest -> D_u (disjoint).

    Equal scores are ordered by a permutation from ``generator`` (the defense's seeded stream), not by index:
    the training set is stored in class order, and index order filled D_c class by class (issue 17).
    """
    n = len(scores)
    n_c, n_p = int(math.floor(n * alpha_c)), int(math.floor(n * alpha_p))
    if n_c + n_p > n:
        raise ValueError(f"alpha_c + alpha_p = {alpha_c + alpha_p} > 1")
    order = seeded_order(scores, generator=generator)
    return Split(scores, order[:n_c].sort().values, order[n - n_p:].sort().values,
                 order[n_c:n - n_p].sort().values)


def distinguish(train: ImageSet, new_model: Callable[[], nn.Module], cfg: SDConfig, device: torch.device,
                gen: torch.Generator) -> Split:
    """The SD module (Algorithm 1): SD model on ``train``, per-sample metric, split by alpha_c / alpha_p."""
    data = train.to(device)
    if cfg.sd_metric == "abl_lga":
        scores = abl_lga_scores(new_model().to(device), data, cfg, gen)
    else:
        model = train_sd_model(new_model().to(device), data, cfg, gen)
        if cfg.sd_metric == "fct":
            scores = fct_scores(model, data.images, cfg.sd_transform, gen)
        else:
            feats, logits = _features_logits(model, data.images)
            labels = data.labels.cpu()
            scores = spectral_scores(feats, labels) if cfg.sd_metric == "spectral" else sce_scores(logits, labels)
    return split_by_score(scores.float().cpu(), cfg.alpha_c, cfg.alpha_p, gen)
