"""WaNet as data poisoning: s = 0 is the identity, the warp is fixed by the seed, noise samples are their own kind."""
from __future__ import annotations

import torch

from bench.attack import NOISE, POISONED, select_poison_indices
from bench.data.imageset import DataInfo
from bench.triggers import identity_grid, warp, warp_field


def _info(size=16, channels=3):
    return DataInfo("synthetic", 4, channels, size, (0.5,) * channels, (0.25,) * channels)


def _images(n=6, channels=3, size=16, seed=0):
    return torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def test_zero_strength_is_the_identity(make_attack):
    x = _images(size=32)
    assert torch.equal(make_attack("wanet", _info(size=32), s=0.0).apply_trigger(x, train=True), x)
    assert torch.equal(warp(x, identity_grid(32)), x)


def test_default_warp_moves_pixels_smoothly_and_stays_in_range(make_attack):
    attack = make_attack("wanet", _info())                  # k 4, s 0.5, rescale 1
    grid = attack.grid
    assert grid.shape == (1, 16, 16, 2) and grid.abs().max() <= 1
    shift = (grid - identity_grid(16)).abs()
    assert 0 < float(shift.max()) < 2 * 0.5 * 4 / 16       # |s * field / size|, field normalised to mean |.| 1
    x = _images()
    out = attack.apply_trigger(x, train=True)
    assert out.dtype == torch.uint8 and not torch.equal(out, x)
    assert torch.equal(out, attack.apply_trigger(x, train=False)), "one fixed warp for train and test"


def test_warp_field_is_fixed_by_the_seed():
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    assert torch.equal(warp_field(16, 4, 0.5, 1.0, g(0)), warp_field(16, 4, 0.5, 1.0, g(0)))
    assert not torch.equal(warp_field(16, 4, 0.5, 1.0, g(0)), warp_field(16, 4, 0.5, 1.0, g(1)))


def test_fixed_poisoned_indices_and_noise_samples(synthetic, make_attack):
    attack = make_attack("wanet", synthetic.info(), cross_ratio=2.0, target=1)
    ps = attack.poison(synthetic.train, torch.Generator().manual_seed(0))
    pois, noise = ps.kind == POISONED, ps.kind == NOISE
    n_pois = round(5000 / 45000 * 384)
    assert int(pois.sum()) == n_pois and int(noise.sum()) == 2 * n_pois == ps.params["noise"]
    assert (ps.labels[pois] == 1).all() and (synthetic.train.labels[pois] != 1).all()
    assert torch.equal(ps.labels[noise], synthetic.train.labels[noise]), "noise samples keep their labels"
    images = ps.apply(synthetic.train).images
    assert torch.equal(images[pois], attack.apply_trigger(synthetic.train.images[pois], train=True))
    noisy = images[noise]
    assert not torch.equal(noisy, attack.apply_trigger(synthetic.train.images[noise], train=True))
    assert not torch.equal(noisy, synthetic.train.images[noise])


def test_no_noise_by_default_and_count_is_5000_on_cifar10_sized_data(synthetic, make_attack):
    attack = make_attack("wanet", synthetic.info())
    ps = attack.poison(synthetic.train, torch.Generator().manual_seed(0))
    assert int((ps.kind == NOISE).sum()) == 0
    idx, pool = select_poison_indices(torch.arange(50_000) % 10, attack.cfg, "non_target", torch.Generator())
    assert len(idx) == 5000 and pool == 45_000             # seed 002 App. C: 10 % of the training set
