"""MESA: the staircase hinge and the entropy (MI) bound by hand; sampled triggers have the known size/location
and, on the digits backdoor, fire the backdoor."""
from __future__ import annotations

import math

import torch
from defensetest import make_context, make_defense

from bench.attack import Trigger, to_u8
from bench.train import predict
from defenses._mesa import MESAConfig, dv_bound, sample_triggers, staircase_hinge, trigger_box


def test_hinge_and_dv_bound_by_hand():
    p = torch.tensor([0.9, 0.5, 0.0, 0.8])
    assert math.isclose(staircase_hinge(p, 0.8).item(), (0 + 0.3 + 0.8 + 0) / 4, rel_tol=1e-6)
    assert dv_bound(torch.full((5,), 2.0), torch.full((5,), 2.0)).item() == 0.0        # constant T: bound 0
    tj, tm = torch.tensor([1.0, 3.0]), torch.tensor([0.0, math.log(3.0)])
    assert math.isclose(dv_bound(tj, tm).item(), 2.0 - math.log(2.0), rel_tol=1e-6)


def test_trigger_box():
    mask = torch.zeros(1, 16, 16)
    mask[:, 13:16, 12:15] = 1
    assert trigger_box(Trigger(mask, torch.zeros(1, 16, 16))) == (13, 12, 3, 3)


def test_sampled_triggers_have_the_known_box_and_fire(backdoor):
    ctx = make_context(backdoor, make_defense({"name": "none"}), clean_ratio=0.1)
    clean = backdoor.bundle.train.subset(torch.arange(128))
    box = trigger_box(backdoor.attack.true_trigger())
    before = [p.clone() for p in backdoor.model.parameters()]
    triggers = sample_triggers(backdoor.model, clean, 0, box, 4, cfg=MESAConfig(steps=60, batch_size=32, hidden=64),
                               device=torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(before, backdoor.model.parameters()))   # model untouched
    top, left, h, w = box
    x = backdoor.bundle.test.images[backdoor.bundle.test.labels != 0][:100].float() / 255
    for t in triggers:
        assert t.mask.shape == (1, 16, 16) and t.mask.sum() == h * w and trigger_box(t) == box
        outside = t.pattern.clone()
        outside[:, top:top + h, left:left + w] = 0
        assert outside.abs().sum() == 0 and 0 <= t.pattern.min() and t.pattern.max() <= 1
        # measured (300 steps): every sample recovers the grid pattern and gives target rate 1.0
        assert (predict(backdoor.model, to_u8(t.apply(x))) == 0).float().mean() > 0.8
    assert ctx.model is not None
