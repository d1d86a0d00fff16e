"""Training recipes: named presets of one frozen ``Recipe`` dataclass, each citing its source.

A sweep names a recipe (``recipe: mcl_paper``) and may override fields (``{name: mcl_paper, epochs: 10}``);
per-dataset differences are the preset's ``per_dataset`` overlay (MCL trains GTSRB with lr 0.01).
Milestones are in epochs and must lie below ``epochs``: a profile that shortens training restates them.
"""
from __future__ import annotations

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
    schedule: Literal["none", "multistep", "cosine", "step"] = "multistep"
    milestones: tuple[int, ...] = ()      # epochs at which lr is multiplied by gamma (multistep)
    step_size: int = 30                   # epochs per decay (step)
    gamma: float = 0.1
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
        bad = [m for m in self.milestones if not 0 < m < max(self.epochs, 1)]
        if self.schedule == "multistep" and bad:
            raise ValueError(f"milestones {list(self.milestones)} must lie in (0, epochs={self.epochs}); "
                             "restate them when you change epochs")


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

# D-BR / D-ST (seed 001) §5.1 and the authors' train_attack_withTrans.py: ResNet-18, SGD lr 0.01, momentum 0.9,
# wd 5e-4, batch 128, 200 epochs, MultiStepLR [100, 150] x 0.1, RandomCrop(pad 4) + HFlip.
register_recipe("dbr_paper", display_name="D-BR paper")(
    Recipe(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=128, epochs=200,
           schedule="multistep", milestones=(100, 150), gamma=0.1, augment=("crop", "flip")))

# LfD (seed 003) §5.1: ResNet-18 students trained with Adam lr 1e-3, cosine schedule, 80 epochs, crop + flip.
register_recipe("lfd_paper", display_name="LfD paper")(
    Recipe(optimizer="adam", lr=1e-3, momentum=0.9, weight_decay=0.0, batch_size=128, epochs=80,
           schedule="cosine", augment=("crop", "flip")))

# Not from a paper: the quickstart / test recipe for the small CNN on CPU-scale data.
register_recipe("quick", display_name="Quick (CPU)")(
    Recipe(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=64, epochs=30,
           schedule="cosine", augment=()))
