"""Activation Clustering: the relative-size rule on toy activations, and detection on the digits backdoor."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from defensetest import make_defense, run_with_fewer_poisoned

from bench.data.imageset import ImageSet
from defenses.ac import ACConfig, class_groups, cluster_class, poisonous_clusters


def _blobs(n_a: int, n_b: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(0.0, 1.0, (n_a, 16))
    b = rng.normal(0.0, 1.0, (n_b, 16)) + 8.0
    return np.concatenate([a, b])


def test_relative_size_rule_flags_exactly_the_small_cluster():
    flags, scores = cluster_class(_blobs(90, 10), ACConfig(), seed=0)
    assert flags.tolist() == [False] * 90 + [True] * 10
    assert np.allclose(scores[90:], 0.9) and np.allclose(scores[:90], 0.1)     # 1 - relative cluster size


def test_silhouette_rule_flags_the_small_cluster_only_where_the_split_fits():
    # Trojan-zoo's rule on well separated blobs: silhouette far above 0.1, then relative size < 0.35.
    flags, _ = cluster_class(_blobs(90, 10), ACConfig(rule="silhouette"), seed=0)
    assert flags.tolist() == [False] * 90 + [True] * 10
    # The same 10 % cluster, but drawn at random from one noise cloud: the split does not fit (silhouette ~ 0),
    # so the gate keeps it, while the bare relative-size rule would flag it.
    rng = np.random.default_rng(1)
    reduced = rng.normal(size=(100, 10))
    assign = np.zeros(100, dtype=int)
    assign[rng.choice(100, 10, replace=False)] = 1
    assert poisonous_clusters(assign, reduced, ACConfig(rule="relative_size")) == [1]
    assert poisonous_clusters(assign, reduced, ACConfig(rule="silhouette")) == []
    assert poisonous_clusters(assign, reduced, ACConfig(rule="smaller")) == [1]
    # 35 % is not "less than 35 %" (ART and Trojan-zoo compare strictly).
    assert poisonous_clusters(np.array([0] * 65 + [1] * 35), reduced, ACConfig()) == []


def test_groups_by_label_or_by_prediction():
    data = ImageSet(torch.zeros(6, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 0, 1, 1, 2, 2]))
    pred = torch.tensor([0, 1, 1, 1, 1, 2])
    assert [g.tolist() for g in class_groups(data, None)] == [[0, 1], [2, 3], [4, 5]]
    assert [g.tolist() for g in class_groups(data, None, pred)] == [[0], [1, 2, 3, 4], [5]]
    assert [g.tolist() for g in class_groups(data, 1, pred)] == [[1, 2, 3, 4]]


def test_even_split_is_kept_unless_rule_is_smaller():
    # PCA here: on whitened ICA components a 50/45 split of isotropic blobs is no more separable than noise.
    even = _blobs(50, 45)
    flags, _ = cluster_class(even, ACConfig(reduce="pca"), seed=0)
    assert not flags.any()                                  # 45/95 = 0.47 > 0.35: not poisonous
    flags, _ = cluster_class(even, ACConfig(reduce="pca", rule="smaller"), seed=0)
    assert flags.tolist() == [False] * 50 + [True] * 45
    flags, _ = cluster_class(_blobs(90, 10), ACConfig(reduce="pca"), seed=0)
    assert flags.tolist() == [False] * 90 + [True] * 10


@pytest.mark.parametrize("reduce", ["ica", "pca"])
def test_ac_on_digits_flags_mostly_poison_in_the_target_class(backdoor, reduce):
    """40 of the fixture's 130 poisoned digits kept: 22 % of class 0, inside the relative-size rule's < 35 %.

    With all 130 (48 % of class 0) neither cluster is small: measured 0 flagged (ICA, 3 inits; PCA 2 of 3).
    """
    defense = make_defense({"name": "ac", "target_class": 0, "teacher_epochs": 8, "reduce": reduce})
    ctx, out, poisoned = run_with_fewer_poisoned(backdoor, defense, 40)
    assert out.model is None and out.scores.shape == poisoned.shape
    flags = out.flags
    assert bool((ctx.train.labels[flags] == 0).all())
    tp = int((flags & poisoned).sum())
    precision, recall = tp / max(int(flags.sum()), 1), tp / 40
    # measured over 3 teacher inits: ICA flags 7-10, all poisoned (recall 0.18-0.25: whitening to unit-variance
    # components dilutes the trigger direction among noise directions); PCA flags exactly the 40 poisoned.
    # Base rate of poison: 0.03 in the set, 0.22 in class 0.
    assert precision > 0.8 and tp >= 4, (precision, recall)
    if reduce == "pca":
        assert recall > 0.8, recall
