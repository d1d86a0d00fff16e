"""l2-invisible attack: the optimised trigger stays in its L2 budget, excites the chosen neurons, is the same for
a seed, is trained once per generator config (not per poison rate), and backdoors a small model on digits.

Measured (one thread): the clean small CNN (5 epochs), 50 Adam steps at the default budget (L2 0.93 at 1x16x16),
10 % poisoned, victim 5 epochs -> BA 0.947, ASR 1.000 (threshold 0.8); about 10 s.
"""
from __future__ import annotations

import math

import pytest
import torch
from benchtest import generate_jobs

from bench.train import predict


def _generate(attack, train, model):
    state, metrics = attack.train_generator(train, torch.device("cpu"), model)
    attack.load_generator(state)
    return state, metrics


def test_needs_a_clean_surrogate(synthetic, make_attack):
    attack = make_attack("l2_invisible", synthetic.info())
    assert type(attack).needs_clean_model and "poison_rate" not in type(attack).generator_fields
    with pytest.raises(ValueError, match="clean model"):
        attack.train_generator(synthetic.train, torch.device("cpu"), None)
    with pytest.raises(RuntimeError, match="no trigger"):
        attack.apply_trigger(synthetic.test.images[:2], train=False)


@pytest.mark.parametrize("nonnegative", [False, True])
def test_trigger_within_the_l2_budget_and_excites_the_neurons(synthetic, make_attack, untrained_model,
                                                              nonnegative):
    info = synthetic.info()
    attack = make_attack("l2_invisible", info, opt_steps=20, opt_lr=0.05, nonnegative=nonnegative)
    state, m = _generate(attack, synthetic.train, untrained_model(info).eval())
    radius = 3.22 * math.sqrt(3 * 16 * 16 / 3072)              # the released trigger's norm, scaled to 3x16x16
    assert attack.radius == pytest.approx(radius) and m["l2_budget"] == pytest.approx(radius)
    assert float(state["signal"].norm()) / 255 <= radius + 1e-4 and m["trigger_l2"] <= radius + 1e-4
    assert m["objective"] < m["objective_init"]
    if not nonnegative:   # signed, the excitation wins and fills the budget (kept >= 0 on this untrained surrogate,
        assert m["activation"] > m["activation_init"] and m["trigger_l2"] > 0.9 * radius   # the penalty can)
    assert bool((state["signal"] >= 0).all()) == nonnegative
    x = synthetic.test.images
    diff = (attack.apply_trigger(x, train=False).float() - x.float()) / 255
    rounding = 0.5 / 255 * math.sqrt(x[0].numel())             # uint8 rounding, at most half a level per entry
    assert float(diff.flatten(1).norm(dim=1).max()) <= radius + rounding
    trig = attack.true_trigger()                                # MCL(True)'s form: an additive offset
    assert float(trig.mask.abs().max()) == 0 and torch.allclose(trig.offset * 255, state["signal"])


def test_generator_is_deterministic_for_a_seed(synthetic, make_attack, untrained_model):
    info = synthetic.info()
    model = untrained_model(info).eval()
    a, _ = _generate(make_attack("l2_invisible", info, 0, opt_steps=5), synthetic.train, model)
    b, _ = _generate(make_attack("l2_invisible", info, 0, opt_steps=5), synthetic.train, model)
    c, _ = _generate(make_attack("l2_invisible", info, 1, opt_steps=5), synthetic.train, model)
    assert torch.equal(a["signal"], b["signal"]) and not torch.equal(a["signal"], c["signal"])


def test_generate_job_is_shared_by_poison_rates():
    l2 = {"name": "l2_invisible", "target": 0}
    assert len(generate_jobs({**l2, "poison_rate": 0.1}, {**l2, "poison_rate": 0.3})) == 1
    assert len(generate_jobs({**l2, "poison_rate": 0.1}, {**l2, "poison_rate": 0.1, "l2_norm": 2.0})) == 2


def test_backdoors_a_small_model_on_digits(digits, make_attack, train_tiny):
    info = digits.info()
    attack = make_attack("l2_invisible", info, opt_steps=50)
    _, m = _generate(attack, digits.train, train_tiny(info, digits.train, epochs=5))
    assert m["trigger_l2"] <= attack.radius + 1e-4
    ps = attack.poison(digits.train, torch.Generator().manual_seed(0))
    assert ps.params["poisoned"] == round(0.1 * int((digits.train.labels != 0).sum()))
    victim = train_tiny(info, ps.apply(digits.train), epochs=5)
    x, target, keep = attack.stamp_test(digits.test.images, digits.test.labels)
    asr = float((predict(victim, x[keep]) == target[keep]).float().mean())
    ba = float((predict(victim, digits.test.images) == digits.test.labels).float().mean())
    assert asr >= 0.8 and ba >= 0.85, (asr, ba)
