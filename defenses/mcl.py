"""MCL: model-contrastive learning for backdoor defense (Yue et al.; seed 000 §3.3).

Stage 1, trigger inversion (§3.3 Eq. 1-2): NC's optimisation for the target label (``bench/inversion.py``),
with the one setting App. A.4 gives "for our MCL and NC" (``InversionFields``, shared with defenses/nc.py):
Adam lr 0.005, batch 64, up to 100 epochs on the clean subset with crop + flip, a fixed λ = 0.01 (0.001 on the
ImageNet subset), mask and pattern clipped to [0, 1], the authors' early stop (WeCanShow/MCL ``main.py``
l. 58-66: patience reset on any smaller mask L1, stop after more than 30 epochs without one) and the last
trigger kept (l. 70).  Stored: mask L1, ``inversion_found`` (the trigger reached 99 % on the clean subset),
``inversion_epochs`` and ``inversion_asr`` (held-out slice).  The paper assumes the target label known ("here we
assume that the target label of the backdoor attack has been detected"); ``target`` gives it (privileged), and
without it the label with NC's smallest mask over a scan of every label is used.
``trigger_source: true`` skips the inversion and uses the attack's own trigger (Table 2's MCL(True),
privileged; quote it in YAML, ``"true"``, or YAML reads a boolean).  Every attack with a fixed trigger has one:
patch and blend triggers as a mask and a pattern, additive ones (Trojan's added square, SIG's sinusoid) as an
offset, x̂ = clip(x + v) (``bench.attack.Trigger``).  ``trigger_source: mesa`` is Table 2's MCL(MESA) (§4.4):
MESA (``defenses/_mesa.py``) learns the distribution of valid triggers inside the known trigger box (the
bounding box of the attack's trigger support: privileged, as §4.4 states) with α = 0.1, β = 0.8;
``mesa_samples`` triggers are drawn from it and each image of a batch is stamped with one of them at random.
For an additive attack MESA's generator outputs an added signal within the true trigger's amplitude (a
deviation: MESA models stamped patches; the paper ran MCL(MESA) on BadNets, Trojan and CL only, Table 2 "/").
``TRIGGER_SOURCES`` is the hook for other inversions.

Stage 2, backdoor elimination (§3.3 Eq. 3): for a clean batch x and its triggered copy x̂ (Eq. 1), with h(·) the
penultimate features (``forward_features``), z = h(x̂; ω) of the model being purified, z_cle = h(x; ω̄) and
z_poi = h(x̂; ω̄) of the frozen backdoored model,

    L = 1/N Σ_i -log( e^{sim(z_i, z_cle_i)/τ} / (e^{sim(z_i, z_cle_i)/τ} + e^{sim(z_i, z_poi_i)/τ}) )    (Eq. 3)

with cosine similarity and τ = 0.5 (§4.1; Fig. 10 sweeps 0.1, 0.5, 1.0).  No cross-entropy on clean labels.
Variants: ``loss: mse`` is Eq. 4 (Table 3), L = 1/N Σ_i ||z_i - z_cle_i||²; ``extra: ft`` adds CE(f(x), y) and
``extra: ul`` adds CE(f(x̂), y) (App. B.3, Fig. 9's MCL+FT and MCL+UL; the paper gives no weight: 1).
Training (§4.1, App. A.4): SGD lr 0.1 (0.01 on GTSRB), momentum 0.9, wd 1e-4, batch 64, 20 epochs, crop + flip,
lr ÷10 after epoch 1 and epoch 10 on CIFAR-10 and the ImageNet subset (lr 0.1, 0.01 × 9, 0.001 × 10) and after
epochs 2 and 10 on GTSRB: the authors' ``fine_defense_adjust_learning_rate`` (``utils/util.py`` l. 76-99; App.
A.4's "at the 2nd and the 10th epochs" is their GTSRB schedule).  The clean-ratio sweep (Fig. 4/8) is the
harness's ``clean_ratio`` axis.
BatchNorm: the purified model runs in train mode on triggered images only (``main.py`` l. 102-112: only x̂ goes
through ω), so its BN statistics are estimated on x̂ — the default, as the authors.  ``bn_recompute: true``
re-estimates them on the clean subset after training (a harness switch, not in the paper: large inverted masks,
as on CL and SIG, shift the statistics of x̂ away from clean images).
The authors' code logs test metrics every epoch and keeps none; we keep the last epoch (no test-set selection).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from bench.attack import Trigger
from bench.defense import Defense, DefenseConfig, DefenseContext, DefenseResult
from bench.inversion import INVERSION_STREAM, InversionFields, mad_outliers, scan
from bench.recipes import Recipe
from bench.registry import register_defense
from bench.train import fit, recompute_bn


@dataclass(frozen=True)
class MCLConfig(InversionFields, DefenseConfig):
    """MCL: the shared inversion fields (stage 1, App. A.4), the trigger source and the elimination stage."""

    trigger_source: Literal["nc", "true", "mesa"] = "nc"   # Table 2: MCL(NC) | MCL(True) | MCL(MESA)
    target: Optional[int] = None                   # §3.3: the detected target label (None: NC's smallest mask)
    mesa_alpha: float = 0.1                        # §4.4: MESA's entropy weight α
    mesa_beta: float = 0.8                         # §4.4: MESA's threshold β on the target probability
    mesa_steps: int = 1000                         # MESA optimisation steps (not given by MCL; harness choice)
    mesa_samples: int = 100                        # triggers drawn from the learned distribution
    # -- stage 2: model-contrastive elimination (§4.1, App. A.4) --
    tau: float = 0.5                               # §4.1; Fig. 10 sweeps {0.1, 0.5, 1.0}
    loss: Literal["nt_xent", "mse"] = "nt_xent"    # Eq. 3 | Eq. 4 (Table 3)
    extra: Literal["none", "ft", "ul"] = "none"    # App. B.3, Fig. 9
    extra_weight: float = 1.0
    epochs: int = 20
    lr: float = 0.1                                # §4.1 (GTSRB 0.01: per_dataset)
    milestones: tuple[int, ...] = (1, 10)          # MCL code utils/util.py l. 77-85 (GTSRB (2, 10): per_dataset)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 64
    augment: tuple[str, ...] = ("crop", "flip")
    bn_recompute: bool = False                     # re-estimate BN statistics on the clean subset after training

    def __post_init__(self):
        super().__post_init__()
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")

    def recipe(self) -> Recipe:
        return Recipe(optimizer="sgd", lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                      batch_size=self.batch_size, epochs=self.epochs, schedule="multistep",
                      milestones=tuple(m for m in self.milestones if m < self.epochs), augment=self.augment)


# ---------------------------------------------------------------------------------------------------------
# Eq. 3 and Eq. 4
# ---------------------------------------------------------------------------------------------------------

def model_contrastive_loss(z: torch.Tensor, z_cle: torch.Tensor, z_poi: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 3: InfoNCE with one positive (z_cle) and one negative (z_poi) per anchor z; float [N, D] each."""
    pos = F.cosine_similarity(z, z_cle, dim=1) / tau
    neg = F.cosine_similarity(z, z_poi, dim=1) / tau
    logits = torch.stack([pos, neg], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(z), dtype=torch.long, device=z.device))


