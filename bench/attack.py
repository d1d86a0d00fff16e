"""The attack interface and the poison-rate semantics every data-poisoning attack shares.

An attack is built from its frozen config, the dataset facts and a seed; everything random about its trigger
is drawn from that seed in ``__init__`` (or kept in ``state()``), so the poison stage and the evaluate stage
rebuild the same trigger.  Triggers act on uint8 images in [0, 255], before augmentation and normalisation.

Poison rate (../shared/DESIGN.md):
    ``poison_count`` (absolute, seed 002) wins over ``poison_rate``.  ``poison_rate`` is a fraction of the
    ``poison_base`` pool: ``non_target`` (default for dirty-label all2one: 10 % of the non-target samples =
    4,500 on CIFAR-10), ``target_class`` (default for clean-label attacks) or ``all`` (default for all2all).
    Each sweep states the pool of the seed it reproduces: MCL's (and NAD's) code draws int(0.1 × 50,000) = 5,000
    indices of the whole training set and stamps them all, the target-class picks keeping their label
    (WeCanShow/MCL ``data_loader.py`` l. 217-241), so the MCL sweeps set ``poison_base: all``; its clean-label
    CL and SIG stamp 0.8 of the target class (``poison_rate: 0.8``, ``target_class``).  The realised count is
    stored with the poisoned set.
ASR/RA use ``stamp_test``: all2one keeps the non-target test images, all2all keeps all with target (y+1) mod C.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Optional

import torch

from bench.data.imageset import DataInfo, ImageSet

CLEAN, POISONED, NOISE = 0, 1, 2          # ground-truth kind per training sample


@dataclass(frozen=True)
class AttackConfig:
    """Fields shared by every attack; each attack's Config subclasses this with its paper's defaults."""

    target: int = 0                                   # all2one target class
    label_mode: Literal["all2one", "all2all"] = "all2one"
    poison_rate: float = 0.1                          # fraction of the poison_base pool
    poison_count: Optional[int] = None                # absolute count; overrides poison_rate
    poison_base: Optional[Literal["all", "non_target", "target_class"]] = None   # None = per attack kind

    def __post_init__(self):
        if not 0.0 <= self.poison_rate <= 1.0:
            raise ValueError(f"poison_rate must be in [0, 1], got {self.poison_rate}")
        if self.poison_count is not None and self.poison_count < 0:
            raise ValueError(f"poison_count must be >= 0, got {self.poison_count}")


@dataclass(frozen=True)
class CleanLabelConfig(AttackConfig):
    """Base of clean-label attacks (SIG, CL): labels are never changed, so only all2one makes sense."""

    def __post_init__(self):
        super().__post_init__()
        if self.label_mode != "all2one":
            raise ValueError(f"{type(self).__name__} is clean-label: label_mode must be all2one")


@dataclass(frozen=True)
class Trigger:
    """A trigger in [0, 1] units: x' = clip((1 - mask) * x + mask * pattern + offset, 0, 1).

    mask: float [1 or C, H, W] in [0, 1]; pattern: float [C, H, W] in [0, 1]; offset: float [1 or C, H, W] in
    [-1, 1] or None.  Patch and blend triggers are a mask and a pattern (offset None: MCL Eq. 1 exactly);
    additive triggers (SIG's sinusoid, Trojan's added square, the chessboard) are an offset with an all-zero
    mask, so MCL's x_hat = T(x) and MESA's box work for every attack that has a fixed trigger.
    """

    mask: torch.Tensor
    pattern: torch.Tensor
    offset: Optional[torch.Tensor] = None

    def apply(self, x01: torch.Tensor) -> torch.Tensor:
        m, p = self.mask.to(x01), self.pattern.to(x01)
        out = (1 - m) * x01 + m * p
        return out if self.offset is None else (out + self.offset.to(x01)).clamp(0, 1)

    def support(self) -> torch.Tensor:
        """bool [H, W]: the pixels the trigger touches (mask > 0 or offset != 0 on any channel)."""
        s = self.mask.reshape(-1, *self.mask.shape[-2:]).amax(0) > 0
        if self.offset is not None:
            s = s | (self.offset.reshape(-1, *self.offset.shape[-2:]).abs().amax(0) > 0)
        return s

    @classmethod
    def additive(cls, signal: torch.Tensor, channels: int) -> "Trigger":
        """An added signal in pixel units [1|C, H, W] as a trigger (x' = clip(x + signal / 255))."""
        h, w = signal.shape[-2:]
        return cls(torch.zeros(1, h, w), torch.zeros(channels, h, w), signal.float() / 255)


@dataclass
class PoisonedSet:
    """The poison stage's output, kept as ground truth with the artifact.

    Attributes:
        labels: int64 [N] training labels after poisoning.
        kind: int8 [N] CLEAN / POISONED / NOISE per training sample.
        changed_idx: int64 [M] indices whose images differ from the clean set.
        changed_images: uint8 [M, C, H, W] their new images.
        params: JSON-able facts (realised count, pool size, trigger parameters).
        state: tensors the attack needs at test time (for optimised or random triggers).
    """

    labels: torch.Tensor
    kind: torch.Tensor
    changed_idx: torch.Tensor
    changed_images: torch.Tensor
    params: dict[str, Any] = field(default_factory=dict)
    state: dict[str, torch.Tensor] = field(default_factory=dict)

    def apply(self, clean: ImageSet) -> ImageSet:
        images = clean.images.clone()
        if len(self.changed_idx):
            images[self.changed_idx.to(images.device)] = self.changed_images.to(images.device)
        return ImageSet(images, self.labels.to(clean.labels.device))

    @property
    def poison_idx(self) -> torch.Tensor:
        return torch.nonzero(self.kind == POISONED).flatten()

    def to_dict(self) -> dict[str, Any]:
        return {"labels": self.labels, "kind": self.kind, "changed_idx": self.changed_idx,
                "changed_images": self.changed_images, "params": self.params, "state": self.state}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PoisonedSet":
        return cls(d["labels"], d["kind"], d["changed_idx"], d["changed_images"], d["params"], d.get("state", {}))


class Attack:
    """Base class. Subclasses set ``Config``, ``label_type`` and implement ``apply_trigger``.

    The default ``poison`` selects indices by the shared rate semantics, stamps them with ``apply_trigger``
    and relabels them (dirty-label) or keeps their labels (clean-label).  Attacks that need more (noise
    samples, optimised triggers) override ``poison``.
    """

    Config: ClassVar[type] = AttackConfig
    label_type: ClassVar[Literal["dirty", "clean"]] = "dirty"
    needs_clean_model: ClassVar[bool] = False         # True: the poison stage receives a harness-trained clean model
    # Config fields a trained trigger generator depends on (non-empty: the attack has a ``generate`` stage, keyed
    # by the dataset, the seed and these fields only, so a change of poison rate or target of a label-agnostic
    # generator reuses it; see ``train_generator``).
    generator_fields: ClassVar[tuple[str, ...]] = ()
    name: ClassVar[str]
    version: ClassVar[int]

    def __init__(self, cfg: AttackConfig, info: DataInfo, seed: int):
        if cfg.target >= info.num_classes:
            raise ValueError(f"target {cfg.target} is not a class of {info.name} ({info.num_classes} classes)")
        self.cfg, self.info, self.seed = cfg, info, seed
        self.generator = torch.Generator().manual_seed(seed)

    # -- what an attack defines ---------------------------------------------------------------
    def apply_trigger(self, x_u8: torch.Tensor, train: bool) -> torch.Tensor:
        """Stamp uint8 [N, C, H, W] images; ``train`` selects train-time vs test-time strength."""
        raise NotImplementedError

    def true_trigger(self) -> Trigger | None:
        """The mask + pattern of this attack when it is one (for MCL(True) and checks); else None."""
        return None

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what ``state()`` returned (optimised triggers); random ones are rebuilt from the seed."""

    # -- attacks with a trained generator (``generator_fields`` non-empty) ----------------------------------
    def train_generator(self, train: ImageSet, device: torch.device,
                        surrogate: torch.nn.Module | None = None) -> tuple[dict[str, Any], dict[str, float]]:
        """Train the trigger generator once (the ``generate`` stage) -> (its state, its metrics).

        ``train`` is the clean training set; ``surrogate`` the harness's clean model when ``needs_clean_model``.
        The state is stored as the stage's artifact and handed to ``load_generator`` in every later stage
        (poison, defend, evaluate) of every cell and sweep that shares the generator's key.  Metrics (e.g. an
        encoder's bit accuracy and PSNR) are stored with the stage.  Everything random is drawn from
        ``self.seed`` (the caller seeds torch's global generators with it too).
        """
        raise NotImplementedError(f"{type(self).__name__} declares generator_fields but no train_generator")

    def load_generator(self, state: dict[str, Any]) -> None:
        """Install a trained generator (what ``train_generator`` returned) before ``poison`` / ``stamp_test``."""
        raise NotImplementedError(f"{type(self).__name__} declares generator_fields but no load_generator")

    # -- shared mechanics ---------------------------------------------------------------------
    def target_labels(self, y: torch.Tensor) -> torch.Tensor:
        if self.cfg.label_mode == "all2all":
            return (y + 1) % self.info.num_classes
        return torch.full_like(y, self.cfg.target)

    def default_base(self) -> str:
        if self.label_type == "clean":
            return "target_class"
        return "all" if self.cfg.label_mode == "all2all" else "non_target"

    def select(self, labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """Seeded choice of the poisoned indices -> (sorted indices, pool size)."""
        return select_poison_indices(labels, self.cfg, self.cfg.poison_base or self.default_base(), generator)

    def poison(self, train: ImageSet, generator: torch.Generator, clean_model=None) -> PoisonedSet:
        idx, pool = self.select(train.labels, generator)
        labels = train.labels.clone()
        if self.label_type == "dirty":
            labels[idx] = self.target_labels(train.labels[idx])
        kind = torch.zeros(len(train), dtype=torch.int8)
        kind[idx] = POISONED
        images = self.apply_trigger(train.images[idx], train=True) if len(idx) else train.images[idx]
        params = {"poisoned": int(len(idx)), "pool": pool, "base": self.cfg.poison_base or self.default_base(),
                  "label_type": self.label_type}
        return PoisonedSet(labels, kind, idx, images, params, self.state())

    def poison_with_noise(self, train: ImageSet, generator: torch.Generator, ratio: float,
                          noise_images: Callable[[torch.Tensor], torch.Tensor], **params: Any) -> PoisonedSet:
        """Dirty-label poisoning plus "noise" samples, which teach the model that a trigger-like change alone does
        not mean the target (WaNet's noise mode, Dynamic's cross samples): ``ratio`` x the poison count of the
        other images keep their label, are marked NOISE and get ``noise_images(their indices)``."""
        idx, pool = self.select(train.labels, generator)
        n_noise = int(round(ratio * len(idx)))
        rest = torch.nonzero(torch.isin(torch.arange(len(train)), idx.cpu(), invert=True)).flatten()
        if n_noise > len(rest):
            raise ValueError(f"cross_ratio {ratio} asks for {n_noise} noise samples; "
                             f"only {len(rest)} unpoisoned samples remain")
        noise_idx = torch.sort(rest[torch.randperm(len(rest), generator=generator)[:n_noise]]).values
        labels = train.labels.clone()
        labels[idx] = self.target_labels(train.labels[idx])
        kind = torch.full((len(train),), CLEAN, dtype=torch.int8)
        kind[idx], kind[noise_idx] = POISONED, NOISE
        changed = torch.cat([idx, noise_idx])
        images = torch.cat([self.apply_trigger(train.images[idx], train=True), noise_images(noise_idx)])
        order = torch.argsort(changed)
        params = {"poisoned": int(len(idx)), "noise": n_noise, "pool": pool,
                  "base": self.cfg.poison_base or self.default_base(), "label_type": self.label_type, **params}
        return PoisonedSet(labels, kind, changed[order], images[order], params, self.state())

    def stamp_test(self, x_u8: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Test-time trigger -> (triggered uint8 images, attack target labels, keep mask for ASR/RA).

        all2one keeps the test images whose true label is not the target; all2all keeps every image.
        """
        keep = torch.ones_like(y, dtype=torch.bool) if self.cfg.label_mode == "all2all" else y != self.cfg.target
        return self.apply_trigger(x_u8, train=False), self.target_labels(y), keep


def select_poison_indices(labels: torch.Tensor, cfg: AttackConfig, base: str,
                          generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """Indices to poison under ``base`` (all | non_target | target_class) -> (sorted int64 indices, pool size)."""
    if base == "all":
        pool = torch.arange(len(labels))
    elif base == "non_target":
        pool = torch.nonzero(labels != cfg.target).flatten()
    elif base == "target_class":
        pool = torch.nonzero(labels == cfg.target).flatten()
    else:
        raise ValueError(f"poison_base must be all | non_target | target_class, got {base!r}")
    n = cfg.poison_count if cfg.poison_count is not None else int(round(cfg.poison_rate * len(pool)))
    if n > len(pool):
        raise ValueError(f"poison_count {n} exceeds the {base} pool of {len(pool)} samples")
    perm = torch.randperm(len(pool), generator=generator)[:n]
    return torch.sort(pool[perm]).values, int(len(pool))


def to_unit(x_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [0, 1]."""
    return x_u8.float().div_(255.0)


def to_u8(x01: torch.Tensor) -> torch.Tensor:
    """float [0, 1] -> uint8 [0, 255], rounded and clamped."""
    return x01.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
