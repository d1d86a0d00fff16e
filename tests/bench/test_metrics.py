"""Detection metrics against ground truth: flagged, kept and trusted sets, AUROC."""
from __future__ import annotations

import math

import torch

from bench.attack import CLEAN, POISONED
from bench.metrics import detection_metrics


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


def test_trusted_metrics_only_when_given_and_nan_for_an_empty_set():
    kind = torch.tensor([POISONED, CLEAN])
    assert "trusted_precision" not in _by_name(detection_metrics(kind, None, None))
    m = _by_name(detection_metrics(kind, None, None, torch.zeros(2, dtype=torch.bool)))
    assert math.isnan(m["trusted_precision"]) and m["n_trusted"] == 0
