"""SimCLR training-set cleansing (seed 002): kNN / Energy decisions (§3.3, Eq. 6), the relabel threshold
(Alg. 1, lambda = 80), the App. G combination, and a tiny run on the BadNets digits set."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from defensetest import evaluate, make_context, make_defense

from bench.attack import POISONED
from defenses.ssl_cleanse import Decision, cleanse, combine, energy_decide, energy_scores, knn_decide


def _toy():
    """Five points near angle 0 labelled 0, five near angle pi labelled 1, and one point near angle 0 labelled 1
    (a "poisoned" sample: its neighbours all carry label 0)."""
    angles = torch.tensor([0.0, 0.05, -0.05, 0.1, -0.1, math.pi, math.pi + 0.05, math.pi - 0.05, math.pi + 0.1,
                           math.pi - 0.1, 0.02])
    z = torch.stack([angles.cos(), angles.sin()], 1)
    labels = torch.tensor([0] * 5 + [1] * 5 + [1])
    return z, labels


def test_knn_and_energy_decide_by_the_neighbours():
    z, labels = _toy()
    knn = knn_decide(z, labels, k=3, num_classes=2)
    assert knn.pred.tolist() == [0] * 5 + [1] * 5 + [0]          # the odd one is outvoted by its neighbours
    assert (knn.conf[5:] == 1).all()                             # cluster 1 and the odd one: 3 of 3 votes
    assert (knn.conf[:5] >= 2 / 3 - 1e-6).all()                  # the odd one can take 1 of 3 votes in cluster 0
    assert knn.score[-1] == 1.0 and knn.score[:-1].max() <= 1 / 3 + 1e-6
    energy = energy_decide(z, labels, num_classes=2, tau=0.5)
    assert energy.pred.tolist() == [0] * 5 + [1] * 5 + [0]
    assert energy.score.argmax() == 10 and energy.score[:-1].max() == 0.0  # margin max_c S_c - S_y
    flags, relabels, _ = cleanse(knn, labels, 80.0)
    assert flags.tolist() == [False] * 10 + [True]


def test_energy_score_equals_eq6_by_hand():
    z = F.normalize(torch.tensor([[1.0, 0.2], [0.9, 0.1], [-0.3, 1.0], [0.1, -1.0]]), dim=1)
    labels = torch.tensor([0, 0, 1, 1])
    tau = 0.5
    s = energy_scores(z, labels, num_classes=2, tau=tau)
    e = [[math.exp(float(z[i] @ z[j]) / tau) for j in range(4)] for i in range(4)]
    for i in range(4):
        denominator = sum(e[i][k] for k in range(4) if k != i)
        for c in (0, 1):
            members = [k for k in range(4) if labels[k] == c and k != i]
            expected = math.log(sum(e[i][k] / denominator for k in members) / len(members))
            assert abs(float(s[i, c]) - expected) < 1e-5, (i, c)
    # sample 0: its own class's only other member is sample 1, the nearest point -> class 0 wins
    assert s[0].argmax() == 0 and abs(float(s[0, 0]) - math.log(e[0][1] / (e[0][1] + e[0][2] + e[0][3]))) < 1e-5


def test_relabel_threshold_is_the_80th_percentile_of_accepted_confidences():
    labels = torch.zeros(14, dtype=torch.long)
    pred = torch.tensor([0] * 10 + [1] * 4)                             # 10 accepted, 4 rejected
    conf_acc = torch.tensor([0.10, 0.20, 0.30, 0.35, 0.40, 0.55, 0.60, 0.70, 0.90, 0.95])
    conf_rej = torch.tensor([0.50, 0.80, 0.81, 0.99])
    dec = Decision(pred, torch.cat([conf_acc, conf_rej]), torch.zeros(14))
    flags, relabels, t = cleanse(dec, labels, 80.0)
    assert abs(t - np.percentile(conf_acc.numpy(), 80)) < 1e-9 and abs(t - 0.74) < 1e-6
    assert flags.tolist() == [False] * 10 + [True] * 4
    assert relabels.tolist() == [-1] * 10 + [-1, 1, 1, 1]               # conf > 0.74 only
    flags, relabels, _ = cleanse(dec, labels, 80.0, filtering=False)  # Table 3 "SimCLR + relabeling"
    assert not flags.any() and int((relabels >= 0).sum()) == 3
    flags, relabels, _ = cleanse(dec, labels, 80.0, relabelling=False)  # "SimCLR + filtering"
    assert int(flags.sum()) == 4 and not (relabels >= 0).any()


def test_knn_and_energy_combination_needs_both():
    knn = (torch.tensor([True, True, False, True]), torch.tensor([2, -1, -1, 1]), 0.5)
    energy = (torch.tensor([True, False, True, True]), torch.tensor([2, -1, -1, 3]), -1.0)
    flags, relabels, _, scores = combine(knn, energy, torch.tensor([3.0, 2, 1, 0]), torch.tensor([3.0, 2, 1, 0]))
    assert flags.tolist() == [True, True, True, True]                  # rejected by either -> rejected
    assert relabels.tolist() == [2, -1, -1, -1]                        # relabelled by both, to the same class
    assert scores.tolist() == [1.0, 2 / 3, 1 / 3, 0.0]


def test_simclr_filtering_removes_the_digits_poison(backdoor):
    """Tiny SimCLR (15 epochs) + kNN + SupCon (6 + 6 epochs) on the BadNets digits set (130 of 1,437 poisoned).

    SimCLR's lr 0.07 is the step this test was tuned at (0.5 on the bare NT-Xent) under SupContrast's x(0.5/0.07)
    loss scale: at 0.5 with the scale the 15-epoch encoder kept 37 % of clean and 13 % of poisoned digits."""
    torch.set_num_threads(2)
    defense = make_defense({"name": "ssl_cleanse", "simclr_epochs": 15, "simclr_batch_size": 256, "simclr_lr": 0.07,
                            "supcon_epochs": 6, "supcon_batch_size": 256, "linear_epochs": 6, "linear_lr": 1.0,
                            "linear_batch_size": 256})
    ctx = make_context(backdoor, defense)
    assert ctx.train is not None and ctx.model is None and ctx.clean is None
    out = defense.run(ctx)
    poisoned = backdoor.poisoned.kind == POISONED
    kept = ~out.flags
    poison_kept = float((kept & poisoned).sum() / poisoned.sum())
    clean_kept = float((kept & ~poisoned).sum() / (~poisoned).sum())
    assert poison_kept < 0.25 and clean_kept > 0.6, (poison_kept, clean_kept)   # measured 0.03 / 0.81 at 20 epochs
    assert out.metrics["k"] == round(len(poisoned) / 10 / 2)                   # half the per-class count
    assert out.metrics["relabel_count"] == float((out.relabels >= 0).sum())
    assert out.model is not None and evaluate(backdoor, out.model)["ba"] > 0.2   # SupCon + linear head trains


def test_autoencoder_ablation_runs_and_hands_its_code_to_the_health_check(backdoor):
    """Table 3's "AE + filtering + relabeling" row (ssl_table3): the AE path end to end, classifier left to the
    runner; the embedding it filtered in is returned for the runner's kNN health check on the true labels."""
    from bench.metrics import knn_health

    defense = make_defense({"name": "ssl_cleanse", "encoder": "autoencoder", "ae_epochs": 2, "ae_batch_size": 256,
                            "classifier": "ce"})
    ctx = make_context(backdoor, defense)
    out = defense.run(ctx)
    n = len(backdoor.train)
    assert out.model is None and out.flags.shape == (n,) and out.embedding.shape == (n, 128)
    assert torch.allclose(out.embedding.norm(dim=1), torch.ones(n), atol=1e-4)
    health = knn_health(out.embedding, backdoor.bundle.train.labels, int(out.metrics["k"]), 10)
    assert 0.1 < health.value <= 1 and health.count == n     # digits are separable even in a 2-epoch AE code