def feature_mse_loss(z: torch.Tensor, z_cle: torch.Tensor) -> torch.Tensor:
    """Eq. 4: 1/N Σ_i ||z_i - z_cle_i||² (squared distance summed over features, averaged over the batch)."""
    return (z - z_cle).pow(2).sum(1).mean()


def mcl_objective(frozen: nn.Module, trigger: Trigger, cfg: MCLConfig) -> Callable:
    """The loss ``fit`` minimises: Eq. 3 (or Eq. 4) on the batch, plus the optional FT / UL term."""
    def loss_fn(model, x, y, idx):
        x_hat = trigger.apply(x)                                   # Eq. 1 on the augmented clean batch
        with torch.no_grad():
            z_cle, z_poi = frozen.forward_features(x), frozen.forward_features(x_hat)
        f_hat = model.forward_features(x_hat)
        if cfg.loss == "mse":
            loss = feature_mse_loss(f_hat, z_cle)
        else:
            loss = model_contrastive_loss(f_hat, z_cle, z_poi, cfg.tau)
        if cfg.extra == "ft":
            loss = loss + cfg.extra_weight * F.cross_entropy(model(x), y)
        elif cfg.extra == "ul":
            loss = loss + cfg.extra_weight * F.cross_entropy(model.forward_head(f_hat), y)
        return loss
    return loss_fn


