"""Detection metrics against ground truth: flagged, kept and trusted sets, AUROC."""
from __future__ import annotations

import math

import torch

from bench.attack import CLEAN, POISONED
from bench.metrics import cleansing_metrics, detection_metrics, knn_health, knn_votes, relabel_metrics


def _by_name(metrics):
    return {m.name: m.value for m in metrics}


def test_flagged_kept_and_trusted_sets_by_hand():
    kind = torch.tensor([POISONED, POISONED, CLEAN, CLEAN, CLEAN, CLEAN, CLEAN, CLEAN])
    flags = torch.tensor([1, 0, 1, 0, 0, 0, 0, 0], dtype=torch.bool)      # 1 of 2 flagged is poisoned
    trusted = torch.tensor([0, 1, 0, 1, 1, 1, 0, 0], dtype=torch.bool)    # 3 of 4 trusted are clean
    scores = torch.tensor([0.9, 0.1, 0.8, 0.2, 0.3, 0.4, 0.5, 0.6])
    m = _by_name(detection_metrics(kind, flags, scores, trusted))
    assert m["flag_precision"] == 0.5 and m["flag_recall"] == 0.5
    assert m["kept_precision"] == 5 / 6 and m["n_flagged"] == 2 and m["n_kept"] == 6
    assert m["trusted_precision"] == 0.75 and m["n_trusted"] == 4
    # AUROC: poisoned scores 0.9 and 0.1 against six clean ones: 0.9 beats all 6, 0.1 beats none -> 6/12.
    assert m["auroc"] == 0.5
    # clean mean score 0.4667: poisoned 0.1 is below it (LfD Fig. 2's "loss above the clean mean"), 0.9 is not
    assert m["poison_below_clean_mean"] == 0.5
    scores[1] = 0.5
    assert _by_name(detection_metrics(kind, None, scores))["poison_below_clean_mean"] == 0.0


def test_trusted_metrics_only_when_given_and_nan_for_an_empty_set():
    kind = torch.tensor([POISONED, CLEAN])
    assert "trusted_precision" not in _by_name(detection_metrics(kind, None, None))
    m = _by_name(detection_metrics(kind, None, None, torch.zeros(2, dtype=torch.bool)))
    assert math.isnan(m["trusted_precision"]) and m["n_trusted"] == 0


def test_cleansing_and_relabel_metrics_on_a_toy_relabelling():
    """Ten samples, target 0.  Poisoned: 0, 1, 2 (true classes 1, 2, 2; labelled 0).  Flagged: 0, 1, 2, 5.
    Relabelled: 0 -> 1 (its source: a recovery), 1 -> 1 (wrong class), 5 -> 2 (a clean sample of class 1:
    label noise, not a failed recovery)."""
    kind = torch.tensor([POISONED] * 3 + [CLEAN] * 7)
    given = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2, 2, 2])
    true = torch.tensor([1, 2, 2, 0, 0, 1, 1, 2, 2, 2])
    flags = torch.tensor([1, 1, 1, 0, 0, 1, 0, 0, 0, 0], dtype=torch.bool)
    relabels = torch.tensor([1, 1, -1, -1, -1, 2, -1, -1, -1, -1])
    r = _by_name(relabel_metrics(kind, true, relabels))
    assert r["n_relabelled"] == 3 and r["relabel_poison_share"] == 2 / 3 and r["n_relabelled_clean"] == 1
    assert r["relabel_source_recovery"] == 1 / 2          # of the two relabelled poisons, one got its source class
    c = cleansing_metrics(kind, given, flags, relabels, target=0, num_classes=3)
    m = _by_name(c)
    assert m["poison_kept_rate"] == 0.0 and m["clean_kept_rate"] == 6 / 7
    assert m["poison_trained_as_target"] == 0.0          # none kept with label 0, none relabelled to 0
    assert m["clean_kept_target"] == 1.0 and m["clean_kept_class1"] == 0.5 and m["clean_kept_class2"] == 1.0
    assert [x.name for x in c][3:5] == ["clean_kept_target", "clean_kept_class0"]   # the target class first
    # Deleting the whole target class also keeps no poison - and says so.
    wipe = _by_name(cleansing_metrics(kind, given, given == 0, None, target=0, num_classes=3))
    assert wipe["poison_kept_rate"] == 0.0 and wipe["clean_kept_target"] == 0.0 and wipe["clean_kept_class1"] == 1.0
    # A poison left unflagged, or relabelled to the target, is still learnt with the attack's label.
    leak = _by_name(cleansing_metrics(kind, given, torch.zeros(10, dtype=torch.bool), torch.tensor(
        [-1] * 9 + [0]), target=0, num_classes=3))
    assert leak["poison_trained_as_target"] == 1.0 and leak["poison_kept_rate"] == 1.0


def test_knn_health_uses_the_true_labels():
    z = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.95, -0.1],
                                                    [-1.0, 0.0], [-0.9, 0.1], [-0.95, -0.1]]), dim=1)
    votes = knn_votes(z, torch.tensor([0, 0, 0, 1, 1, 1]), k=2, num_classes=2)
    assert votes.tolist() == [[2, 0]] * 3 + [[0, 2]] * 3    # each point's two neighbours are its own cluster
    assert knn_health(z, torch.tensor([0, 0, 0, 1, 1, 1]), 2, 2).value == 1.0
    assert knn_health(z, torch.tensor([0, 0, 1, 1, 1, 1]), 2, 2).value == 5 / 6   # sample 2 is outvoted
