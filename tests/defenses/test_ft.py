"""FT through the runner's context: it changes the model and keeps clean accuracy on the digits backdoor."""
from __future__ import annotations

import torch
from defensetest import evaluate, make_context, make_defense


def test_ft_changes_the_model_and_keeps_accuracy(backdoor):
    defense = make_defense({"name": "ft", "epochs": 5, "lr": 0.01, "milestones": [3], "augment": []})
    ctx = make_context(backdoor, defense, clean_ratio=0.1)
    assert ctx.clean is not None and ctx.train is None and ctx.model is not None
    before = [p.clone() for p in ctx.model.parameters()]
    out = defense.run(ctx)
    assert any(not torch.equal(a, b) for a, b in zip(before, out.model.parameters()))
    after = evaluate(backdoor, out.model)
    assert after["ba"] >= backdoor.metrics["ba"] - 0.05
