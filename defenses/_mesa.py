"""MESA — Max-Entropy Staircase Approximator (Qiao, Yang & Li, NeurIPS 2019, "Defending Neural Backdoors via
Generative Distribution Modeling"), as MCL (seed 000) §4.4 uses it for MCL(MESA): a better trigger source
than NC inversion, under the stronger assumption that the trigger's size and location are known.

Public interface (used by defenses/mcl.py as its ``mesa`` trigger source):

    sample_triggers(model, clean, target, box, n, *, cfg=MESAConfig(), device=None, seed=0) -> list[Trigger]
        model:  the backdoored classifier (forward on float [N, C, H, W] in [0, 1]); left unchanged.
        clean:  the defender's clean ImageSet (uint8 [N, C, H, W]).
        target: the attack's target class (MCL assumes it known, §3.2).
        box:    (top, left, height, width) of the known trigger region, in pixels.
        n:      how many triggers to draw from the learned distribution.
        Returns n ``bench.attack.Trigger``: mask float [1, H, W] = 1 inside ``box`` and 0 elsewhere; pattern
        float [C, H, W] in [0, 1], the generated patch inside ``box`` and 0 elsewhere.
    trigger_box(trigger) -> (top, left, height, width): the bounding box of a trigger's support (mask or added
        offset; to take the "known size and location" from the attack's true trigger, a privileged input).
    trigger_amplitude(trigger) -> the largest |offset| of an additive trigger, None for a stamped one.

The method (§3): model the distribution of valid triggers x (patches that make the classifier predict the
target) by the maximum-entropy distribution subject to f(x) > β, where f(x) is the target probability of
clean images stamped with x.  The density is approximated by a *staircase* over thresholds β_i; each step is a
sub-generator G_i(z) trained with

    L_i = E_z[ max(0, β_i − f(G_i(z))) ]  −  α · H(G_i(z))                                         (§3.2)

where the entropy of the deterministic generator's output is estimated by the mutual information I(z; G(z))
with a statistics network T (MINE's Donsker-Varadhan bound, I ≥ E_joint[T] − log E_marginal[e^T]).
Defaults as MCL §4.4 fixes them: α = 0.1, β = 0.8 (one staircase step; ``betas`` takes more).  Samples are
drawn from the sub-generators uniformly.  Network sizes, Adam lr and step counts are not given by MCL and are
harness choices (small MLPs, lr 1e-3, 1000 steps).
Additive triggers (deviation: MESA models stamped patches; the paper ran MCL(MESA) on BadNets, Trojan and CL,
with Trojan's trigger a 3x3 square): with ``amplitude`` set, a generated patch g in [0, 1] is *added* to the box
as A·(2g − 1), A = the true trigger's largest |offset| (as privileged as the box), and the result clipped to
[0, 1]; a full-image box (SIG) so keeps the image under the trigger instead of replacing it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from bench.attack import Trigger
from bench.data.imageset import ImageSet
from bench.recipes import Recipe
from bench.train import fit, pick_device

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class MESAConfig:
    alpha: float = 0.1                  # MCL §4.4 (after Qiao et al.): weight of the entropy term
    betas: tuple[float, ...] = (0.8,)   # MCL §4.4: β = 0.8 (staircase thresholds on the target probability)
    z_dim: int = 32                     # generator noise dimension
    hidden: int = 256                   # generator / statistics-network width
    steps: int = 1000                   # optimisation steps per sub-generator
    batch_size: int = 64                # clean images (and noise draws) per step
    lr: float = 1e-3                    # Adam, generator and statistics network
    amplitude: Optional[float] = None   # None: stamp patches; A: add A·(2g − 1) to the box (additive triggers)


def trigger_box(trigger: Trigger) -> Box:
    """(top, left, height, width) of the bounding box of ``trigger.support()``."""
    support = trigger.support()
    rows, cols = torch.nonzero(support.any(1)).flatten(), torch.nonzero(support.any(0)).flatten()
    if not len(rows):
        raise ValueError("the trigger's mask is empty")
    return int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def trigger_amplitude(trigger: Trigger) -> float | None:
    """The largest |offset| of an additive trigger ([0, 1] units); None when the trigger is stamped."""
    return None if trigger.offset is None else float(trigger.offset.abs().max())


def stamp(x01: torch.Tensor, patches: torch.Tensor, box: Box, amplitude: float | None = None) -> torch.Tensor:
    """Put patches float [B, C, h, w] in [0, 1] into the ``box`` of images float [B, C, H, W] (differentiable):
    replace the region, or with ``amplitude`` A add A·(2·patch − 1) there and clip to [0, 1]."""
    top, left, h, w = box
    if amplitude is None:
        out = x01.clone()
        out[:, :, top:top + h, left:left + w] = patches
        return out
    offset = torch.zeros_like(x01)
    offset[:, :, top:top + h, left:left + w] = amplitude * (2 * patches - 1)
    return (x01 + offset).clamp(0, 1)


# --- §3.2: generator, entropy estimate, staircase objective -----------------------------------------------------

class Generator(nn.Module):
    """G(z): noise float [B, z_dim] -> patches float [B, C, h, w] in [0, 1]."""

    def __init__(self, z_dim: int, hidden: int, shape: tuple[int, int, int]):
        super().__init__()
        self.shape = shape
        self.net = nn.Sequential(nn.Linear(z_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden, math.prod(shape)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z)).view(-1, *self.shape)


class Statistics(nn.Module):
    """MINE's statistics network T(z, x) -> float [B]."""

    def __init__(self, z_dim: int, hidden: int, x_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(z_dim + x_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, x.flatten(1)], 1)).squeeze(1)


