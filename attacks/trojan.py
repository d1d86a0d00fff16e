"""Trojan attack (Liu et al., NDSS 2018, "TrojanNN"): a trigger of fixed shape whose pixels excite chosen neurons.

Shapes, as the seeds use them (dirty-label, 10 %):
    square, size 3, margin 4   MCL's Trojan (seed 000 App. A.2: "a 3x3 trigger placed in the lower right corner").
            MCL follows the NAD code, whose ``trojanTrigger`` adds ``best_square_trigger_cifar10.npz``: a float
            image that is 0 except a 3x3 block at rows/cols 25-27 of 32 (4 px from the border) with values in
            [0, 250]; D-BR's Trojan is the same file (seed 001 §5.1).
    square, size 9, margin 2   LfD's TJ-SQ (seed 003 §5.1; TrojanNN square as shipped by I-BAU: a 9x9 block at
            rows/cols 21-29 of 32, values in [0, 255], added to the image).
    watermark                  LfD's TJ-WM (TrojanNN watermark; the I-BAU file is a logo-like stroke over ~30 % of
            the image, values with mean ~30, added).  We generate a watermark mask: a diagonal band from the
            bottom-left to the top-right corner plus a disc below the centre, resolution independent.
The released trigger values come from TrojanNN's optimisation against the authors' models and are third-party
files, so ``trojan`` fills its mask with seeded uniform noise in [0, pattern_max] (a stand-in), and
``trojan_nn`` runs TrojanNN's optimisation on the harness's clean model: starting from that noise, the pattern
inside the mask is optimised (Adam on [0, 1] pixels) so that the selected neurons of a chosen layer fire on
training images carrying the trigger (maximised, or driven to ``target_value``).  Neurons are the layer's
channels whose incoming weights have the largest absolute sum (TrojanNN's internal-neuron selection picks the
neurons most tightly connected to the previous layer).  TrojanNN also retrains the model; here the poisoned
data carry the attack, as in the seeds.
``mode: add`` (x + trigger, clipped) is the NAD / I-BAU code; ``mode: stamp`` replaces the masked pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn

from bench.attack import Attack, AttackConfig, PoisonedSet, Trigger
from bench.data.imageset import DataInfo, ImageSet
from bench.registry import register_attack
from bench.triggers import Position, add_signal, patch_position, stamp_masked, trigger_generator


@dataclass(frozen=True)
class TrojanConfig(AttackConfig):
    shape: Literal["square", "watermark"] = "square"  # seed 000 App. A.2: square (3x3); LfD TJ-WM: watermark
    size: int = 3                          # square side; seed 000 App. A.2 (TJ-SQ: 9)
    position: Position = "bottom_right"    # seed 000 App. A.2: lower right corner
    margin: int = 4                        # NAD-lineage trigger file: 4 px from the border (TJ-SQ file: 2)
    mode: Literal["add", "stamp"] = "add"  # NAD / I-BAU code add the trigger image; TrojanNN stamps it
    pattern_max: float = 255.0             # trigger pixel values lie in [0, pattern_max]
    target: int = 0                        # seed 001 §5.1 (D-BR code); MCL uses 5, LfD 1
    poison_rate: float = 0.1               # seeds 000/001/003: 10 % (of the non-target pool)
    trigger_seed: Optional[int] = None     # None: the cell's seed draws the pattern

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.pattern_max <= 255:
            raise ValueError(f"pattern_max must be in (0, 255], got {self.pattern_max}")


def watermark_mask(size: int) -> torch.Tensor:
    """bool [size, size]: a diagonal band (bottom-left to top-right) and a disc at (0.7, 0.6) of the image."""
    v = (torch.arange(size, dtype=torch.float64).view(size, 1) + 0.5) / size     # row position in (0, 1)
    u = (torch.arange(size, dtype=torch.float64).view(1, size) + 0.5) / size     # column position
    band = (u + v - 1).abs() < 0.09
    disc = (v - 0.7) ** 2 + (u - 0.6) ** 2 < 0.16 ** 2
    return band | disc


@register_attack("trojan", display_name="Trojan")
class Trojan(Attack):
    """Trojan trigger with a fixed seeded pattern: MCL's 3x3 square, LfD's TJ-SQ and TJ-WM shapes."""

    Config = TrojanConfig

    def __init__(self, cfg: TrojanConfig, info: DataInfo, seed: int):
        super().__init__(cfg, info, seed)
        c, size, s = info.in_channels, info.image_size, cfg.size
        if cfg.shape == "square":
            top, left = patch_position(size, s, s, cfg.position, cfg.margin)
            if top < 0 or left < 0 or top + s > size or left + s > size:
                raise ValueError(f"a {s}px square at margin {cfg.margin} does not fit {size}px images")
            self.mask = torch.zeros(1, size, size, dtype=torch.bool)
            self.mask[:, top:top + s, left:left + s] = True
        else:
            self.mask = watermark_mask(size).unsqueeze(0)
        g = trigger_generator(seed, cfg.trigger_seed)
        noise = torch.randint(0, int(cfg.pattern_max) + 1, (c, size, size), generator=g).to(torch.uint8)
        self.pattern = torch.where(self.mask, noise, 0).to(torch.uint8)     # uint8 [C, H, W], 0 off the mask

    def apply_trigger(self, x_u8: torch.Tensor, train: bool) -> torch.Tensor:
        if self.cfg.mode == "add":
            return add_signal(x_u8, self.pattern.float())
        return stamp_masked(x_u8, self.mask, self.pattern)

    def apply01(self, x01: torch.Tensor, pattern01: torch.Tensor) -> torch.Tensor:
        """The same trigger on float [0, 1] images with a float pattern (differentiable, for the optimisation)."""
        m = self.mask.to(x01.device, x01.dtype)
        if self.cfg.mode == "add":
            return (x01 + m * pattern01).clamp(0, 1)
        return (1 - m) * x01 + m * pattern01

    def true_trigger(self) -> Trigger:
        """Stamped: the mask and the pattern; added (MCL's Trojan, the NAD code): the pattern as an offset."""
        if self.cfg.mode == "add":
            return Trigger.additive(self.pattern, self.info.in_channels)
        return Trigger(self.mask.float(), self.pattern.float() / 255)

    def poison(self, train, generator, clean_model=None):
        out = super().poison(train, generator, clean_model)
        out.params.update(shape=self.cfg.shape, mode=self.cfg.mode, trigger_pixels=int(self.mask.sum()))
        return out


# ---------------------------------------------------------------------------------------------------------
# TrojanNN: optimise the masked pattern to excite selected neurons of the harness's clean model.
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrojanNNConfig(TrojanConfig):
    layer: Optional[str] = None            # module name; None: the model's last feature block (feature_info[-1])
    neurons: int = 1                       # number of channels to excite
    target_value: Optional[float] = None   # None: maximise their mean activation; else drive it to this value
    opt_steps: int = 200                   # Adam steps on the pattern
    opt_lr: float = 0.05                   # Adam learning rate, [0, 1] pixel units
    opt_batch: int = 64                    # training images carrying the trigger during the optimisation


def select_neurons(block: nn.Module, k: int) -> torch.Tensor:
    """Indices of the k output channels of ``block``'s last conv/linear layer with the largest sum |W_in|."""
    weights = [m.weight for m in block.modules() if getattr(m, "weight", None) is not None and m.weight.dim() >= 2]
    if not weights:
        raise ValueError("trojan_nn: the chosen layer has no conv or linear weights to rank neurons by")
    w = weights[-1].detach()
    return w.abs().flatten(1).sum(1).topk(k).indices


@register_attack("trojan_nn", display_name="TrojanNN")
class TrojanNN(Trojan):
    """Trojan trigger whose masked pattern is optimised on the clean model to excite chosen neurons."""

    Config = TrojanNNConfig
    needs_clean_model = True

    def __init__(self, cfg: TrojanNNConfig, info: DataInfo, seed: int):
        super().__init__(cfg, info, seed)
        self.optimised = False

    def optimise(self, model: nn.Module, train: ImageSet, generator: torch.Generator) -> dict:
        """Run the optimisation and set ``self.pattern``.

        Returns:
            facts for the artifact: layer, neuron indices, mean activation of those neurons on the triggered
            batch before (random pattern) and after the optimisation.
        """
        cfg = self.cfg
        layer = cfg.layer or model.feature_info[-1]["name"]
        block = model.get_submodule(layer)
        neurons = select_neurons(block, cfg.neurons)
        device = next(model.parameters()).device
        store: dict[str, torch.Tensor] = {}
        hook = block.register_forward_hook(lambda mod, inp, out: store.__setitem__("out", out))
        was_training = model.training
        model.eval()
        idx = torch.randperm(len(train), generator=generator)[:cfg.opt_batch]
        x = (train.images[idx].float() / 255).to(device)
        p = (self.pattern.float() / 255).to(device).requires_grad_(True)
        opt = torch.optim.Adam([p], lr=cfg.opt_lr)
        try:
            with torch.no_grad():
                initial = float(self._activation(model, x, p, store, neurons.to(device)))
            for _ in range(cfg.opt_steps):
                act = self._activation(model, x, p, store, neurons.to(device))
                loss = -act if cfg.target_value is None else (act - cfg.target_value) ** 2
                (p.grad,) = torch.autograd.grad(loss, [p])
                opt.step()
                with torch.no_grad():
                    p.clamp_(0, cfg.pattern_max / 255)
            with torch.no_grad():
                final = float(self._activation(model, x, p, store, neurons.to(device)))
        finally:
            hook.remove()
            model.train(was_training)
        pattern = (p.detach().cpu() * 255).round().clamp(0, cfg.pattern_max).to(torch.uint8)
        self.pattern = torch.where(self.mask, pattern, 0).to(torch.uint8)
        self.optimised = True
        return {"layer": layer, "neurons": neurons.tolist(), "activation_init": initial, "activation": final}

    def _activation(self, model, x, p, store, neurons) -> torch.Tensor:
        model(self.apply01(x, p))
        act = store["out"][:, neurons]
        return act.flatten(2).mean(-1).mean() if act.dim() > 2 else act.mean()

    def apply_trigger(self, x_u8: torch.Tensor, train: bool) -> torch.Tensor:
        if not self.optimised:
            raise RuntimeError("trojan_nn: the pattern is not optimised yet; call poison() or load_state() first")
        return super().apply_trigger(x_u8, train)

    def state(self) -> dict[str, torch.Tensor]:
        return {"pattern": self.pattern.clone()} if self.optimised else {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.pattern = state["pattern"].to(torch.uint8).cpu()
        self.optimised = True

    def poison(self, train: ImageSet, generator: torch.Generator, clean_model: nn.Module | None = None
               ) -> PoisonedSet:
        if clean_model is None:
            raise ValueError("trojan_nn needs the harness's clean model (clean_model) to optimise its pattern")
        facts = self.optimise(clean_model, train, generator)
        out = super().poison(train, generator, clean_model)
        out.params.update(facts)
        return out
