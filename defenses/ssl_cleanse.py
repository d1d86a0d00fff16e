"""Training-set cleansing by self-supervised representation learning (Wang et al., seed 002).

§3.2: learn an embedding z = L(E(x)) of the poisoned training set with SimCLR, without labels (Eq. 5).
§3.3: filter in that space: a sample is accepted when the class decided by its neighbours agrees with its label,
      either by kNN (plurality vote of k neighbours, k = half the per-class count) or by the class "energy"
      score (Eq. 6, decision argmax_c S_c).  App. G: kNN AND Energy (accept only when both accept).
§3.4 / Alg. 1: relabel a rejected sample to its decided class when its decision confidence exceeds T, the
      lambda-th (80th) percentile of the accepted samples' confidences (kNN: fraction of the k votes for the
      decided class; Energy: max_c S_c).
Alg. 1 l.16: train the final classifier on the cleansed set with SupCon (Khosla et al., 2020), then a linear
      head with CE on the frozen encoder; ``classifier: ce`` leaves training to the runner (the cell's recipe).
Table 3 ablations: ``encoder: autoencoder`` (a small conv AE replaces SimCLR), ``filtering`` and
      ``relabelling`` switches.
Health check: the embedding z is returned (``DefenseResult.embedding``); the runner stores its kNN accuracy on
      the *true* labels with the same k (``encoder_knn_acc``), so a filter that failed because the encoder did
      not learn is told apart from one that failed on the poison.  The runner also stores the per-class kept
      rates and how many relabelled samples were poison and got their source class back (bench/metrics.py).

The paper uses ResNet-18 for the encoder and the classifier (§4); here both are the cell's model
(``ctx.new_model()``), so a ResNet-18 cell is the paper's setting.  The paper states the SimCLR epochs (1000,
§4; 100 for MNIST, App. D) but not lr, temperature, batch or the projector width; those defaults are the
SupContrast repository's (HobbitLong/SupContrast README: SimCLR batch 1024, lr 0.5, temperature 0.5, cosine;
SupCon batch 1024, lr 0.5, temperature 0.1; linear stage batch 512, lr 5; SGD momentum 0.9, wd 1e-4, 128-d
features), the code the paper's SupCon reference [20] ships, with its cosine schedule and 10-epoch lr warm-up
(``SSLCleanseConfig.sgd``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from bench.contrastive import ProjectionHead, nt_xent, supcon, two_view_loss
from bench.data.imageset import ImageSet
from bench.defense import Defense, DefenseConfig, DefenseContext, DefenseResult
from bench.metrics import knn_votes
from bench.recipes import Recipe
from bench.registry import register_defense
from bench.train import fit, gen_for_device

# ------------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class SSLCleanseConfig(DefenseConfig):
    filter: Literal["knn", "energy", "knn_energy"] = "knn"   # §3.3; knn_energy = App. G
    k: int = 0                        # §3.3: 0 = half the number of images per class (N / C / 2)
    energy_tau: float = 0.5           # Eq. 6's tau; the paper reuses Eq. 5's symbol, so the SimCLR temperature
    relabel_percentile: float = 80.0  # Alg. 1 l.2/l.12: lambda = 80
    encoder: Literal["simclr", "autoencoder"] = "simclr"      # Table 3 ablation
    filtering: bool = True            # Table 3 ablation ("SimCLR + relabeling" keeps every sample)
    relabelling: bool = True          # Table 3 ablation ("SimCLR + filtering")
    # SimCLR stage (Eq. 5): 1000 epochs (§4); the rest from SupContrast's README (see module docstring).
    simclr_epochs: int = 1000
    simclr_lr: float = 0.5
    simclr_batch_size: int = 1024
    simclr_temperature: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 1e-4
    proj_dim: int = 128               # Eq. 5's linear projector L(.) output width (SupContrast feat_dim)
    # Auto-encoder ablation (Table 3): not described in the paper; Adam 1e-3, 128-d code, chosen here.
    ae_epochs: int = 100
    ae_lr: float = 1e-3
    ae_batch_size: int = 128
    # Final classifier (Alg. 1 l.16): SupCon then a linear head (SupContrast README values).
    classifier: Literal["supcon", "ce"] = "supcon"
    supcon_epochs: int = 1000
    supcon_lr: float = 0.5
    supcon_batch_size: int = 1024
    supcon_temperature: float = 0.1
    linear_epochs: int = 100
    linear_lr: float = 5.0
    linear_batch_size: int = 512

    def sgd(self, lr: float, batch: int, epochs: int, augment: tuple = (), wd: float | None = None) -> Recipe:
        """SupContrast's schedule (``main_supcon.py`` / ``main_linear.py`` option parsing, ``util.py``
        ``adjust_learning_rate`` / ``warmup_learning_rate``): cosine down to lr * 0.1^3, and for batches over 256 a
        per-iteration warm-up from 0.01 over the first 10 epochs (capped at a quarter of a shortened stage)."""
        warmup = min(10, epochs // 4) if batch > 256 else 0
        return Recipe(optimizer="sgd", lr=lr, momentum=self.momentum,
                      weight_decay=self.weight_decay if wd is None else wd, batch_size=batch, epochs=epochs,
                      schedule="cosine", eta_min=1e-3, warmup_epochs=warmup, warmup_from=0.01, augment=augment)


# ------------------------------------------------------------------------------------------------ encoders


class _Embedder(nn.Module):
    """z = head(E(x)), L2-normalised: the backbone's penultimate features through a projector.  SimCLR's L(.)
    is linear (Eq. 5); SupCon's head is SupContrast's MLP."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.backbone.forward_features(x)), dim=1)


