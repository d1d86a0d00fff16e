"""Fixed-count selections break ties with a seeded permutation, never by index (issue 17, item 4).

The training set is stored in class order, so an index order fills a cut class by class: with ten classes of
ten tied samples, the 30 "lowest" were exactly classes 0-2.
"""
from __future__ import annotations

import torch

from bench.defense import top_flags
from defenses._sd import split_by_score

LABELS = torch.arange(10).repeat_interleave(10)          # class order, as the stored training sets


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_top_flags_ties_follow_the_seed_not_the_index():
    tied = torch.zeros(100)
    a, b = top_flags(tied, 30, generator=gen(1)), top_flags(tied, 30, generator=gen(2))
    assert int(a.sum()) == int(b.sum()) == 30
    assert not torch.equal(a, b)                                            # another seed, another choice
    for flags in (a, b, top_flags(tied, 30)):
        assert not flags[:30].all()                                         # not the first 30 indices
        assert len(LABELS[flags].unique()) >= 6                             # index order: 3 classes
    assert torch.equal(top_flags(tied, 30, generator=gen(1)), a)           # same seed, same choice


def test_top_flags_keeps_strict_order_around_ties():
    scores = torch.tensor([5.0, 1.0, 3.0, 3.0, 3.0, 0.0, 3.0])
    for seed in range(5):
        flags = top_flags(scores, 3, generator=gen(seed))
        assert flags[0] and int(flags[[2, 3, 4, 6]].sum()) == 2 and not flags[[1, 5]].any()
        low = top_flags(scores, 2, largest=False, generator=gen(seed))
        assert low.nonzero().flatten().tolist() == [1, 5]


def test_sd_split_fills_d_c_across_classes_by_seed():
    scores = torch.cat([torch.zeros(90), torch.ones(10)])                  # 90 tied low scores, 10 high
    a, b = split_by_score(scores, 0.3, 0.1, gen(1)), split_by_score(scores, 0.3, 0.1, gen(2))
    assert sorted(a.poisoned.tolist()) == list(range(90, 100))               # the strict top is D_p
    assert not torch.equal(a.clean, b.clean)
    for split in (a, b, split_by_score(scores, 0.3, 0.1)):
        assert len(split.clean) == 30 and split.clean.tolist() != list(range(30))
        assert len(LABELS[split.clean].unique()) >= 5                        # index order: classes 0-2 only
