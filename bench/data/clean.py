"""The defender's clean subset (../shared/DESIGN.md): seeded, never poisoned, optionally stratified, nested.

One seeded permutation of the eligible (unpoisoned) training indices is cut at ``round(ratio * N)``, so for a
fixed seed the 1 % subset is the prefix of the 5 % subset, which is the prefix of the 10 % subset.  With
``stratified`` each class gets its own permutation and ``round(ratio * N_class)`` of it (nested the same way).
The held-out validation slice is every ``val_every``-th element of the permutation, so it is nested too.
``N`` is the size of the whole training set (the papers' "5 % clean data" means 5 % of the training set).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CleanSplit:
    fit: torch.Tensor      # int64 indices into the training set, used to fit / fine-tune
    val: torch.Tensor      # int64 indices of the held-out slice (thresholds, early stopping)

    @property
    def all(self) -> torch.Tensor:
        return torch.sort(torch.cat([self.fit, self.val])).values


def clean_subset(labels: torch.Tensor, poisoned: torch.Tensor, ratio: float, seed: int,
                 stratified: bool = False, val_every: int = 10) -> CleanSplit:
    """Pick the defender's clean data.

    Args:
        labels: int64 [N] true training labels.
        poisoned: bool [N], True where the training image was changed by the attack (never eligible).
        ratio: fraction of N, in (0, 1].
        seed: the cell seed (same seed -> nested subsets across ratios).
        stratified: per-class quotas of round(ratio * N_class).
        val_every: every k-th element of the permutation goes to the validation slice (0 = no slice).
    Raises:
        ValueError: ratio out of range or not enough unpoisoned samples.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"clean_ratio must be in (0, 1], got {ratio}")
    labels, poisoned = labels.cpu(), poisoned.cpu().bool()
    g = torch.Generator().manual_seed(seed)
    eligible = torch.nonzero(~poisoned).flatten()
    perm = eligible[torch.randperm(len(eligible), generator=g)]
    if stratified:
        parts = []
        for c in range(int(labels.max()) + 1):
            in_c = perm[labels[perm] == c]
            want = int(round(ratio * int((labels == c).sum())))
            parts.append(_take(in_c, want, f"class {c}"))
        chosen = [_split(p, val_every) for p in parts]
        fit = torch.cat([c[0] for c in chosen])
        val = torch.cat([c[1] for c in chosen])
    else:
        fit, val = _split(_take(perm, int(round(ratio * len(labels))), "the training set"), val_every)
    return CleanSplit(torch.sort(fit).values, torch.sort(val).values)


def _take(perm: torch.Tensor, n: int, what: str) -> torch.Tensor:
    if n > len(perm):
        raise ValueError(f"clean subset needs {n} unpoisoned samples of {what}, only {len(perm)} exist")
    return perm[:n]


def _split(prefix: torch.Tensor, val_every: int) -> tuple[torch.Tensor, torch.Tensor]:
    if val_every <= 0:
        return prefix, prefix[:0]
    pos = torch.arange(len(prefix))
    is_val = pos % val_every == val_every - 1
    return prefix[~is_val], prefix[is_val]
