"""Training recipes: named presets of one frozen ``Recipe`` dataclass, each citing its source.

A sweep names a recipe (``recipe: mcl_paper``) and may override fields (``{name: mcl_paper, epochs: 10}``);
per-dataset differences are the preset's ``per_dataset`` overlay (MCL trains GTSRB with lr 0.01).
Milestones are in epochs and must lie below ``epochs``: a profile that shortens training restates them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from bench.registry import register_recipe

Augment = Literal["crop", "flip", "rotate", "translate", "color_jitter", "grayscale", "resized_crop"]


@dataclass(frozen=True)
class Recipe:
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    batch_size: int = 128
    epochs: int = 100
    schedule: Literal["none", "multistep", "cosine", "step", "piecewise_linear"] = "multistep"
    milestones: tuple[int, ...] = ()      # epochs at which lr is multiplied by gamma (multistep)
    step_size: int = 30                   # epochs per decay (step)
    gamma: float = 0.1
    # SupContrast's cosine (util.py adjust_learning_rate): floor eta_min = lr * eta_min (a fraction; theirs is
    # lr_decay_rate ** 3 = 1e-3), epochs counted from 1.  0 keeps PyTorch's CosineAnnealingLR to 0.
    eta_min: float = 0.0
    # SupContrast's warm-up (util.py warmup_learning_rate, on when batch > 256): lr rises linearly per
    # iteration from ``warmup_from`` to the schedule's value at the end of the warm-up, over ``warmup_epochs``.
    warmup_epochs: int = 0
    warmup_from: float = 0.01
    augment: tuple[Augment, ...] = ("crop", "flip")
    crop_padding: int = 4
    # Drop the last, partial batch of each epoch (when the set holds more than one batch). The data are
    # reshuffled every epoch, so no sample is lost for good; a tail of a few images (2,500 % 64 = 4 in the 5 %
    # CIFAR-10 subset) gives BatchNorm near-degenerate batch statistics, which measurably wrecks fine-tuning on
    # small clean subsets (BA 100 % -> 30 % on digits in 5 epochs at lr 0.01). Set false for the papers' loaders.
    drop_last: bool = True
    augment_params: dict = field(default_factory=dict)   # per-op overrides, e.g. {"rotate": {"degrees": 20}}
    amp: bool = True                      # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True            # on CUDA
    deterministic: bool = False           # cudnn deterministic + no benchmark, for audit runs

    def __post_init__(self):
        if self.epochs < 0 or self.batch_size < 1 or self.lr < 0:
            raise ValueError("epochs >= 0, batch_size >= 1 and lr >= 0 are required")
        if self.warmup_epochs < 0 or not 0 <= self.eta_min <= 1:
            raise ValueError(f"warmup_epochs >= 0 and eta_min in [0, 1] are required, got {self.warmup_epochs}, "
                             f"{self.eta_min}")
        bad = [m for m in self.milestones if not 0 < m < max(self.epochs, 1)]
        if self.schedule == "multistep" and bad:
            raise ValueError(f"milestones {list(self.milestones)} must lie in (0, epochs={self.epochs}); "
                             "restate them when you change epochs")


def lr_factor(recipe: Recipe, epoch: int) -> float:
    """The lr multiplier of 0-based ``epoch`` for the closed-form schedules (``uses_lambda_schedule``).

    ``cosine`` with a floor or warm-up: SupContrast ``util.py`` ``adjust_learning_rate`` at its 1-based epoch
    e = epoch + 1: eta + (1 - eta) (1 + cos(pi e / E)) / 2.  ``piecewise_linear``: Garipov et al.'s
    ``learning_rate_schedule`` (IBM/model-sanitization ``backdoor/backdoor-cifar/train.py`` l. 117-125), at
    a = e / E: 1 up to a = 0.5, then linear down to 0.01 at a = 0.9, then 0.01.
    """
    e, total = epoch + 1, max(recipe.epochs, 1)
    if recipe.schedule == "piecewise_linear":
        a = e / total
        return 1.0 if a <= 0.5 else (1.0 - (a - 0.5) / 0.4 * 0.99 if a <= 0.9 else 0.01)
    if recipe.schedule == "cosine":
        return recipe.eta_min + (1 - recipe.eta_min) * (1 + math.cos(math.pi * e / total)) / 2
    raise ValueError(f"lr_factor has no closed form for schedule {recipe.schedule!r}")


def uses_lambda_schedule(recipe: Recipe) -> bool:
    return recipe.schedule == "piecewise_linear" or (recipe.schedule == "cosine"
                                                     and (recipe.eta_min > 0 or recipe.warmup_epochs > 0))


def warmup_lr(recipe: Recipe, epoch: int, batch: int, n_batches: int) -> float | None:
    """SupContrast's per-iteration warm-up lr (``util.py`` ``warmup_learning_rate``), None after the warm-up.

    Linear from ``warmup_from`` at the first iteration towards the schedule's lr at the last warm-up epoch
    (``warmup_to``: ``main_supcon.py`` l. 113-118).
    """
    if epoch >= recipe.warmup_epochs:
        return None
    p = (batch + epoch * n_batches) / (recipe.warmup_epochs * n_batches)
    target = recipe.lr * (lr_factor(recipe, recipe.warmup_epochs - 1) if uses_lambda_schedule(recipe) else 1.0)
    return recipe.warmup_from + p * (target - recipe.warmup_from)


# MCL (seed 000) App. A.2 "Training Setting": WRN-16-1, SGD lr 0.1 (0.01 on GTSRB), momentum 0.9, wd 1e-4, batch 64,
# 50 epochs with lr / 10 at epochs 20 and 35; no augmentation while planting the backdoor.
register_recipe("mcl_paper", per_dataset={"gtsrb": {"lr": 0.01},
                                          # ImageNet subset (App. A.3): ResNet-18 at 224, 100 epochs, /10 at 20 and 70,
                                          # batch 32, crop + flip.
                                          "imagenet_subset": {"epochs": 100, "milestones": (20, 70),
                                                              "batch_size": 32, "augment": ("crop", "flip")}},
                display_name="MCL paper")(
    Recipe(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, batch_size=64, epochs=50,
           schedule="multistep", milestones=(20, 35), gamma=0.1, augment=()))

# D-BR / D-ST (seed 001) §5.1 and the authors' train_attack_withTrans.py (SCLBD/Effective_backdoor_defense): ResNet-18,
# SGD lr 0.01, momentum 0.9, wd 5e-4, batch 128, 200 epochs, MultiStepLR [100, 150] x 0.1 (utils/args.py l. 19-39),
# RandomCrop(pad 4) + HFlip; CIFAR-100 adds RandomRotation(15) after them (utils/dataloader_bd.py l. 631-634).
# Their loaders keep the last batch and train in fp32 (no autocast): drop_last and amp off here too.
# ImageNet subset: the README's train_attack_withTrans_imagenet.py run fine-tunes an ImageNet-pretrained
# torchvision ResNet-18 (utils/network.py: resnet18(True), new fc) for 25 epochs at lr 0.001, /10 at 15 and 20,
# RandomRotation(20) + HFlip, wd 1e-4 (train_attack_withTrans_imagenet.py l. 101); the model side of it is the
# ``pretrained`` option of resnet18 (bench/models/pretrained.py), set in sweeps/dbr_table5_imagenet.yaml.
register_recipe("dbr_paper", display_name="D-BR paper",
                per_dataset={"cifar100": {"augment": ("crop", "flip", "rotate"),
                                          "augment_params": {"rotate": {"degrees": 15}}},
                             "imagenet_subset": {"epochs": 25, "lr": 0.001, "milestones": (15, 20),
                                                 "weight_decay": 1e-4, "augment": ("rotate", "flip"),
                                                 "augment_params": {"rotate": {"degrees": 20}}}})(
    Recipe(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=128, epochs=200,
           schedule="multistep", milestones=(100, 150), gamma=0.1, augment=("crop", "flip"), drop_last=False,
           amp=False))

# LfD (seed 003) §5.1: ResNet-18 students trained with Adam lr 1e-3, cosine schedule, 80 epochs, crop + flip.
register_recipe("lfd_paper", display_name="LfD paper")(
    Recipe(optimizer="adam", lr=1e-3, momentum=0.9, weight_decay=0.0, batch_size=128, epochs=80,
           schedule="cosine", augment=("crop", "flip")))

# Not from a paper: the quickstart / test recipe for the small CNN on CPU-scale data.
register_recipe("quick", display_name="Quick (CPU)")(
    Recipe(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=64, epochs=30,
           schedule="cosine", augment=()))