class _AutoEncoder(nn.Module):
    """Table 3's "AE" encoder: two stride-2 convolutions to a 128-d code and back (image side divisible by 4)."""

    def __init__(self, channels: int, size: int, code: int = 128):
        super().__init__()
        s = size // 4
        self.enc = nn.Sequential(nn.Conv2d(channels, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                                 nn.Flatten(), nn.Linear(64 * s * s, code))
        self.dec = nn.Sequential(nn.Linear(code, 64 * s * s), nn.ReLU(), nn.Unflatten(1, (64, s, s)),
                                 nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),
                                 nn.ConvTranspose2d(32, channels, 4, 2, 1), nn.Sigmoid())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.enc(x), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(self.enc(x))


def _views_loss(loss, gen: torch.Generator):
    """A ``fit`` loss_fn that draws two SimCLR views of the (un-augmented) batch and applies ``loss(z1, z2, y)``."""
    return two_view_loss(lambda z1, z2, y, idx: loss(z1, z2, y), gen)


def train_simclr(ctx: DefenseContext, data: ImageSet, cfg: SSLCleanseConfig, on_epoch=None) -> _Embedder:
    """Alg. 1 l.3: learn L(E(.)) on the training images with NT-Xent (Eq. 5); labels are never read.
    ``on_epoch(epoch, net)``: ``fit``'s per-epoch hook (benchmarks/ssl_encoder_steps.py reads the encoder there)."""
    backbone = ctx.new_model()
    net = _Embedder(backbone, nn.Linear(backbone.num_features, cfg.proj_dim))
    gen = gen_for_device(ctx.generator("simclr_views"), ctx.device)
    recipe = cfg.sgd(cfg.simclr_lr, cfg.simclr_batch_size, cfg.simclr_epochs)
    return fit(net, data, recipe, device=ctx.device, seed=ctx.seed,
               loss_fn=_views_loss(lambda z1, z2, y: nt_xent(z1, z2, cfg.simclr_temperature), gen), on_epoch=on_epoch)


def train_autoencoder(ctx: DefenseContext, data: ImageSet, cfg: SSLCleanseConfig) -> _AutoEncoder:
    ae = _AutoEncoder(ctx.info.in_channels, ctx.info.image_size)
    recipe = Recipe(optimizer="adam", lr=cfg.ae_lr, weight_decay=0.0, batch_size=cfg.ae_batch_size,
                    epochs=cfg.ae_epochs, schedule="cosine", augment=())
    return fit(ae, data, recipe, device=ctx.device, seed=ctx.seed,
               loss_fn=lambda model, x, y, idx: F.mse_loss(model(x), x))


@torch.no_grad()
def embed_all(encode, images_u8: torch.Tensor, device: torch.device, batch: int = 512) -> torch.Tensor:
    """Alg. 1 l.5: z_i for every training image (float [N, D], L2-normalised, on ``device``)."""
    return torch.cat([encode(images_u8[s:s + batch].to(device).float().div_(255)).float()
                      for s in range(0, len(images_u8), batch)])


# ------------------------------------------------------------------------------------------------ filtering


class Decision(NamedTuple):
    """Per-sample class decision c_i, its confidence Conf_{c_i}(x_i), and a suspicion score (higher = worse)."""

    pred: torch.Tensor    # int64 [N]
    conf: torch.Tensor    # float [N]
    score: torch.Tensor   # float [N]


def _row_chunks(n: int, chunk: int):
    for s in range(0, n, chunk):
        yield torch.arange(s, min(s + chunk, n))


