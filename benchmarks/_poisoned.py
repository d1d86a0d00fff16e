"""The poisoned CIFAR-10 training set a benchmark measures against, built as the sweep's poison stage builds it
(the attack from its registry entry, the poisoned indices from the seed's "poison" stream)."""
from __future__ import annotations

import json
from typing import NamedTuple

import torch

from bench.attack import CLEAN, Attack
from bench.data.datasets import load_dataset
from bench.data.imageset import DataBundle, ImageSet
from bench.registry import ATTACKS, DATASETS
from bench.train import stream_seed


class Poisoned(NamedTuple):
    bundle: DataBundle        # the clean data (true labels in bundle.train)
    attack: Attack
    train: ImageSet           # the poisoned training set as the defender sees it
    kind: torch.Tensor        # int8 [N]: the poison stage's ground truth per sample (bench.attack.CLEAN, ...)

    @property
    def is_poison(self) -> torch.Tensor:
        return self.kind != CLEAN


def poisoned_cifar10(data_root: str, train_size: int, attack_json: str, seed: int) -> Poisoned:
    """``train_size`` images (0: all 50,000) and a 2,000-image test set when limited, poisoned by the attack
    ``attack_json`` (a JSON object with its ``name`` and options)."""
    opts = {"limit_seed": 0, **({"train_limit": train_size, "test_limit": 2000} if train_size else {})}
    bundle = load_dataset("cifar10", DATASETS.get("cifar10").parse(opts), data_root)
    spec = json.loads(attack_json)
    entry = ATTACKS.get(spec.pop("name"))
    attack = entry.obj(entry.parse(spec), bundle.info(), seed)
    poisoned = attack.poison(bundle.train, torch.Generator().manual_seed(stream_seed(seed, "poison")))
    return Poisoned(bundle, attack, poisoned.apply(bundle.train), poisoned.kind)
