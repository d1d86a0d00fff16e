"""Shared fixtures for the attack tests: embedded datasets, attack construction, and a tiny model trainer."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.data.datasets import DigitsConfig, SyntheticConfig, load_dataset
from bench.data.imageset import DataBundle, DataInfo, ImageSet
from bench.models import create_model
from bench.registry import ATTACKS, RECIPES
from bench.train import fit

torch.set_num_threads(1)   # tests share a few CPU cores


@pytest.fixture(scope="session")
def digits() -> DataBundle:
    """scikit-learn's digits: 1 channel, 16x16, 10 classes, 1,437 training images."""
    return load_dataset("digits", DigitsConfig())


@pytest.fixture(scope="session")
def synthetic() -> DataBundle:
    """Generated 3-channel 16x16 images, 4 classes, 512 training images."""
    return load_dataset("synthetic", SyntheticConfig())


@pytest.fixture
def make_attack():
    """make_attack(name, info, seed=0, **options) -> the registered attack built from checked options."""
    def build(name: str, info: DataInfo, seed: int = 0, **options):
        entry = ATTACKS.get(name)
        return entry.obj(entry.parse(options, dataset=info.name), info, seed)
    return build


def tiny_model(info: DataInfo, seed: int = 0) -> torch.nn.Module:
    """An untrained small CNN (width 16) for ``info``, initialised from ``seed``."""
    torch.manual_seed(seed)
    return create_model("small_cnn", info.num_classes, info.in_channels, info.image_size, info.mean, info.std,
                        width=16)


@pytest.fixture
def untrained_model():
    """untrained_model(info, seed=0) -> a small CNN with random weights (a cheap stand-in surrogate)."""
    return tiny_model


@pytest.fixture
def train_tiny():
    """train_tiny(info, train: ImageSet, epochs=5, seed=0) -> a small CNN fitted with the 'quick' recipe on CPU.

    About 3 s for 5 epochs on digits with one thread.
    """
    def train(info: DataInfo, train_set: ImageSet, epochs: int = 5, seed: int = 0) -> torch.nn.Module:
        _, recipe = RECIPES.resolve("quick", "recipe")
        model = tiny_model(info, seed)
        return fit(model, train_set, dataclasses.replace(recipe, epochs=epochs), seed=seed,
                   device=torch.device("cpu"))
    return train
