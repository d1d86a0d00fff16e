"""Adaptive attack on SimCLR cleansing (seed 002, App. E, Eq. 7-8, Tab. 5): a BadNets patch learned so that
poisoned images land near the target class in a surrogate SimCLR embedding; dirty-label, all2one.

App. E: the attacker knows the defense and holds the whole training set but not the defender's encoder, so it
trains a surrogate L(E(.)) with SimCLR ("the same architecture as that used by the defender") and learns the
pattern u of the BadNets embedding g(x, m, u) = (1 - m) x + m u, "m is a mask fixed at top left corner":

    u* = argmin_u 1/|I \\ I_t| sum_{i in I \\ I_t} || L(E(g(x_i, m, u))) - z_t ||_2     (Eq. 7)
    z_t = 1/|I_t| sum_{j in I_t} L(E(x_j))                                           (Eq. 8)

Tab. 5 varies the patch: 3x3 (``size: 3``, the default), 7x7, 11x11 on CIFAR-10 (no defense: ASR 96.1 / 100 /
99.9).  Poison count: 1,000 (seed 002 §4, every attack of Tab. 2; App. E states no other): the default rate
1000/45000 of the non-target pool is exactly that on CIFAR-10 (set ``poison_count: 1000`` for the absolute count).

Surrogate encoder: the defense's own machinery (``defenses/ssl_cleanse.py`` ``train_simclr``: backbone +
linear projector, NT-Xent on two SimCLR views, SupContrast's SGD schedule), with the defense's SimCLR defaults
(``SSLCleanseConfig``: 1000 epochs, §4; lr 0.5, batch 1024, temperature 0.5, 128-d), trained on the clean
training set; embeddings are its L2-normalised z, as the defense filters on.  The cell's architecture comes
from the harness's clean model (``needs_clean_model``), re-initialised: PyTorch's default initialisation per
layer, then the zoo's He-normal convolutions and unit/zero BatchNorm (``bench.models.resnet.init_weights``, the
ResNet / WRN initialiser), so the generate stage is keyed by the cell's model as the defender's encoder is.
Not stated in App. E, chosen here: u starts from App. C's BadNet pattern (seeded uniform noise), is optimised
with Adam (lr 0.01 in [0, 1] units, clipped to [0, 1]) over mini-batches of the non-target images (Eq. 7's sum,
stochastically) for ``opt_epochs`` passes, and the target is the harness default 0.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.attack import Attack, AttackConfig, Trigger
from bench.data.imageset import DataInfo, ImageSet
from bench.defense import Curves, DefenseContext
from bench.models.resnet import init_weights
from bench.recipes import Recipe
from bench.registry import register_attack
from bench.triggers import Position, patch_position, place, random_patch, stamp_patch
from defenses.ssl_cleanse import SSLCleanseConfig, embed_all, train_simclr

_SSL = SSLCleanseConfig
SIMCLR_FIELDS = ("simclr_epochs", "simclr_lr", "simclr_batch_size", "simclr_temperature", "momentum",
                 "weight_decay", "proj_dim")


@dataclass(frozen=True)
class AdaptiveConfig(AttackConfig):
    size: int = 3                        # seed 002 Tab. 5: 3x3 (7x7, 11x11 in the other rows)
    position: Position = "top_left"      # seed 002 App. E: "a mask fixed at top left corner of the image"
    margin: int = 0
    # The surrogate SimCLR encoder: the defender's settings (defenses/ssl_cleanse.py SSLCleanseConfig).
    simclr_epochs: int = _SSL.simclr_epochs          # seed 002 §4: 1000
    simclr_lr: float = _SSL.simclr_lr
    simclr_batch_size: int = _SSL.simclr_batch_size
    simclr_temperature: float = _SSL.simclr_temperature
    momentum: float = _SSL.momentum
    weight_decay: float = _SSL.weight_decay
    proj_dim: int = _SSL.proj_dim
    # Eq. 7's optimisation (not stated in seed 002).
    opt_epochs: int = 10                 # passes over the non-target images
    opt_lr: float = 0.01                 # Adam, [0, 1] pixel units
    opt_batch_size: int = 256
    target: int = 0                      # not stated in seed 002; the harness default
    poison_rate: float = 1000 / 45000    # seed 002 §4: 1,000 poisoned images on CIFAR-10 (non-target pool)

    def __post_init__(self):
        super().__post_init__()
        if self.size < 1 or self.margin < 0:
            raise ValueError(f"size must be >= 1 and margin >= 0, got size {self.size}, margin {self.margin}")
        if self.opt_epochs < 0 or self.opt_batch_size < 1:
            raise ValueError("opt_epochs must be >= 0 and opt_batch_size >= 1")


def fresh_copy(model: nn.Module) -> nn.Module:
    """An untrained model of ``model``'s architecture: every layer's ``reset_parameters`` (BatchNorm's running
    statistics too), then the zoo's convolution / BatchNorm initialiser, on the CPU (torch's global CPU generator)."""
    out = copy.deepcopy(model).cpu()
    for m in out.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    init_weights(out)
    return out


@register_attack("adaptive", display_name="Adaptive (SimCLR)")
class Adaptive(Attack):
    """BadNets patch at the top-left corner, optimised towards the target class in a surrogate SimCLR space."""

    Config = AdaptiveConfig
    needs_clean_model = True             # the defender's architecture (the generate key follows the cell's model)
    generator_fields = ("size", "position", "margin", "target", *SIMCLR_FIELDS, "opt_epochs", "opt_lr",
                        "opt_batch_size")

    def __init__(self, cfg: AdaptiveConfig, info: DataInfo, seed: int):
        super().__init__(cfg, info, seed)
        s = cfg.size
        if s + cfg.margin > info.image_size:
            raise ValueError(f"a {s}px patch with margin {cfg.margin} does not fit {info.name}'s "
                             f"{info.image_size}px images")
        self.top, self.left = patch_position(info.image_size, s, s, cfg.position, cfg.margin)
        self.patch: torch.Tensor | None = None       # uint8 [C, s, s]

    def _stamp01(self, x01: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """g(x, m, u) on float [0, 1] images, differentiable in u [C, s, s]."""
        s, t, left = self.cfg.size, self.top, self.left
        out = x01.clone()
        out[:, :, t:t + s, left:left + s] = u.expand(len(x01), *u.shape)
        return out

    # -- the generate stage ---------------------------------------------------------------------------
    def train_generator(self, train: ImageSet, device: torch.device,
                        surrogate: nn.Module | None = None) -> tuple[dict[str, Any], dict[str, float]]:
        if surrogate is None:
            raise ValueError("adaptive needs the harness's clean model (surrogate) for the defender's architecture")
        device = torch.device(device)
        # The SimCLR stage draws from torch's global generators too: seeded here, so a call is reproducible on
        # its own (the generate stage seeds them with the same seed anyway), and restored after.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            return self._train_generator(train, device, surrogate)

    def _train_generator(self, train: ImageSet, device: torch.device, surrogate: nn.Module
                         ) -> tuple[dict[str, Any], dict[str, float]]:
        cfg = self.cfg
        template = fresh_copy(surrogate)
        ctx = DefenseContext(info=self.info, device=device, seed=self.seed, recipe=Recipe(),
                             new_model=lambda: copy.deepcopy(template).to(device), curves=Curves(False))
        simclr = SSLCleanseConfig(**{f: getattr(cfg, f) for f in SIMCLR_FIELDS})
        encoder = train_simclr(ctx, train, simclr).eval()
        for p in encoder.parameters():
            p.requires_grad_(False)

        labels = train.labels.cpu()
        z_t = embed_all(encoder, train.images[labels == cfg.target], device).mean(0)          # Eq. 8
        others = train.images[labels != cfg.target]
        gen = torch.Generator().manual_seed(self.seed)
        u0 = random_patch(self.info.in_channels, cfg.size, cfg.size, gen).float() / 255       # App. C's noise
        u = u0.clone().to(device).requires_grad_(True)
        opt = torch.optim.Adam([u], lr=cfg.opt_lr)

        def distance(x_u8: torch.Tensor, patch: torch.Tensor | None) -> torch.Tensor:
            x = x_u8.to(device).float() / 255
            z = encoder(x if patch is None else self._stamp01(x, patch))
            return (z - z_t).norm(dim=1)

        @torch.no_grad()
        def mean_distance(patch: torch.Tensor | None) -> float:                              # Eq. 7's value
            return float(torch.cat([distance(others[i:i + 512], patch) for i in range(0, len(others), 512)]).mean())

        dist_clean, dist_init = mean_distance(None), mean_distance(u0.to(device))
        for _ in range(cfg.opt_epochs):
            for idx in torch.randperm(len(others), generator=gen).split(cfg.opt_batch_size):
                loss = distance(others[idx], u).mean()
                (u.grad,) = torch.autograd.grad(loss, [u])
                opt.step()
                with torch.no_grad():
                    u.clamp_(0, 1)
        patch = (u.detach().cpu() * 255).round().clamp(0, 255).to(torch.uint8)
        dist_final = mean_distance(patch.to(device).float() / 255)                  # the stored (uint8) pattern
        with torch.no_grad():
            target_spread = float((embed_all(encoder, train.images[labels == cfg.target], device) - z_t)
                                  .norm(dim=1).mean())
        metrics = {"dist_clean": dist_clean, "dist_init": dist_init, "dist_final": dist_final,
                   "dist_target_class": target_spread}
        return {"patch": patch, "top": self.top, "left": self.left}, metrics

    def load_generator(self, state: dict[str, Any]) -> None:
        self.patch = state["patch"].to(torch.uint8).cpu()

    # -- the trigger ------------------------------------------------------------------------------------
    def apply_trigger(self, x_u8: torch.Tensor, train: bool) -> torch.Tensor:
        if self.patch is None:
            raise RuntimeError("adaptive: no pattern loaded (the generate stage's load_generator)")
        return stamp_patch(x_u8, self.patch, self.top, self.left)

    def true_trigger(self) -> Trigger | None:
        if self.patch is None:
            return None
        mask, pattern = place(self.patch, self.top, self.left, self.info.in_channels, self.info.image_size)
        return Trigger(mask.float(), pattern.float() / 255)

    def poison(self, train, generator, clean_model=None):
        out = super().poison(train, generator, clean_model)
        out.params.update(trigger_top=self.top, trigger_left=self.left, trigger_size=self.cfg.size)
        return out