# ---------------------------------------------------------------------------------------------------------
# Stage 1: where the trigger comes from
# ---------------------------------------------------------------------------------------------------------

def _nc_trigger(ctx: DefenseContext, cfg: MCLConfig) -> tuple[Trigger, dict[str, float]]:
    labels = [cfg.target] if cfg.target is not None else None
    inversions = scan(ctx.model, ctx.clean, cfg.inversion(), device=ctx.device,
                      generator=ctx.generator(INVERSION_STREAM), labels=labels, eval_data=ctx.clean_val)
    best = min(inversions, key=lambda inv: inv.mask_l1)
    metrics = {"detected_label": float(best.target), **best.metrics()}
    if cfg.target is None:
        metrics["anomaly_index"] = mad_outliers([inv.mask_l1 for inv in inversions]).anomaly_index
    return best.trigger, metrics


def _true_trigger(ctx: DefenseContext, cfg: MCLConfig) -> tuple[Trigger, dict[str, float]]:
    if ctx.true_trigger is None:
        raise ValueError("mcl trigger_source 'true' needs an attack with a fixed trigger (not WaNet's warp)")
    trig = ctx.true_trigger
    return trig, true_trigger_metrics(trig)


def true_trigger_metrics(trig: Trigger) -> dict[str, float]:
    """The true trigger's size: ``trigger_pixels`` (its support) always; ``mask_l1`` for a mask trigger, and
    ``offset_l1`` (sum over pixels of the largest |offset| across channels, [0, 1] units) for an additive one,
    whose mask is all zero by construction (``Trigger.additive``): a mask L1 of 0 there would read as "no
    trigger", not as "the trigger is its offset"."""
    metrics = {"trigger_pixels": float(trig.support().sum())}
    if trig.offset is None or float(trig.mask.abs().sum()) > 0:
        metrics["mask_l1"] = float(trig.mask.abs().sum())
    if trig.offset is not None:
        off = trig.offset.reshape(-1, *trig.offset.shape[-2:]).abs().amax(0)
        metrics["offset_l1"] = float(off.sum())
    return metrics


class SampledTriggers:
    """A set of triggers applied per image: image i of a batch gets a trigger drawn uniformly (seeded)."""

    def __init__(self, triggers: list[Trigger], generator: torch.Generator):
        self.masks = torch.stack([t.mask.expand_as(t.pattern) for t in triggers])    # [K, C, H, W]
        self.patterns = torch.stack([t.pattern for t in triggers])
        self.offsets = (torch.stack([t.offset.expand_as(t.pattern) for t in triggers])
                        if triggers[0].offset is not None else None)
        self.generator = generator

    def apply(self, x01: torch.Tensor) -> torch.Tensor:
        pick = torch.randint(len(self.masks), (len(x01),), generator=self.generator)
        return Trigger(self.masks[pick], self.patterns[pick],
                       None if self.offsets is None else self.offsets[pick]).apply(x01)