def knn_decide(z: torch.Tensor, labels: torch.Tensor, k: int, num_classes: int) -> Decision:
    """§3.3 kNN: plurality vote of the k nearest other samples (cosine similarity of normalised z).

    Confidence = fraction of the k votes for the decided class (§3.4); ties go to the lowest class index.
    Score = 1 - fraction of votes for the sample's own label.
    """
    k = min(k, len(z) - 1)
    votes = knn_votes(z, labels, k, num_classes)
    top = votes.max(1)
    own = votes.gather(1, labels.to(z.device)[:, None])[:, 0] / k
    return Decision(top.indices.cpu(), (top.values / k).cpu(), (1 - own).cpu())


def energy_scores(z: torch.Tensor, labels: torch.Tensor, num_classes: int, tau: float,
                  chunk: int = 512) -> torch.Tensor:
    """Eq. 6: S_c(z_i) = log( 1/|I_c \\ {i}| * sum_{k in I_c \\ {i}} exp(z_i.z_k/tau) / sum_{k' != i} exp(z_i.z_k'/tau) ).

    Returns float [N, C] (-inf for a class with no other member).
    """
    labels = labels.to(z.device)
    members = [(labels == c).nonzero().squeeze(1) for c in range(num_classes)]
    out = []
    for rows in _row_chunks(len(z), chunk):
        rows = rows.to(z.device)
        logits = (z[rows] @ z.t()) / tau
        logits[torch.arange(len(rows), device=z.device), rows] = float("-inf")   # k' != i, k in I_c \ {i}
        log_denominator = logits.logsumexp(1)
        s = torch.stack([logits[:, m].logsumexp(1) if len(m) else torch.full_like(log_denominator, float("-inf"))
                         for m in members], 1)
        count = torch.stack([len(m) - (labels[rows] == c).long() for c, m in enumerate(members)], 1).float()
        score = s - count.clamp(min=1).log() - log_denominator[:, None]
        out.append(score.masked_fill(count == 0, float("-inf")))
    return torch.cat(out).cpu()


def energy_decide(z: torch.Tensor, labels: torch.Tensor, num_classes: int, tau: float) -> Decision:
    """§3.3 Energy: c* = argmax_c S_c(z_i); confidence = max_c S_c (§3.4); score = max_c S_c - S_{y_i}."""
    s = energy_scores(z, labels, num_classes, tau)
    top = s.max(1)
    return Decision(top.indices, top.values, top.values - s.gather(1, labels.cpu()[:, None])[:, 0])


def relabel_threshold(conf_accepted: torch.Tensor, percentile: float) -> float:
    """Alg. 1 l.11-12: T = the lambda-th percentile of the accepted samples' confidences (linear interpolation,
    as numpy's ``percentile``); +inf when nothing was accepted (then nothing is relabelled)."""
    if conf_accepted.numel() == 0:
        return float("inf")
    return float(torch.quantile(conf_accepted.double(), percentile / 100.0))


def cleanse(dec: Decision, labels: torch.Tensor, percentile: float, filtering: bool = True,
            relabelling: bool = True) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Alg. 1 l.4-15: reject samples whose decision disagrees with their label; relabel the rejected ones whose
    confidence exceeds T.  With ``filtering`` off nothing is removed (relabels still apply), Table 3 row 4.

    Returns: flags (bool [N], rejected and removed from their label), relabels (int64 [N], -1 = keep), T.
    """
    rejected = dec.pred != labels.cpu()
    t = relabel_threshold(dec.conf[~rejected], percentile)
    relabel = rejected & (dec.conf > t) if relabelling else torch.zeros_like(rejected)
    relabels = torch.where(relabel, dec.pred, torch.full_like(dec.pred, -1))
    flags = rejected if filtering else torch.zeros_like(rejected)
    return flags, relabels, t


def _rank01(x: torch.Tensor) -> torch.Tensor:
    return x.argsort().argsort().double() / max(len(x) - 1, 1)


def combine(knn: tuple, energy: tuple, knn_score: torch.Tensor, energy_score: torch.Tensor):
    """App. G: accepted only if both methods accept; relabelled only if both relabel, to the same class.
    The score is the mean of the two scores' ranks in [0, 1]."""
    (fk, rk, t), (fe, re, _) = knn, energy
    relabels = torch.where((rk >= 0) & (rk == re), rk, torch.full_like(rk, -1))
    return fk | fe, relabels, t, (_rank01(knn_score) + _rank01(energy_score)) / 2


# ------------------------------------------------------------------------------------------------ classifier


