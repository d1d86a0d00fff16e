"""The defender's clean subset: seeded, never poisoned, nested across ratios, optionally stratified."""
from __future__ import annotations

import pytest
import torch

from bench.data.clean import clean_subset


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (2000,), generator=g)
    poisoned = torch.zeros(2000, dtype=torch.bool)
    poisoned[torch.randperm(2000, generator=g)[:300]] = True
    return labels, poisoned


@pytest.mark.parametrize("stratified", [False, True])
def test_nested_and_never_poisoned(data, stratified):
    labels, poisoned = data
    subsets = [clean_subset(labels, poisoned, r, seed=3, stratified=stratified) for r in (0.01, 0.05, 0.1)]
    for small, big in zip(subsets, subsets[1:]):
        assert set(small.all.tolist()) <= set(big.all.tolist())
        assert set(small.val.tolist()) <= set(big.val.tolist())
        assert set(small.fit.tolist()) <= set(big.fit.tolist())
    for s in subsets:
        assert not poisoned[s.all].any()
        assert not set(s.fit.tolist()) & set(s.val.tolist())
    assert len(subsets[1].all) == 100 if not stratified else abs(len(subsets[1].all) - 100) <= 5


def test_seed_changes_subset_and_is_reproducible(data):
    labels, poisoned = data
    a = clean_subset(labels, poisoned, 0.05, seed=1).all
    assert torch.equal(a, clean_subset(labels, poisoned, 0.05, seed=1).all)
    assert not torch.equal(a, clean_subset(labels, poisoned, 0.05, seed=2).all)


def test_stratified_counts(data):
    labels, poisoned = data
    s = clean_subset(labels, poisoned, 0.1, seed=0, stratified=True)
    counts = torch.bincount(labels[s.all], minlength=5)
    expected = torch.round(0.1 * torch.bincount(labels, minlength=5).double()).long()
    assert torch.equal(counts, expected)


def test_validation_slice_is_every_tenth(data):
    labels, poisoned = data
    s = clean_subset(labels, poisoned, 0.1, seed=0)
    assert len(s.val) == 20 and len(s.fit) == 180


def test_errors(data):
    labels, poisoned = data
    with pytest.raises(ValueError, match="clean_ratio"):
        clean_subset(labels, poisoned, 0.0, seed=0)
    with pytest.raises(ValueError, match="unpoisoned"):
        clean_subset(labels, poisoned, 1.0, seed=0)


def test_only_a_defense_that_uses_the_validation_slice_has_it_carved_out():
    """FT trains on the whole clean subset; FP (which stops pruning on the slice) gets 90 % + a 10 % slice."""
    from defensetest import poisoned_digits

    from bench.graph import cell_jobs
    from bench.registry import DEFENSES
    from bench.stages import build_context
    from bench.sweep import build_sweep

    bundle, attack, poisoned, train = poisoned_digits()
    chain = {"model": {"name": "small_cnn"}, "recipe": {"name": "quick"}, "seed": 0, "clean_ratio": 0.1}
    n = round(0.1 * len(bundle.train))

    def context(name):
        entry = DEFENSES.get(name)
        return build_context(entry.obj(entry.parse({})), chain, bundle, poisoned, train, attack,
                             torch.device("cpu"), None)

    ft, fp = context("ft"), context("fp")
    assert len(ft.clean) == n and ft.clean_val is None
    assert len(fp.clean) + len(fp.clean_val) == n and len(fp.clean_val) == n // 10
    doc = {"name": "t", "grid": {"dataset": "digits", "model": "small_cnn", "recipe": "quick", "attack": "none",
                                 "defense": ["ft", "fp"]}}
    defend = {c.defense["name"]: cell_jobs(c)[-2].config for c in build_sweep(doc, "t").cells}
    assert defend["ft"]["clean_val"] is False and "clean_val" not in defend["fp"]   # FT's key records the change
