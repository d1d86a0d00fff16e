"""bench.train: the small CNN learns digits, training is reproducible per seed, schedules follow the epochs,
zero-weighted samples have no influence, and recipes reject milestones outside the run.

CPU only and short: width-16 small CNN on the embedded 16x16 digits (1,437 training images).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.config import ConfigError
from bench.data.datasets import DigitsConfig, load_dataset
from bench.models import create_model
from bench.recipes import Recipe
from bench.registry import RECIPES
from bench.train import fit, make_optimizer, make_scheduler, predict, seed_everything

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", DigitsConfig())


def quick(**overrides) -> Recipe:
    """The registered 'quick' recipe, shortened (its cosine schedule follows the new epoch count)."""
    return dataclasses.replace(RECIPES.get("quick").obj, **overrides)


def train(digits, recipe: Recipe, seed: int, data=None, sample_weight=None, width: int = 16):
    seed_everything(seed)                                 # the model's initialisation
    model = create_model("small_cnn", digits.num_classes, digits.in_channels, digits.image_size,
                         digits.mean, digits.std, width=width)
    return fit(model, data or digits.train, recipe, device=CPU, seed=seed, sample_weight=sample_weight)


def params_of(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------------------------------------- learning


def test_small_cnn_reaches_90_percent_on_digits(digits):
    model = train(digits, quick(epochs=8), seed=0)
    acc = (predict(model, digits.test.images, CPU) == digits.test.labels).float().mean().item()
    assert acc >= 0.90, f"test accuracy {acc:.3f}"


def test_crop_flip_training_runs_and_learns(digits):
    model = train(digits, quick(epochs=4, augment=("crop", "flip"), crop_padding=2), seed=0)
    acc = (predict(model, digits.test.images, CPU) == digits.test.labels).float().mean().item()
    assert acc >= 0.5, f"test accuracy {acc:.3f}"      # flips are wrong for digits; it must still learn


# ------------------------------------------------------------------------------------------------- seeding


def test_same_seed_twice_gives_identical_weights(digits):
    recipe = quick(epochs=2, augment=("crop", "flip"))
    a, b = train(digits, recipe, seed=3), train(digits, recipe, seed=3)
    assert same(params_of(a), params_of(b))
    assert all(torch.equal(x, y) for x, y in zip(a.buffers(), b.buffers(), strict=True))   # BN running statistics too


def test_different_seeds_give_different_weights(digits):
    recipe = quick(epochs=2)
    assert not same(params_of(train(digits, recipe, seed=3)), params_of(train(digits, recipe, seed=4)))


# ------------------------------------------------------------------------------------------------- schedules


def lrs_per_epoch(recipe: Recipe) -> list[float]:
    """The lr in force during each epoch, stepping the scheduler once per epoch as ``fit`` does, plus the lr
    after the last epoch."""
    opt = make_optimizer([torch.nn.Parameter(torch.zeros(1))], recipe)
    sched = make_scheduler(opt, recipe)
    out = []
    for _ in range(recipe.epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out + [opt.param_groups[0]["lr"]]


@pytest.mark.parametrize("epochs", [4, 10])
def test_cosine_schedule_spans_the_epochs(epochs):
    lrs = lrs_per_epoch(Recipe(lr=0.2, epochs=epochs, schedule="cosine"))
    assert lrs[0] == pytest.approx(0.2)
    assert lrs[epochs // 2] == pytest.approx(0.1)                                   # half way: lr / 2
    assert lrs[-2] > 0 and lrs[-1] == pytest.approx(0.0, abs=1e-12)                 # reaches 0 at the end
    assert all(a > b for a, b in zip(lrs[:-1], lrs[1:], strict=True))


def test_multistep_schedule_follows_its_milestones():
    lrs = lrs_per_epoch(Recipe(lr=0.1, epochs=6, schedule="multistep", milestones=(2, 4), gamma=0.1))
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.001])


def test_paper_recipe_lr_after_its_last_epoch():
    mcl = RECIPES.get("mcl_paper").obj                   # 50 epochs, /10 at 20 and 35
    assert lrs_per_epoch(mcl)[-1] == pytest.approx(mcl.lr * 0.01)
    lfd = RECIPES.get("lfd_paper").obj                   # cosine over its 80 epochs
    assert lrs_per_epoch(lfd)[-1] == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------------------- sample weights


def test_zero_weighted_samples_have_no_influence(digits):
    """With weight 0 on a subset, that subset's labels cannot matter: scrambling them leaves the trained
    weights bit-identical (their images still pass through BatchNorm, so the images themselves may matter)."""
    recipe = quick(epochs=1)
    data = digits.train
    n = len(data)
    muted = torch.arange(n) % 3 == 0
    scrambled = dataclasses.replace(data, labels=torch.where(muted, (data.labels + 1) % 10, data.labels))
    weight = (~muted).float()
    a = train(digits, recipe, seed=5, data=data, sample_weight=weight)
    b = train(digits, recipe, seed=5, data=scrambled, sample_weight=weight)
    assert same(params_of(a), params_of(b))
    # Control: with full weights, the same scrambling does change the result.
    c = train(digits, recipe, seed=5, data=scrambled, sample_weight=torch.ones(n))
    assert not same(params_of(a), params_of(c))


def test_all_zero_weights_leave_parameters_unchanged_without_weight_decay(digits):
    recipe = quick(epochs=1, weight_decay=0.0)
    seed_everything(6)
    init = params_of(create_model("small_cnn", 10, 1, 16, digits.mean, digits.std, width=16))
    trained = train(digits, recipe, seed=6, sample_weight=torch.zeros(len(digits.train)))
    assert same(init, params_of(trained))


# ------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("milestones", [(10,), (3, 12), (0, 5)])
def test_recipe_rejects_milestones_outside_the_epochs(milestones):
    with pytest.raises(ValueError, match="milestones"):
        Recipe(epochs=10, schedule="multistep", milestones=milestones)


def test_shortening_a_paper_recipe_without_restating_milestones_fails():
    with pytest.raises(ConfigError, match="restate them"):
        RECIPES.get("mcl_paper").parse({"epochs": 10}, "recipe")
    assert RECIPES.get("mcl_paper").parse({"epochs": 10, "milestones": [4, 7]}, "recipe").milestones == (4, 7)


def test_recompute_bn_statistics_do_not_depend_on_the_sets_class_order():
    """The running variance is a mean of per-batch variances: one-class batches (a class-sorted set taken in
    order) would miss the variance between classes.  Batches are drawn in a seeded random order instead."""
    from torch import nn

    from bench.data.imageset import ImageSet
    from bench.train import recompute_bn

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(64)               # 4 classes, stored class by class
    images = (labels.view(-1, 1, 1, 1) * 60 + torch.randint(0, 8, (256, 1, 4, 4), generator=g)).to(torch.uint8)
    model = nn.Sequential(nn.BatchNorm2d(1))
    recompute_bn(model, ImageSet(images, labels), 64, torch.device("cpu"))
    full_var = images.float().div(255).var().item()             # ~ the between-class variance
    within = images.float().div(255).view(4, -1).var(1).mean().item()
    assert abs(model[0].running_var.item() - full_var) < 0.25 * full_var, (model[0].running_var, full_var)
    assert model[0].running_var.item() > 10 * within
