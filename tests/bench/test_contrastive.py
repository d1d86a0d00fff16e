"""The shared two-view loss of the SimCLR-style stages (DBD, D-ST, seed 002's cleansing)."""
from __future__ import annotations

import torch
from torch import nn

from bench.augment import simclr_views
from bench.contrastive import nt_xent, two_view_loss


def _batch():
    return torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_views_are_drawn_from_the_generator_and_compared_by_the_criterion():
    x, y, idx = _batch(), torch.arange(6), torch.arange(6)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 8))
    seen = {}

    def criterion(z1, z2, yy, ii):
        seen.update(y=yy, idx=ii)
        return nt_xent(z1, z2, 0.5)

    loss = two_view_loss(criterion, torch.Generator().manual_seed(3))(model, x, y, idx)
    v1, v2 = simclr_views(x, torch.Generator().manual_seed(3))          # the same draws, by hand
    assert torch.allclose(loss, nt_xent(model(v1), model(v2), 0.5))
    assert seen["y"] is y and seen["idx"] is idx


def test_joint_encoding_differs_from_per_view_only_through_batchnorm():
    x, y = _batch(), torch.arange(6)
    crit = lambda z1, z2, yy, ii: nt_xent(z1, z2, 0.5)                  # noqa: E731
    plain = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 8))
    with_bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 14 * 14, 8)).train()
    losses = {}
    for name, model in (("plain", plain), ("bn", with_bn)):
        for joint in (False, True):
            f = two_view_loss(crit, torch.Generator().manual_seed(1), joint=joint)
            losses[name, joint] = f(model, x, y, None)
    assert torch.allclose(losses["plain", False], losses["plain", True], atol=1e-6)
    assert not torch.allclose(losses["bn", False], losses["bn", True])
    enc = two_view_loss(crit, torch.Generator().manual_seed(1), encode=lambda m, v: m(v) * 2)(plain, x, y, None)
    assert not torch.allclose(enc, losses["plain", False])                # the encoder is what gets compared