def train_supcon_classifier(ctx: DefenseContext, data: ImageSet, cfg: SSLCleanseConfig) -> nn.Module:
    """Alg. 1 l.16: SupCon on the cleansed set (encoder + MLP head), then a linear head with CE on frozen
    features (the encoder stays in eval mode, so its BatchNorm statistics do not move)."""
    model = ctx.new_model()
    net = _Embedder(model, ProjectionHead(model.num_features, cfg.proj_dim))
    gen = gen_for_device(ctx.generator("supcon_views"), ctx.device)
    fit(net, data, cfg.sgd(cfg.supcon_lr, cfg.supcon_batch_size, cfg.supcon_epochs), device=ctx.device,
        seed=ctx.seed, loss_fn=_views_loss(lambda z1, z2, y: supcon(z1, z2, y, cfg.supcon_temperature), gen))

    def linear_loss(m, x, y, idx):
        m.eval()
        with torch.no_grad():
            f = m.forward_features(x)
        return F.cross_entropy(m.forward_head(f), y)

    recipe = cfg.sgd(cfg.linear_lr, cfg.linear_batch_size, cfg.linear_epochs, ("resized_crop", "flip"), wd=0.0)
    return fit(model, data, recipe, device=ctx.device, seed=ctx.seed + 1, loss_fn=linear_loss,
               params=model.fc.parameters())


# ------------------------------------------------------------------------------------------------ method


# The embedding's own fields: cells that differ only in the filter, the relabelling or the classifier share it.
EMBEDDING_FIELDS = ("encoder", "simclr_epochs", "simclr_lr", "simclr_batch_size", "simclr_temperature", "momentum",
                    "weight_decay", "proj_dim", "ae_epochs", "ae_lr", "ae_batch_size")


@register_defense("ssl_cleanse", version=2, display_name="SimCLR cleansing")
class SSLCleanse(Defense):
    """SimCLR embedding, kNN / Energy filtering, confident relabelling, SupCon classifier (seed 002).

    The embedding (Alg. 1 l.3-5) is the cached ``prepare`` stage (``prepare_fields``): seed 002's Table 1 runs
    kNN, Energy and kNN+Energy, and Table 3 its ablation switches, on one SimCLR encoder per (data, seed).
    Version 2: the embedding moved to that stage (the classifier's initialisation no longer follows the
    encoder's random draws, so a cell's numbers differ from version 1 by a seed's worth).
    """

    Config = SSLCleanseConfig
    paradigm = "cleansing"
    needs = frozenset({"poisoned_train"})
    prepare_fields = EMBEDDING_FIELDS

    def prepare(self, ctx: DefenseContext) -> tuple[dict, dict[str, float]]:
        """Alg. 1 l.3-5: the encoder on the poisoned training images (labels unread) and z of every image."""
        cfg, data = self.cfg, ctx.train
        if cfg.encoder == "autoencoder":
            encode = train_autoencoder(ctx, data, cfg).encode
        else:
            encode = train_simclr(ctx, data, cfg).eval()
        return {"embedding": embed_all(encode, data.images, ctx.device).cpu()}, {}

    def embed(self, ctx: DefenseContext) -> torch.Tensor:
        return self.prepared(ctx)["embedding"].to(ctx.device)

    def decide(self, z: torch.Tensor, labels: torch.Tensor, num_classes: int):
        cfg = self.cfg
        k = cfg.k or max(1, round(len(labels) / num_classes / 2))       # §3.3: half the per-class count
        out = {}
        if cfg.filter in ("knn", "knn_energy"):
            out["knn"] = knn_decide(z, labels, k, num_classes)
        if cfg.filter in ("energy", "knn_energy"):
            out["energy"] = energy_decide(z, labels, num_classes, cfg.energy_tau)
        return out, k

    def run(self, ctx: DefenseContext) -> DefenseResult:
        cfg, labels = self.cfg, ctx.train.labels.cpu()
        z = self.embed(ctx)
        decisions, k = self.decide(z, labels, ctx.info.num_classes)
        parts = {name: cleanse(d, labels, cfg.relabel_percentile, cfg.filtering, cfg.relabelling)
                 for name, d in decisions.items()}
        if len(parts) == 1:
            (flags, relabels, t), = parts.values()
            scores = next(iter(decisions.values())).score
        else:   # App. G (the reported threshold is kNN's)
            flags, relabels, t, scores = combine(parts["knn"], parts["energy"], decisions["knn"].score,
                                                 decisions["energy"].score)
        metrics = {"relabel_count": float((relabels >= 0).sum()), "rejected_count": float(flags.sum()),
                   "relabel_threshold": t, "k": float(k)}
        model = None
        if cfg.classifier == "supcon":
            keep = ~flags | (relabels >= 0)
            new_labels = torch.where(relabels >= 0, relabels, labels)
            model = train_supcon_classifier(ctx, ImageSet(ctx.train.images[keep], new_labels[keep]), cfg)
        return DefenseResult(model=model, scores=scores.float(), flags=flags, relabels=relabels, metrics=metrics,
                             embedding=z)