def dv_bound(t_joint: torch.Tensor, t_marginal: torch.Tensor) -> torch.Tensor:
    """Donsker-Varadhan lower bound on I(z; x): mean T(joint) − log mean exp T(marginal)."""
    return t_joint.mean() - (torch.logsumexp(t_marginal, 0) - math.log(len(t_marginal)))


def staircase_hinge(p_target: torch.Tensor, beta: float) -> torch.Tensor:
    """E[max(0, β − f(x))]: the step constraint f(x) > β as a hinge on the target probabilities [B]."""
    return F.relu(beta - p_target).mean()


class _Step(nn.Module):
    """One staircase step: a sub-generator and its statistics network (trained jointly by ``fit``)."""

    def __init__(self, cfg: MESAConfig, shape: tuple[int, int, int]):
        super().__init__()
        self.generator = Generator(cfg.z_dim, cfg.hidden, shape)
        self.statistics = Statistics(cfg.z_dim, cfg.hidden, math.prod(shape))


def step_loss(step: _Step, classifier: nn.Module, x01: torch.Tensor, target: int, box: Box, beta: float,
              cfg: MESAConfig, noise: torch.Generator) -> torch.Tensor:
    """L_i on one batch.  G descends hinge − α·I; T ascends I (its own copy of I, on detached patches)."""
    z = torch.randn(len(x01), cfg.z_dim, generator=noise).to(x01.device)
    patches = step.generator(z)
    p_target = F.softmax(classifier(stamp(x01, patches, box, cfg.amplitude)), 1)[:, target]
    shuffled = z[torch.randperm(len(z), generator=noise).to(z.device)]
    frozen_t = {k: v.detach() for k, v in step.statistics.named_parameters()}
    mi_g = dv_bound(functional_call(step.statistics, frozen_t, (z, patches)),
                    functional_call(step.statistics, frozen_t, (shuffled, patches)))
    mi_t = dv_bound(step.statistics(z, patches.detach()), step.statistics(shuffled, patches.detach()))
    return staircase_hinge(p_target, beta) - cfg.alpha * mi_g - mi_t


def fit_generators(model: nn.Module, clean: ImageSet, target: int, box: Box, cfg: MESAConfig,
                   device: torch.device, seed: int) -> list[Generator]:
    """Train one sub-generator per staircase threshold β_i on the clean subset (the classifier stays frozen)."""
    frozen = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    shape = (clean.images.shape[1], box[2], box[3])
    per_epoch = max(1, len(clean) // cfg.batch_size)
    recipe = Recipe(optimizer="adam", lr=cfg.lr, weight_decay=0.0, batch_size=cfg.batch_size, schedule="none",
                    epochs=max(1, math.ceil(cfg.steps / per_epoch)), augment=())
    gens = []
    try:
        for i, beta in enumerate(cfg.betas):
            noise = torch.Generator().manual_seed(seed * 1009 + i)
            torch.manual_seed(seed * 1009 + i)               # network initialisation
            step = _Step(cfg, shape)
            fit(step, clean, recipe, device=device, seed=seed + i,
                loss_fn=lambda _m, x, _y, _idx, s=step, b=beta, g=noise: step_loss(s, model, x, target, box, b, cfg, g))
            gens.append(step.generator.eval())
    finally:
        for p, r in zip(model.parameters(), frozen):
            p.requires_grad_(r)
    return gens


@torch.no_grad()
def sample_triggers(model: nn.Module, clean: ImageSet, target: int, box: Box, n: int, *,
                    cfg: MESAConfig = MESAConfig(), device: torch.device | None = None,
                    seed: int = 0) -> list[Trigger]:
    """Learn the trigger distribution (§3.2) and draw ``n`` triggers from it (see the module docstring)."""
    _, _, height, width = clean.images.shape
    top, left, h, w = box
    if h < 1 or w < 1 or top < 0 or left < 0 or top + h > height or left + w > width:
        raise ValueError(f"box {box} does not fit in {height}x{width} images")
    device = device or pick_device()
    with torch.enable_grad():
        gens = fit_generators(model, clean, target, box, cfg, device, seed)
    noise = torch.Generator().manual_seed(seed + 7919)
    pick = torch.randint(len(gens), (n,), generator=noise)
    z = torch.randn(n, cfg.z_dim, generator=noise).to(device)
    channels = clean.images.shape[1]
    mask = torch.zeros(1, height, width)
    if cfg.amplitude is None:
        mask[:, top:top + h, left:left + w] = 1.0
    triggers = []
    for i in range(n):
        patch = torch.zeros(channels, height, width)
        patch[:, top:top + h, left:left + w] = gens[int(pick[i])](z[i:i + 1])[0].float().cpu()
        if cfg.amplitude is None:
            triggers.append(Trigger(mask=mask.clone(), pattern=patch))
        else:
            offset = torch.zeros(channels, height, width)
            offset[:, top:top + h, left:left + w] = cfg.amplitude * (2 * patch[:, top:top + h, left:left + w] - 1)
            triggers.append(Trigger(mask.clone(), torch.zeros(channels, height, width), offset))
    return triggers
