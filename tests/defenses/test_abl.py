"""ABL: the LGA loss of Eq. 3 on a toy batch, and isolation precision on the digits backdoor (end to end)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from defensetest import evaluate, make_context, make_defense

from bench.attack import CLEAN
from defenses.abl import ABLConfig, _isolation_loss, isolate, lga_loss


def test_lga_sign_flips_at_gamma():
    below = torch.tensor(0.3, requires_grad=True)
    above = torch.tensor(0.7, requires_grad=True)
    lga_loss(below, 0.5).backward()
    lga_loss(above, 0.5).backward()
    assert below.grad.item() == -1.0 and above.grad.item() == 1.0      # ascent below γ, descent above
    assert math.isclose(lga_loss(torch.tensor(0.3), 0.5).item(), -0.3, rel_tol=1e-6)
    assert math.isclose(lga_loss(torch.tensor(0.3), 0.5, "flooding").item(), 0.7, rel_tol=1e-6)   # |0.3-0.5|+0.5
    assert math.isclose(lga_loss(torch.tensor([0.3, 0.7]), 0.5).item(), 0.2, rel_tol=1e-6)        # (-0.3+0.7)/2


class _Fixed(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits


def test_isolation_loss_matches_eq3_on_a_toy_batch():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 2])
    ce = [-math.log(math.exp(2) / (math.exp(2) + 2)), -math.log(1 / (math.e + 2))]   # 0.2395, 1.5514
    mean = sum(ce) / 2                                                               # 0.8955 > γ
    got = _isolation_loss(ABLConfig())(_Fixed(logits), None, y, None)
    assert math.isclose(got.item(), mean, rel_tol=1e-5)
    per = _isolation_loss(ABLConfig(lga_per_sample=True))(_Fixed(logits), None, y, None)
    assert math.isclose(per.item(), (-ce[0] + ce[1]) / 2, rel_tol=1e-5)           # sign inside the mean
    high = _isolation_loss(ABLConfig(gamma=2.0))(_Fixed(logits), None, y, None)
    assert math.isclose(high.item(), -mean, rel_tol=1e-5)
    assert math.isclose(F.cross_entropy(logits, y).item(), mean, rel_tol=1e-5)


def test_isolate_takes_the_lowest_losses():
    assert isolate(torch.tensor([0.5, 0.1, 0.9, 0.2]), 0.5).tolist() == [False, True, False, True]
    assert int(isolate(torch.rand(1437), 0.01).sum()) == 14


def test_abl_isolates_poison_and_lowers_asr_on_digits(backdoor):
    poisoned = backdoor.poisoned.kind != CLEAN
    base_rate = float(poisoned.float().mean())                       # 0.09
    defense = make_defense({"name": "abl", "isolation_epochs": 5, "isolation_ratio": 0.05, "recover_epochs": 10,
                            "batch_size": 64, "unlearn_epochs": 5, "augment": []})
    ctx = make_context(backdoor, defense)
    assert ctx.model is None and ctx.train is not None               # training-time: no backdoored model
    out = defense.run(ctx)
    flags = out.flags
    assert int(flags.sum()) == round(0.05 * len(poisoned))
    precision = float((flags & poisoned).sum()) / float(flags.sum())
    # measured: isolation precision 0.74 (base rate 0.09), recall 0.41; BA 0.93, ASR 0.29
    assert precision > 4 * base_rate, precision
    assert torch.equal(out.scores.argsort()[-int(flags.sum()):].sort().values, torch.nonzero(flags).flatten())
    after = evaluate(backdoor, out.model)
    assert after["ba"] > 0.8 and after["asr"] < 0.8, after


def test_unlearning_batches_are_the_isolated_images_unaugmented(backdoor, monkeypatch):
    """bboylyg/ABL backdoor_unlearning.py loads D_b with ToTensor only: every unlearning batch must hold the
    isolated uint8 images exactly (a crop shifts them, a flip mirrors them), all of them once per epoch."""
    seen = []

    def spy(model, x, y, idx):
        seen.append((x.detach().clone(), idx.clone()))
        return -F.cross_entropy(model(x), y)

    monkeypatch.setattr("defenses.abl._ascent_loss", spy)
    defense = make_defense({"name": "abl", "isolation_epochs": 1, "isolation_ratio": 0.05, "recover_epochs": 1,
                            "unlearn_epochs": 2})
    assert defense.cfg.unlearn_lr == 5e-4 and defense.cfg.batch_size == 128 and defense.cfg.augment   # recovery augments
    ctx = make_context(backdoor, defense)
    out = defense.run(ctx)
    isolated = ctx.train.images[out.flags]
    assert len(seen) == 2 * math.ceil(len(isolated) / 128)              # no dropped tail, batch 128
    for x, idx in seen:
        assert torch.allclose(x * 255, (x * 255).round(), atol=1e-3)   # no resampling
        assert torch.equal((x * 255).round().to(torch.uint8), isolated[idx])
    assert sorted(torch.cat([i for _, i in seen[:len(seen) // 2]]).tolist()) == list(range(len(isolated)))
