"""MCR: the Bézier curve passes exactly through its end points; the repaired model is read off the curve."""
from __future__ import annotations

import copy

import torch
from defensetest import evaluate, make_context, make_defense

from bench.models import create_model
from defenses.mcr import BezierCurve, bezier, model_at


def test_bezier_hand_values():
    a, c, b = torch.tensor([1.0]), torch.tensor([5.0]), torch.tensor([3.0])
    assert bezier(a, c, b, 0.5).item() == 0.25 * 1 + 0.5 * 5 + 0.25 * 3        # = 3.5


def test_curve_endpoints_are_exact():
    torch.manual_seed(0)
    m0 = create_model("small_cnn", 10, 1, 16, None, None, width=4)
    m1 = create_model("small_cnn", 10, 1, 16, None, None, width=4)
    curve = BezierCurve(m0, m1)
    with torch.no_grad():
        for p in curve.control:
            p.normal_()                                  # an arbitrary trained control point
    p0, p1 = dict(m0.named_parameters()), dict(m1.named_parameters())
    assert all(torch.equal(v, p0[k]) for k, v in curve.point(0.0).items())
    assert all(torch.equal(v, p1[k]) for k, v in curve.point(1.0).items())
    mid = curve.point(0.5)
    assert not torch.equal(mid["fc.weight"], p0["fc.weight"])


def test_mcr_on_digits_changes_the_model_and_keeps_accuracy(backdoor):
    defense = make_defense({"name": "mcr", "curve_epochs": 5, "endpoint_epochs": 3, "augment": [],
                            "batch_size": 64})
    ctx = make_context(backdoor, defense, clean_ratio=0.1)
    start = copy.deepcopy(ctx.model)
    out = defense.run(ctx)
    assert any(not torch.equal(a, b) for a, b in zip(start.parameters(), out.model.parameters()))
    after = evaluate(backdoor, out.model)
    assert after["ba"] >= backdoor.metrics["ba"] - 0.05, after
    assert out.metrics["t"] == 0.4 and 0.0 <= out.metrics["val_acc"] <= 1.0


def test_model_at_t0_has_the_backdoored_weights(backdoor):
    model = copy.deepcopy(backdoor.model)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1)
    curve = BezierCurve(model, other)
    ctx = make_context(backdoor, make_defense({"name": "mcr"}), clean_ratio=0.1)
    at0 = model_at(model, curve, 0.0, ctx.clean, 64, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(at0.parameters(), model.parameters()))


def test_t_chosen_on_held_out_clean_accuracy(backdoor):
    defense = make_defense({"name": "mcr", "curve_epochs": 5, "endpoint_epochs": 3, "augment": [],
                            "batch_size": 64, "t_grid": [0.2, 0.4, 0.6]})
    ctx = make_context(backdoor, defense, clean_ratio=0.1)
    out = defense.run(ctx)
    scores = {g: out.metrics[f"val_acc_t{g:g}"] for g in (0.2, 0.4, 0.6)}
    best = max(scores.values())
    assert scores[out.metrics["t"]] == best and out.metrics["val_acc"] == best
    after = evaluate(backdoor, out.model)
    # Measured: every grid point keeps held-out accuracy 1.0 (t = 0.4 chosen by the tie rule) and ASR stays 1.00:
    # on this tiny, very strong digits backdoor the clean-only path stays backdoored (also at 40 curve epochs and
    # lr 0.05). On a weaker CIFAR-10 mini backdoor MCR at t = 0.4 took BadNets 28.9 -> 3.9 % (closing note).
    assert after["ba"] >= backdoor.metrics["ba"] - 0.05


def test_t_grid_outside_unit_interval_is_rejected():
    import pytest
    with pytest.raises(Exception, match="t_grid"):
        make_defense({"name": "mcr", "t_grid": [0.5, 1.5]})
