"""Contract tests over every registered attack: defaults build, poison and stamp on digits and synthetic data."""
from __future__ import annotations

import json

import pytest
import torch

from bench.attack import CLEAN, NOISE, POISONED, PoisonedSet, Trigger
from bench.registry import ATTACKS

# Only the cost of an option changes here, never what is checked: TrojanNN's 200 optimisation steps and the
# generators' training (SSBA's U-Net, Dynamic's networks, adaptive's SimCLR encoder) are slow on CPU.
FAST = {"trojan_nn": {"opt_steps": 3},
        "l2_invisible": {"opt_steps": 3},
        "adaptive": {"simclr_epochs": 1, "simclr_batch_size": 128, "opt_epochs": 1},
        "dynamic": {"gen_width": 4, "gen_depth": 2, "mask_epochs": 1, "gen_epochs": 1, "gen_batch_size": 128,
                    "gen_augment": (), "classifier": "small_cnn", "classifier_options": {"width": 4}},
        "ssba": {"bits": 4, "gen_width": 4, "gen_epochs": 1, "gen_batch_size": 128}}


def _poison(name, bundle, make_attack, untrained_model, seed=0):
    attack = make_attack(name, bundle.info(), seed, **FAST.get(name, {}))
    clean_model = untrained_model(bundle.info()) if attack.needs_clean_model else None
    if attack.generator_fields:                 # what the generate stage does before the poison stage
        attack.generator_state, _ = attack.train_generator(bundle.train, torch.device("cpu"), clean_model)
        attack.load_generator(attack.generator_state)
    return attack, attack.poison(bundle.train, torch.Generator().manual_seed(seed), clean_model=clean_model)


@pytest.mark.parametrize("dataset", ["digits", "synthetic"])
@pytest.mark.parametrize("name", ATTACKS.names())
def test_poisoned_set_contract(name, dataset, request, make_attack, untrained_model):
    bundle = request.getfixturevalue(dataset)
    train, n = bundle.train, len(bundle.train)
    attack, ps = _poison(name, bundle, make_attack, untrained_model)
    assert ps.labels.dtype == torch.int64 and ps.labels.shape == (n,)
    assert ps.kind.dtype == torch.int8 and ps.kind.shape == (n,)
    assert set(ps.kind.unique().tolist()) <= {CLEAN, POISONED, NOISE}
    changed = torch.nonzero(ps.kind != CLEAN).flatten()
    assert torch.equal(ps.changed_idx, changed), "changed_idx must be exactly the non-clean samples, sorted"
    assert ps.changed_images.dtype == torch.uint8
    assert ps.changed_images.shape == (len(changed), *train.images.shape[1:])
    poisoned = ps.kind == POISONED
    assert ps.params["poisoned"] == int(poisoned.sum())
    relabelled = ps.labels != train.labels
    assert not (relabelled & ~poisoned).any(), "only poisoned samples may change label"
    if attack.label_type == "clean":
        assert not relabelled.any() and (train.labels[poisoned] == attack.cfg.target).all()
    elif poisoned.any():
        assert torch.equal(ps.labels[poisoned], attack.target_labels(train.labels[poisoned]))
    json.dumps(ps.params)                       # stored with the artifact
    PoisonedSet.from_dict(ps.to_dict()).apply(train)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_rebuilt_attack_stamps_like_the_poisoner(name, synthetic, make_attack, untrained_model):
    """The evaluate stage rebuilds the attack from (cfg, info, seed) + saved state: same test-time trigger."""
    attack, ps = _poison(name, synthetic, make_attack, untrained_model, seed=3)
    rebuilt = make_attack(name, synthetic.info(), 3, **FAST.get(name, {}))
    if attack.generator_fields:                 # the evaluate stage loads the generate stage's artifact
        rebuilt.load_generator(attack.generator_state)
    rebuilt.load_state(ps.state)
    x, y = synthetic.test.images, synthetic.test.labels
    x1, t1, k1 = attack.stamp_test(x, y)
    x2, t2, k2 = rebuilt.stamp_test(x, y)
    assert x2.dtype == torch.uint8 and x2.shape == x.shape and k2.dtype == torch.bool
    assert torch.equal(x1, x2) and torch.equal(t1, t2) and torch.equal(k1, k2)
    if attack.cfg.label_mode == "all2one":
        assert torch.equal(k2, y != attack.cfg.target)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_poison_is_deterministic_for_a_seed(name, synthetic, make_attack, untrained_model):
    _, a = _poison(name, synthetic, make_attack, untrained_model, seed=1)
    _, b = _poison(name, synthetic, make_attack, untrained_model, seed=1)
    assert torch.equal(a.kind, b.kind) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.changed_idx, b.changed_idx) and torch.equal(a.changed_images, b.changed_images)
    _, c = _poison(name, synthetic, make_attack, untrained_model, seed=2)
    if len(a.changed_idx):
        assert not torch.equal(a.changed_idx, c.changed_idx), "another seed draws other indices"


@pytest.mark.parametrize("name", ATTACKS.names())
def test_true_trigger_matches_the_stamp(name, synthetic, make_attack, untrained_model):
    """Where an attack is a mask + pattern, (1 - m) x + m p reproduces its stamp (up to uint8 rounding)."""
    attack, ps = _poison(name, synthetic, make_attack, untrained_model)
    trig = attack.true_trigger()
    if trig is None:
        return
    c, s = synthetic.info().in_channels, synthetic.info().image_size
    assert isinstance(trig, Trigger) and trig.pattern.shape == (c, s, s) and trig.mask.shape[-2:] == (s, s)
    assert 0 <= float(trig.mask.min()) and float(trig.mask.max()) <= 1 and 0 <= float(trig.pattern.min())
    x = synthetic.test.images[:32]
    via_trigger = trig.apply(x.float() / 255).mul(255).round().clamp(0, 255)
    assert (via_trigger - attack.apply_trigger(x, train=True).float()).abs().max() <= 1