def _mesa_trigger(ctx: DefenseContext, cfg: MCLConfig) -> tuple[SampledTriggers, dict[str, float]]:
    from defenses._mesa import MESAConfig, sample_triggers, trigger_amplitude, trigger_box

    if ctx.true_trigger is None:
        raise ValueError("mcl trigger_source 'mesa' needs the trigger's box: an attack with a fixed trigger")
    if cfg.target is None:
        raise ValueError("mcl trigger_source 'mesa' needs 'target' (MESA models the triggers of one known label)")
    box = trigger_box(ctx.true_trigger)
    mesa = MESAConfig(alpha=cfg.mesa_alpha, betas=(cfg.mesa_beta,), steps=cfg.mesa_steps,
                      amplitude=trigger_amplitude(ctx.true_trigger))
    triggers = sample_triggers(ctx.model, ctx.clean, cfg.target, box, cfg.mesa_samples, cfg=mesa,
                               device=ctx.device, seed=ctx.seed)
    sampled = SampledTriggers(triggers, ctx.generator("mcl.mesa"))
    with torch.no_grad():                        # how often the sampled triggers flip held-out non-target images
        val = ctx.clean_val.subset(torch.nonzero(ctx.clean_val.labels.cpu() != cfg.target).flatten())
        pred = ctx.model.eval()(sampled.apply(val.images.float().div(255)).to(ctx.device)).argmax(1).cpu()
    return sampled, {"mask_l1": float(box[2] * box[3]), "inversion_asr": float((pred == cfg.target).float().mean())}


# name -> (needs, privileged, fn(ctx, cfg) -> (trigger, metrics)).  Another inversion adds an entry here and to
# MCLConfig.trigger_source's Literal.
TRIGGER_SOURCES: dict[str, tuple[frozenset[str], tuple[str, ...], Callable]] = {
    "nc": (frozenset(), (), _nc_trigger),
    "true": (frozenset({"true_trigger"}), ("true_trigger",), _true_trigger),
    "mesa": (frozenset({"true_trigger"}), ("trigger size and location", "target label"), _mesa_trigger),
}


@register_defense("mcl", version=2, display_name="MCL")   # v2: recompute_bn over shuffled batches
class MCL(Defense):
    """Invert the trigger, then pull h(x̂) of the purified model to the backdoored model's h(x) (Eq. 3)."""

    Config = MCLConfig
    paradigm = "post_training"
    needs = frozenset({"backdoored_model", "clean_subset"})
    uses_clean_val = True
    per_dataset = {"gtsrb": {"lr": 0.01, "milestones": (2, 10)},          # §4.1; MCL code utils/util.py l. 86-94
                   "imagenet_subset": {"inv_lambda": 0.001}}                # App. A.4

    def __init__(self, cfg: MCLConfig):
        extra_needs, privileged, self._source = TRIGGER_SOURCES[cfg.trigger_source]
        self.needs = type(self).needs | extra_needs          # per instance: only MCL(True) sees the trigger
        self.privileged = privileged + (("target label",) if cfg.target is not None and cfg.trigger_source == "nc"
                                        else ())
        super().__init__(cfg)

    def run(self, ctx: DefenseContext) -> DefenseResult:
        trigger, metrics = self._source(ctx, self.cfg)
        frozen = copy.deepcopy(ctx.model).eval()             # ω̄: the backdoored model, never updated
        for p in frozen.parameters():
            p.requires_grad_(False)
        on_epoch = None
        if ctx.curves.enabled and ctx.evaluate is not None:
            def on_epoch(epoch, model):
                ctx.curves.record(epoch, **ctx.evaluate(model))
        model = fit(ctx.model, ctx.clean, self.cfg.recipe(), device=ctx.device, seed=ctx.seed,
                    loss_fn=mcl_objective(frozen, trigger, self.cfg), on_epoch=on_epoch)
        if self.cfg.bn_recompute:
            model = recompute_bn(model, ctx.clean, self.cfg.batch_size, ctx.device)
        return DefenseResult(model=model, metrics=metrics)
