"""LfD (seed 003): the threshold of Eq. 4, the weights of Eq. 5/6, and the low-capacity teacher's loss gap on
the BadNets digits set (§3.3: poisoned samples are learnt first, so their teacher loss is lower)."""
from __future__ import annotations

import pytest
import torch
from defensetest import make_context, make_defense

from bench.attack import POISONED
from defenses.lfd import ga_weights, per_sample_loss, threshold, wga_weights


def test_threshold_is_the_loss_at_index_n_alpha():
    losses = torch.tensor([0.9, 0.1, 2.0, 0.4, 1.5, 0.2, 3.0, 0.7, 1.1, 0.3])
    assert threshold(losses, 0.15) == pytest.approx(0.2)   # sorted: 0.1 0.2 0.3 ...; index int(10 * 0.15) = 1
    assert threshold(losses, 0.5) == pytest.approx(0.9)    # index 5


def test_wga_weights_follow_eq6_piecewise():
    losses = torch.tensor([0.0, 0.5, 1.0, 2.0, 4.0])
    gamma, beta = 1.0, 1e-3
    w = wga_weights(losses, gamma, beta)
    expected = [beta * (0.0 - 1) / 3, beta * (0.5 - 1) / 3, 0.0, 2.0 / 4, 1.0]   # below: beta (l-g)/(max-g)
    assert torch.allclose(w, torch.tensor(expected), atol=1e-9)
    assert (w[losses > gamma] > 0).all() and (w[losses <= gamma] <= 0).all()
    assert w.max() == 1.0                                                           # normalised by the max loss
    assert torch.allclose(wga_weights(losses, gamma, 2 * beta)[:2], 2 * w[:2])     # ascent part scales with beta
    assert torch.equal(wga_weights(losses, gamma, 2 * beta)[3:], w[3:])            # descent part does not


def test_ga_weights_give_eq5():
    losses = torch.tensor([0.1, 0.2, 1.0, 2.0, 3.0])
    cand = losses <= 0.2
    w = ga_weights(cand)
    eq5 = losses[~cand].mean() - losses[cand].mean()
    assert torch.allclose((w * losses).mean(), eq5)


def test_low_capacity_teacher_gives_poisoned_samples_lower_loss(backdoor):
    """MobileNetV2-S (§5.3), 5 epochs without augmentation: measured clean / poisoned mean loss 2.18 / 1.39,
    2.21 / 1.54, 2.20 / 1.15 over seeds 0-2; candidate precision 0.57 / 0.40 / 0.53 (the ceiling is 130 / 216
    = 0.60: 15 % of 1,437 samples are candidates, 9 % are poisoned)."""
    torch.set_num_threads(2)
    defense = make_defense({"name": "lfd", "teacher": "mobilenetv2_s", "teacher_epochs": 5,
                            "teacher_batch_size": 32})
    ctx = make_context(backdoor, defense)
    teacher, _ = defense.teacher(ctx)
    losses = per_sample_loss(teacher, ctx.train, ctx.device)
    poisoned = backdoor.poisoned.kind == POISONED
    assert losses[poisoned].mean() < losses[~poisoned].mean() - 0.3, (losses[poisoned].mean(), losses[~poisoned].mean())
    candidate = losses <= threshold(losses, 0.15)
    assert float((candidate & poisoned).sum() / candidate.sum()) > 2 * float(poisoned.float().mean())


def test_lfd_run_returns_candidates_and_curves(backdoor):
    torch.set_num_threads(2)
    defense = make_defense({"name": "lfd", "teacher": "mobilenetv2_s", "teacher_epochs": 2,
                            "teacher_batch_size": 32, "epochs": 2})
    ctx = make_context(backdoor, defense, curves=True)
    out = defense.run(ctx)
    n = len(backdoor.train)
    assert out.flags.shape == (n,) and int(out.flags.sum()) == out.metrics["n_candidates"] >= int(0.15 * n)
    assert torch.equal(out.flags, out.scores >= -out.metrics["gamma"])       # scores = -teacher loss
    names = {k for row in ctx.curves.rows for k in row}
    assert {"teacher_loss_candidate", "teacher_loss_rest", "student_loss_candidate"} <= names
    rest = [r["student_loss_rest"] for r in ctx.curves.rows if "student_loss_rest" in r]
    assert len(rest) == 2 and rest[1] < rest[0]          # the student descends on the non-candidates


def test_gtsrb_overlay():
    assert make_defense({"name": "lfd"}).cfg.alpha == 0.15
    from defensetest import DEFENSES
    entry, cfg = DEFENSES.resolve({"name": "lfd"}, "defense", "gtsrb")
    assert (cfg.alpha, cfg.beta) == (0.2, 3e-3)


def test_a_mapped_teacher_is_built_with_its_options(backdoor):
    """The mini profile maps ResNet-S2 to small_cnn width 8 (bench/budget.py): the teacher LfD trains is that
    model, at the width the options give."""
    defense = make_defense({"name": "lfd", "teacher": "small_cnn", "teacher_options": {"width": 4},
                            "teacher_epochs": 1})
    teacher, _ = defense.teacher(make_context(backdoor, defense))
    assert type(teacher).__name__ == "SmallCNN" and teacher.num_features == 16      # 4 x width
