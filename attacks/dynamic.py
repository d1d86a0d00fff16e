"""Input-aware dynamic backdoor (Nguyen & Tran, NeurIPS 2020), as data poisoning with a frozen, pre-trained generator.

The trigger is sample-specific: a pattern network G and a mask network M (same encoder-decoder, M with one output
channel) give x' = x + (G(x) - x) * M(x), M's output pushed towards {0, 1} by a steep threshold.  Facts from the
authors' release (VinAIResearch/input-aware-backdoor-attack-release; our code is written anew):

    architecture  ``networks/models.py`` l. 41-80: ``depth`` stages of [conv3x3-BN-ReLU, conv3x3-BN-ReLU, maxpool 2],
                  widths w, 2w, 4w, ...; a middle conv block; ``depth`` stages of [bilinear x2 upsample, conv block
                  (c -> c), conv block (c -> c/2)], the last one to the output channels with BN and no ReLU; no
                  skip connections.  w = 16, depth 2 on MNIST, w = 32, depth 3 otherwise (l. 44-49): the
                  ``per_dataset`` overlay below.  Conv blocks: ``networks/blocks.py`` l. 5-17 (BN momentum 0.05,
                  l. 10); max-pool 2 (l. 20-30); bilinear upsampling (l. 33-43).
    output        ``models.py`` l. 108-112: tanh(.) / (2 + 1e-7) + 0.5, in (0, 1).  Mask threshold l. 124-125:
                  tanh(20 m - 10) / (2 + 1e-7) + 0.5.  G and M read the dataset-normalised image (``dataloader.py``
                  l. 58-65); the pattern is normalised likewise (``train.py`` l. 31-35), so the blend in
                  normalised space is the same blend in pixel space, which is where it is done here.
    mask stage    ``train.py`` l. 237-287 and l. 404-416: M alone for 25 epochs (``mask_epochs``), loss
                  lambda_norm * mean(relu(M(x1) - mask_density)) + lambda_div * mean(|x1 - x2| / |M(x1) - M(x2)|)
                  (per-sample RMS distances, x2 from a second shuffled loader); then M is frozen (eval mode).
                  Adam lr_M 0.01, betas (0.5, 0.9) (l. 356; ``config.py`` l. 21); MultiStepLR [10, 20] x 0.1
                  (``config.py`` l. 24, 27).  lambda_norm 100, lambda_div 1, mask_density 0.032 (``config.py``
                  l. 29-30, 37).
    joint stage   ``train.py`` l. 47-148 and l. 418-457: per batch of 128 (``config.py`` l. 18), the first
                  int(p_attack * B) images get their own pattern and mask and the target label; the next
                  int(p_cross * B) get the pattern and mask of another image (from the second loader) and keep
                  their label ("cross" samples); the rest stay clean.  Loss CE + lambda_div * diversity
                  (|x1 - x2| / |G(x1) - G(x2)|, l. 86-96).  p_attack = p_cross = 0.1 (``config.py`` l. 35-36).
                  G: Adam lr_G 0.01, betas (0.5, 0.9), MultiStepLR [200, 300, 400, 500] x 0.1 (``train.py`` l. 351,
                  353; ``config.py`` l. 19, 22, 25).  Classifier: PreAct-ResNet-18 on CIFAR-10 / GTSRB (l. 340-345),
                  SGD lr_C 0.01, momentum 0.9, weight decay 5e-4, MultiStepLR [100, 200, 300, 400] x 0.1 (l. 350,
                  352; ``config.py`` l. 20, 23, 26).  600 epochs (``n_iters``, ``config.py`` l. 28).  Target 0,
                  all2one (``config.py`` l. 33-34); all2all is (y + 1) mod C (``eval.py`` l. 14-21).
    augmentation  ``dataloader.py`` l. 43-51, ``config.py`` l. 40-41: random crop (padding 5), random rotation
                  10 degrees (not on MNIST), horizontal flip (CIFAR-10 only).

Threat model (the deviation).  The original trains the classifier jointly with G and owns the training loop.  Here,
as seed 003 (LfD, Tab. 1: "Dynamic, Varied, Mask Generator, 10 %"; Tab. 2 no-defense CIFAR-10 92.70 BA /
99.95 ASR) uses it, G and M are trained once with the recipe above against a *surrogate* classifier inside the
``generate`` stage (``train_generator``; the surrogate is discarded), then frozen; the poison stage stamps
fixed indices with G/M and the harness trains a fresh model on the poisoned set.  Cross samples are kept as
their own kind (``NOISE``: another training image's pattern and mask, label unchanged), ``cross_ratio`` x the
poisoned count (p_cross / p_attack = 1).  The generator's own batch fractions (``gen_p_attack``,
``gen_p_cross``) are separate from the poison stage's ``poison_rate`` / ``cross_ratio``, so every poison rate
shares one generator.

Other deviations: the release never zeroes G's gradients (``train.py`` l. 66 zeroes only the classifier's), so
its G steps on a running sum of gradients; here both are zeroed every step.  Its mask loss multiplies the
diversity term by lambda_div twice (l. 264, 268); here once (the same at lambda_div = 1).  Diversity pairs are
min(int(p_attack B), int(p_cross B)) (the release needs them equal).  At test time (and when poisoning) G and M
run in eval mode on CUDA when present, else on the CPU, in batches; the result is rounded to uint8.  G and M
read the image normalised with the dataset's mean / std on every dataset (the release feeds GTSRB unnormalised,
``models.py`` l. 91-92, 102-103).  The surrogate is whatever ``classifier`` names (the release's NetC_MNIST is
not in the zoo).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from bench.attack import Attack, AttackConfig, PoisonedSet, to_u8
from bench.augment import augment
from bench.data.imageset import DataInfo, ImageSet
from bench.models import create_model
from bench.registry import register_attack
from bench.train import check_finite, gen_for_device, pick_device

_EPS = 1e-7                     # models.py l. 82 / config.py l. 38
_BATCH = 512                    # images per inference call (memory only)


@dataclass(frozen=True)
class DynamicConfig(AttackConfig):
    target: int = 0                             # config.py l. 33 (LfD, seed 003 §5.1, uses 1)
    poison_rate: float = 0.1                    # config.py l. 35 p_attack; seed 003 Tab. 1: 10 %
    cross_ratio: float = 1.0                    # cross (NOISE) samples per poisoned one: p_cross / p_attack
    # -- the generator (generate stage); every field below is a generator field --
    gen_width: int = 32                         # models.py l. 47-49 (MNIST 16: per_dataset)
    gen_depth: int = 3                          # models.py l. 47-49 (MNIST 2: per_dataset)
    mask_density: float = 0.032                 # config.py l. 37
    lambda_div: float = 1.0                     # config.py l. 29
    lambda_norm: float = 100.0                  # config.py l. 30
    gen_p_attack: float = 0.1                   # config.py l. 35: backdoor share of each joint-training batch
    gen_p_cross: float = 0.1                    # config.py l. 36: cross share
    mask_epochs: int = 25                       # train.py l. 406
    gen_epochs: int = 600                       # config.py l. 28 (n_iters)
    gen_batch_size: int = 128                   # config.py l. 18
    mask_lr: float = 0.01                       # config.py l. 21
    gen_lr: float = 0.01                        # config.py l. 19
    classifier_lr: float = 0.01                 # config.py l. 20
    mask_milestones: tuple[int, ...] = (10, 20)                 # config.py l. 24
    gen_milestones: tuple[int, ...] = (200, 300, 400, 500)      # config.py l. 22
    classifier_milestones: tuple[int, ...] = (100, 200, 300, 400)   # config.py l. 23
    lr_gamma: float = 0.1                       # config.py l. 25-27
    classifier: str = "preact_resnet18"         # train.py l. 340-343 (the surrogate; MNIST: their NetC_MNIST)
    classifier_options: dict = field(default_factory=dict)
    gen_augment: tuple[str, ...] = ("crop", "rotate", "flip")   # dataloader.py l. 46-51 (CIFAR-10)
    crop_padding: int = 5                       # config.py l. 41
    rotate_degrees: float = 10.0                # config.py l. 40

    def __post_init__(self):
        super().__post_init__()
        if self.gen_width < 1 or self.gen_depth < 1 or self.cross_ratio < 0:
            raise ValueError("gen_width and gen_depth must be >= 1 and cross_ratio >= 0")
        if not (0 <= self.gen_p_attack <= 1 and 0 <= self.gen_p_cross <= 1
                and self.gen_p_attack + self.gen_p_cross <= 1):
            raise ValueError("gen_p_attack and gen_p_cross must lie in [0, 1] and sum to at most 1")
        if self.mask_epochs < 0 or self.gen_epochs < 0 or self.gen_batch_size < 1:
            raise ValueError("mask_epochs, gen_epochs >= 0 and gen_batch_size >= 1 are required")


class EncoderDecoder(nn.Module):
    """The release's pattern / mask network (module docstring): ``depth`` down and up stages, no skips.

    Input: the dataset-normalised image; output in (0, 1), ``out_channels`` channels.  The image side must be a
    multiple of 2 ** depth.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int, depth: int):
        super().__init__()

        def block(cin: int, cout: int, relu: bool = True) -> list[nn.Module]:
            layers = [nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout, momentum=0.05)]
            return layers + [nn.ReLU(inplace=True)] if relu else layers

        layers: list[nn.Module] = []
        cin = in_channels
        for i in range(depth):
            c = width * 2 ** i
            layers += [*block(cin, c), *block(c, c), nn.MaxPool2d(2)]
            cin = c
        layers += block(cin, cin)
        for i in range(depth):
            c = width * 2 ** (depth - 1 - i)
            last = i == depth - 1
            layers += [nn.Upsample(scale_factor=2, mode="bilinear"), *block(c, c),
                       *block(c, out_channels if last else c // 2, relu=not last)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(x)) / (2 + _EPS) + 0.5


def threshold(m: torch.Tensor) -> torch.Tensor:
    """The release's near-binary mask (models.py l. 124-125)."""
    return torch.tanh(m * 20 - 10) / (2 + _EPS) + 0.5


def _rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample root-mean-square distance [N]."""
    return (a - b).pow(2).mean(dim=(1, 2, 3)).sqrt()


@register_attack("dynamic", display_name="Dynamic")
class Dynamic(Attack):
    """Input-aware dynamic backdoor: a trained pattern + mask generator stamps each image with its own trigger."""

    Config = DynamicConfig
    per_dataset: ClassVar[dict] = {
        "mnist": {"gen_width": 16, "gen_depth": 2, "gen_augment": ("crop",)},   # models.py l. 44-46; no rotation
        "gtsrb": {"gen_augment": ("crop", "rotate")},                             # dataloader.py l. 48-51: no flip
    }
    generator_fields = ("target", "label_mode", "gen_width", "gen_depth", "mask_density", "lambda_div",
                        "lambda_norm", "gen_p_attack", "gen_p_cross", "mask_epochs", "gen_epochs", "gen_batch_size",
                        "mask_lr", "gen_lr", "classifier_lr", "mask_milestones", "gen_milestones",
                        "classifier_milestones", "lr_gamma", "classifier", "classifier_options", "gen_augment",
                        "crop_padding", "rotate_degrees")

    def __init__(self, cfg: DynamicConfig, info: DataInfo, seed: int):
        super().__init__(cfg, info, seed)
        if info.image_size % 2 ** cfg.gen_depth:
            raise ValueError(f"dynamic: image size {info.image_size} is not a multiple of 2 ** gen_depth "
                             f"({2 ** cfg.gen_depth})")
        self.net_g: EncoderDecoder | None = None
        self.net_m: EncoderDecoder | None = None
        self._mean = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1)

    # -- networks ------------------------------------------------------------------------------------
    def _nets(self) -> tuple[EncoderDecoder, EncoderDecoder]:
        c, cfg = self.info.in_channels, self.cfg
        return (EncoderDecoder(c, c, cfg.gen_width, cfg.gen_depth),
                EncoderDecoder(c, 1, cfg.gen_width, cfg.gen_depth))

    def _norm(self, x01: torch.Tensor) -> torch.Tensor:
        return (x01 - self._mean.to(x01)) / self._std.to(x01)

    def _aug(self, x_u8: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return augment(x_u8, self.cfg.gen_augment, gen, self.cfg.crop_padding,
                       params={"rotate": {"degrees": self.cfg.rotate_degrees}} if "rotate" in self.cfg.gen_augment
                       else None)

    # -- the generate stage ----------------------------------------------------------------------------
    def train_generator(self, train: ImageSet, device: torch.device,
                        surrogate: torch.nn.Module | None = None) -> tuple[dict[str, Any], dict[str, float]]:
        """Train M (mask stage), then G jointly with a fresh surrogate classifier -> (G and M state, metrics).

        Everything random comes from ``self.seed``: the initial weights (torch's global generator, reseeded
        here) and the two shuffles and augmentations (a CPU generator).  ``surrogate`` is not used: the paper's
        classifier starts from scratch with G.
        """
        cfg, info = self.cfg, self.info
        torch.manual_seed(self.seed)
        net_g, net_m = (n.to(device) for n in self._nets())
        classifier = create_model(cfg.classifier, info.num_classes, info.in_channels, info.image_size, info.mean,
                                  info.std, **cfg.classifier_options).to(device)
        gen = torch.Generator().manual_seed(self.seed)
        data = train.to(device)
        metrics: dict[str, float] = {}

        def batches():
            """The release's two shuffled loaders zipped: pairs of index batches."""
            n, b = len(data), cfg.gen_batch_size
            p1, p2 = torch.randperm(n, generator=gen), torch.randperm(n, generator=gen)
            for s in range(0, n, b):
                i1, i2 = p1[s:s + b].to(device), p2[s:s + b].to(device)
                yield (self._aug(data.images[i1], gen_for_device(gen, device)), data.labels[i1],
                       self._aug(data.images[i2], gen_for_device(gen, device)))

        # stage 1: the mask network alone
        opt_m = torch.optim.Adam(net_m.parameters(), cfg.mask_lr, betas=(0.5, 0.9))
        sched_m = torch.optim.lr_scheduler.MultiStepLR(opt_m, list(cfg.mask_milestones), cfg.lr_gamma)
        net_m.train()
        for _ in range(cfg.mask_epochs):
            tot = {"norm": 0.0, "div": 0.0, "n": 0}
            for x1, _, x2 in batches():
                n1, n2 = self._norm(x1), self._norm(x2)
                m1, m2 = threshold(net_m(n1)), threshold(net_m(n2))
                div = (_rms(n1, n2) / (_rms(m1, m2) + _EPS)).mean()
                norm = F.relu(m1 - cfg.mask_density).mean()
                loss = cfg.lambda_norm * norm + cfg.lambda_div * div
                opt_m.zero_grad(set_to_none=True)
                loss.backward()
                opt_m.step()
                tot["norm"] += float(norm.detach()) * len(x1)
                tot["div"] += float(div.detach()) * len(x1)
                tot["n"] += len(x1)
            sched_m.step()
            metrics |= {"mask_norm_loss": tot["norm"] / tot["n"], "mask_div_loss": tot["div"] / tot["n"]}
        check_finite(net_m, "dynamic mask network")
        net_m.eval().requires_grad_(False)

        # stage 2: the pattern network jointly with the surrogate classifier
        opt_c = torch.optim.SGD(classifier.parameters(), cfg.classifier_lr, momentum=0.9, weight_decay=5e-4)
        opt_g = torch.optim.Adam(net_g.parameters(), cfg.gen_lr, betas=(0.5, 0.9))
        sched_c = torch.optim.lr_scheduler.MultiStepLR(opt_c, list(cfg.classifier_milestones), cfg.lr_gamma)
        sched_g = torch.optim.lr_scheduler.MultiStepLR(opt_g, list(cfg.gen_milestones), cfg.lr_gamma)
        for _ in range(cfg.gen_epochs):
            net_g.train()
            classifier.train()
            hits = {"clean": [0, 0], "bd": [0, 0], "cross": [0, 0]}
            for x1, y1, x2 in batches():
                bs = len(x1)
                nb, nc = int(cfg.gen_p_attack * bs), int(cfg.gen_p_cross * bs)
                n1 = self._norm(x1[:nb])
                p1 = net_g(n1)
                bd = x1[:nb] + (p1 - x1[:nb]) * threshold(net_m(n1))
                n2 = self._norm(x2[nb:nb + nc])
                p2 = net_g(n2)
                cross = x1[nb:nb + nc] + (p2 - x1[nb:nb + nc]) * threshold(net_m(n2))
                targets = torch.cat([self.target_labels(y1[:nb]), y1[nb:]])
                logits = classifier(torch.cat([bd, cross, x1[nb + nc:]]))
                loss = F.cross_entropy(logits, targets)
                k = min(nb, nc)
                if k and cfg.lambda_div:
                    d_img = _rms(self._norm(x1[:k]), self._norm(x2[nb:nb + k]))
                    d_pat = _rms(self._norm(p1[:k]), self._norm(p2[:k]))
                    loss = loss + cfg.lambda_div * (d_img / (d_pat + _EPS)).mean()
                opt_c.zero_grad(set_to_none=True)
                opt_g.zero_grad(set_to_none=True)
                loss.backward()
                opt_c.step()
                opt_g.step()
                right = (logits.argmax(1) == targets).detach()
                for name, sl in (("bd", slice(0, nb)), ("cross", slice(nb, nb + nc)), ("clean", slice(nb + nc, bs))):
                    hits[name][0] += int(right[sl].sum())
                    hits[name][1] += int(right[sl].numel())
            sched_c.step()
            sched_g.step()
            metrics |= {f"train_{k}_acc": h / max(t, 1) for k, (h, t) in hits.items()}
        check_finite(net_g, "dynamic pattern network")
        net_g.eval()
        with torch.no_grad():
            sample = data.images[:min(len(data), 1024)].float() / 255
            metrics["mask_mean"] = float(threshold(net_m(self._norm(sample))).mean())
        state = {"net_g": {k: v.detach().cpu().clone() for k, v in net_g.state_dict().items()},
                 "net_m": {k: v.detach().cpu().clone() for k, v in net_m.state_dict().items()}}
        return state, metrics

    def load_generator(self, state: dict[str, Any]) -> None:
        net_g, net_m = self._nets()
        net_g.load_state_dict(state["net_g"])
        net_m.load_state_dict(state["net_m"])
        device = pick_device()
        self.net_g, self.net_m = net_g.to(device).eval(), net_m.to(device).eval()

    # -- stamping ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def pattern_and_mask(self, x_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """G(x) float [N, C, H, W] and the thresholded M(x) float [N, 1, H, W], both in [0, 1], on the CPU."""
        if self.net_g is None or self.net_m is None:
            raise RuntimeError("dynamic: no generator loaded (load_generator)")
        device = next(self.net_g.parameters()).device
        pats, masks = [], []
        for s in range(0, len(x_u8), _BATCH):
            n = self._norm(x_u8[s:s + _BATCH].to(device).float() / 255)
            pats.append(self.net_g(n).float().cpu())
            masks.append(threshold(self.net_m(n)).float().cpu())
        c, h, w = x_u8.shape[1:]
        if not pats:
            return torch.zeros(0, c, h, w), torch.zeros(0, 1, h, w)
        return torch.cat(pats), torch.cat(masks)

    @staticmethod
    def blend(x_u8: torch.Tensor, pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x + (pattern - x) * mask in [0, 1], rounded to uint8 (on x's device)."""
        x = x_u8.float().cpu() / 255
        return to_u8(x + (pattern - x) * mask).to(x_u8.device)

    def apply_trigger(self, x_u8: torch.Tensor, train: bool) -> torch.Tensor:
        """Each image with its own pattern and mask (the same at train and test time)."""
        return self.blend(x_u8, *self.pattern_and_mask(x_u8))

    def apply_cross(self, x_u8: torch.Tensor, other_u8: torch.Tensor) -> torch.Tensor:
        """Cross samples: each image with the pattern and mask of the matching ``other`` image."""
        return self.blend(x_u8, *self.pattern_and_mask(other_u8))

    def poison(self, train: ImageSet, generator: torch.Generator, clean_model=None) -> PoisonedSet:
        def cross(noise_idx: torch.Tensor) -> torch.Tensor:
            # each cross sample takes the pattern and mask of another training image (the release's second loader)
            shift = torch.randint(1, max(len(train), 2), (len(noise_idx),), generator=generator)
            return self.apply_cross(train.images[noise_idx], train.images[(noise_idx + shift) % len(train)])

        return self.poison_with_noise(train, generator, self.cfg.cross_ratio, cross)
