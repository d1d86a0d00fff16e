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


def test_joint_encoding_is_the_default_and_differs_from_per_view_only_through_batchnorm():
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
    assert torch.equal(two_view_loss(crit, torch.Generator().manual_seed(1))(with_bn, x, y, None), losses["bn", True])
    enc = two_view_loss(crit, torch.Generator().manual_seed(1), encode=lambda m, v: m(v) * 2)(plain, x, y, None)
    assert not torch.allclose(enc, losses["plain", False])                # the encoder is what gets compared


def test_loss_equals_supcontrast_value_on_a_fixed_toy_batch_with_its_scale_factor():
    """SupContrast's SupConLoss on features [N, 2 views, D]: anchors = all 2N views, positives = same label
    (self excluded), loss = -(tau / 0.07) * mean over anchors of the mean log-softmax of the positives.  The
    reference below is written out with Python floats, one anchor at a time."""
    import math

    import pytest

    from bench.contrastive import supcon

    # Closed form first: two orthogonal images with identical views, tau = 1 -> each anchor sees cosines
    # 0, 1, 0 with its other view (cosine 1) as the only positive: (log(2 + e) - 1) * 1 / 0.07 = 7.877.
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert nt_xent(e, e, 1.0).item() == pytest.approx((math.log(2 + math.e) - 1) / 0.07, rel=1e-6)
    assert nt_xent(e, e, 1.0).item() == pytest.approx(7.877, abs=1e-3)

    g = torch.Generator().manual_seed(0)
    z1 = torch.nn.functional.normalize(torch.randn(4, 5, generator=g), dim=1)
    z2 = torch.nn.functional.normalize(torch.randn(4, 5, generator=g), dim=1)
    labels = [2, 0, 2, 1]
    tau = 0.1
    views = [v.tolist() for v in torch.cat([z1, z2])]          # view k of image k % 4
    lab = labels + labels
    total = 0.0
    for a in range(8):
        dots = {b: sum(p * q for p, q in zip(views[a], views[b])) / tau for b in range(8) if b != a}
        log_denominator = math.log(sum(math.exp(d) for d in dots.values()))
        positives = [b for b in dots if lab[b] == lab[a]]
        total += -sum(dots[b] - log_denominator for b in positives) / len(positives)
    reference = tau / 0.07 * total / 8
    assert supcon(z1, z2, torch.tensor(labels), tau).item() == pytest.approx(reference, rel=1e-5)
    assert supcon(z1, z2, torch.tensor(labels), tau).item() == pytest.approx(
        supcon(z1, z2, torch.tensor(labels), tau, None).item() * tau / 0.07, rel=1e-6)   # 1.43 x bare


def test_similarities_are_fp32_under_autocast():
    g = torch.Generator().manual_seed(1)
    z1 = torch.nn.functional.normalize(torch.randn(16, 32, generator=g), dim=1)
    z2 = torch.nn.functional.normalize(torch.randn(16, 32, generator=g), dim=1)
    exact = nt_xent(z1, z2, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = nt_xent(z1, z2, 0.1)
        bf16 = (torch.cat([z1, z2]) @ torch.cat([z1, z2]).t())      # what an unguarded matmul would give
    assert bf16.dtype == torch.bfloat16                                  # autocast is really on here
    assert under.dtype == torch.float32 and torch.equal(under, exact)
