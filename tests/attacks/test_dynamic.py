"""Input-aware dynamic backdoor: sample-specific triggers from a frozen generator, the mask density it was trained
to, determinism for a seed, cross (NOISE) samples, and a backdoor that a fresh model learns from the poisoned set.

Generators here are cheap (width 8, a few epochs, batch 64, no augmentation, small CNN surrogate; ``CHEAP``) so
each test runs in well under 40 s on one core; the ASR test trains a larger one (``ASR_OPTS``, about 50 s).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.attack import NOISE, POISONED
from bench.models import create_model
from bench.registry import ATTACKS, RECIPES
from bench.train import fit, predict

CHEAP = {"gen_width": 8, "gen_depth": 2, "mask_epochs": 3, "gen_epochs": 2, "gen_batch_size": 64,
         "gen_augment": (), "classifier": "small_cnn", "classifier_options": {"width": 8}}


def _make(info, seed=0, **options):
    entry = ATTACKS.get("dynamic")
    return entry.obj(entry.parse(options, dataset=info.name), info, seed)


def _trained(bundle, seed=0, **options):
    attack = _make(bundle.info(), seed, **{**CHEAP, **options})
    state, metrics = attack.train_generator(bundle.train, torch.device("cpu"))
    attack.load_generator(state)
    return attack, state, metrics


@pytest.fixture(scope="module")
def digits_attack(request):
    """One cheap generator on digits, shared by the tests that only read it."""
    torch.set_num_threads(1)
    return _trained(request.getfixturevalue("digits"))


def test_paper_defaults_and_per_dataset_architecture(make_attack, digits):
    attack = make_attack("dynamic", digits.info())
    cfg = attack.cfg
    assert (cfg.mask_density, cfg.lambda_div, cfg.lambda_norm) == (0.032, 1.0, 100.0)
    assert (cfg.gen_p_attack, cfg.gen_p_cross, cfg.cross_ratio, cfg.poison_rate) == (0.1, 0.1, 1.0, 0.1)
    assert (cfg.mask_epochs, cfg.gen_epochs, cfg.gen_batch_size, cfg.classifier) == (25, 600, 128, "preact_resnet18")
    assert (cfg.gen_width, cfg.gen_depth) == (32, 3)
    mnist = make_attack("dynamic", dataclasses.replace(digits.info(), name="mnist", image_size=28))
    assert (mnist.cfg.gen_width, mnist.cfg.gen_depth) == (16, 2)       # models.py l. 44-46
    assert attack.true_trigger() is None and "gen_epochs" in attack.generator_fields


def test_residuals_are_sample_specific_and_deterministic(digits, digits_attack):
    attack, _, _ = digits_attack
    x = digits.test.images[:2]
    out = attack.apply_trigger(x, train=False)
    r = out.float() - x.float()
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert r[0].abs().sum() > 0 and r[1].abs().sum() > 0
    assert not torch.equal(r[0], r[1])
    pattern, mask = attack.pattern_and_mask(x)
    assert not torch.equal(mask[0], mask[1]) and not torch.equal(pattern[0], pattern[1])
    assert torch.equal(out, attack.apply_trigger(x, train=True)), "one trigger for train and test"
    assert torch.equal(out[:1], attack.apply_trigger(x[:1], train=False)), "per image, not per batch"


def test_mask_density_is_as_trained(digits, digits_attack):
    """Measured: mean thresholded mask 0.087 at 3 mask epochs (lambda_norm 100, density 0.032); 0.030 at 10
    epochs; a weak norm penalty gives a larger mask."""
    attack, _, metrics = digits_attack
    _, mask = attack.pattern_and_mask(digits.test.images)
    density = float(mask.mean())
    assert mask.shape[1] == 1 and 0.0 <= float(mask.min()) and float(mask.max()) <= 1.0
    assert 0.0 < density < 0.15 and abs(density - metrics["mask_mean"]) < 0.02
    loose = _make(digits.info(), **{**CHEAP, "lambda_norm": 1.0, "gen_epochs": 0})
    state, _ = loose.train_generator(digits.train, torch.device("cpu"))
    loose.load_generator(state)
    assert float(loose.pattern_and_mask(digits.test.images)[1].mean()) > density + 0.1


def test_generator_training_is_deterministic_for_a_seed(digits, digits_attack):
    attack, state, _ = digits_attack
    again, state2, _ = _trained(digits)
    for net in ("net_g", "net_m"):
        assert all(torch.equal(state[net][k], state2[net][k]) for k in state[net])
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a, b = attack.poison(digits.train, gen()), again.poison(digits.train, gen())
    assert torch.equal(a.changed_idx, b.changed_idx) and torch.equal(a.changed_images, b.changed_images)
    _, other, _ = _trained(digits, seed=1, mask_epochs=1, gen_epochs=0)
    assert not torch.equal(state["net_m"]["net.0.weight"], other["net_m"]["net.0.weight"])


def test_poison_has_relabelled_and_cross_samples(digits, digits_attack):
    attack, _, _ = digits_attack
    train = digits.train
    ps = attack.poison(train, torch.Generator().manual_seed(0))
    pois, noise = ps.kind == POISONED, ps.kind == NOISE
    assert int(pois.sum()) == round(0.1 * int((train.labels != 0).sum())) == ps.params["poisoned"]
    assert int(noise.sum()) == int(pois.sum()) == ps.params["noise"]              # p_cross / p_attack = 1
    assert (ps.labels[pois] == 0).all() and (train.labels[pois] != 0).all()
    assert torch.equal(ps.labels[noise], train.labels[noise]), "cross samples keep their label"
    images = ps.apply(train).images
    assert torch.equal(images[pois], attack.apply_trigger(train.images[pois], train=True))
    assert not torch.equal(images[noise], train.images[noise])
    assert not torch.equal(images[noise], attack.apply_trigger(train.images[noise], train=True)), \
        "cross samples carry another image's trigger"


def test_all2all_relabels_to_the_next_class(digits):
    attack, _, _ = _trained(digits, label_mode="all2all", mask_epochs=1, gen_epochs=1)
    ps = attack.poison(digits.train, torch.Generator().manual_seed(0))
    pois = ps.kind == POISONED
    assert torch.equal(ps.labels[pois], (digits.train.labels[pois] + 1) % 10)


ASR_OPTS = {"gen_width": 16, "mask_epochs": 25, "mask_density": 0.1, "lambda_norm": 10.0, "gen_epochs": 30,
            "classifier_options": {"width": 16}, "classifier_lr": 0.05, "gen_p_attack": 0.3, "gen_p_cross": 0.2,
            "poison_rate": 0.2}


def test_a_fresh_model_learns_the_backdoor(digits):
    """Generator at the release's MNIST width (16, depth 2), the paper's 25 mask epochs, 30 joint epochs against a
    width-16 CNN surrogate at lr 0.05 and batch shares 0.3 / 0.2 (the paper's 0.1 / 0.1 learns slower at this
    size); then 20 % of the non-target digits poisoned plus as many cross samples, and a fresh width-16 CNN trained
    30 epochs ('quick' recipe).  The mask: the release's density 0.032 is 25 pixels of MNIST's 28x28; the same 25
    pixels are 0.1 of these 16x16 digits, and lambda_norm 10 (release 100) lets the mask settle there.

    Measured (2026-12-03, generator seed 0): ASR 0.873 / 0.802 / 0.849 with torch on 1 / 2 / 3 threads (the thread
    count only changes the order of float sums, as another CPU does), BA 0.99, surrogate backdoor accuracy
    0.91-0.96, mask mean 0.113-0.114, about 50 s on one thread.  So the attack reaches the issue's 80 % under every
    float order tried, and the assertion keeps 0.75 to leave room for that spread.  How the settings were found:
    the earlier width-8 generator with 3 mask epochs at density 0.032 gave 0.642 / 0.790 / 0.892 for seeds 0-2
    here (0.85 and 0.74 for seed 0 on other machines): lambda_norm 100 drives the mask from 0.5 far below its
    density within 3 epochs, where nothing pulls it back, so the final mask (0.013-0.28 of the image) was set by
    float rounding and ASR followed it (seed 0 at width 16: 0.907 on one thread, 0.694 on two); with the mask
    near its density (10 mask, 16 joint epochs), seeds 0 / 1 / 2 gave 0.892 / 0.948 / 0.818.  The same CNN trained
    on the clean digits: ASR 0.000 (earlier machines)."""
    attack, _, metrics = _trained(digits, **ASR_OPTS)
    ps = attack.poison(digits.train, torch.Generator().manual_seed(0))
    _, recipe = RECIPES.resolve("quick", "recipe")
    torch.manual_seed(0)
    info = digits.info()
    model = create_model("small_cnn", info.num_classes, info.in_channels, info.image_size, info.mean, info.std,
                         width=16)
    model = fit(model, ps.apply(digits.train), dataclasses.replace(recipe, epochs=30), seed=0,
                device=torch.device("cpu"))
    x, target, keep = attack.stamp_test(digits.test.images, digits.test.labels)
    ba = float((predict(model, digits.test.images) == digits.test.labels).float().mean())
    asr = float((predict(model, x[keep]) == target[keep]).float().mean())
    assert ba >= 0.95 and asr >= 0.75, (ba, asr, metrics)
