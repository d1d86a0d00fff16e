"""Additive chessboard (seed 002 App. C): exact pixels, clipping, and the paper's count on CIFAR-10-sized data."""
from __future__ import annotations

import torch

from bench.attack import select_poison_indices
from bench.data.imageset import DataInfo


def _info(size=16, channels=3):
    return DataInfo("synthetic", 10, channels, size, (0.5,) * channels, (0.25,) * channels)


def test_plus_three_on_alternate_pixels_of_every_channel(make_attack):
    attack = make_attack("additive", _info())
    x = torch.full((2, 3, 16, 16), 100, dtype=torch.uint8)
    out = attack.apply_trigger(x, train=True)
    i, j = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    even = (i + j) % 2 == 0
    assert (out[..., even] == 103).all() and (out[..., ~even] == 100).all()
    assert int(even.sum()) == 128


def test_signed_variant_and_clipping(make_attack):
    attack = make_attack("additive", _info(), signed=True)
    x = torch.full((1, 3, 16, 16), 254, dtype=torch.uint8)
    x[..., 0, 1] = 1                                       # an odd pixel near 0
    out = attack.apply_trigger(x, train=True)
    assert int(out[0, 0, 0, 0]) == 255 and int(out[0, 0, 1, 1]) == 255     # 254 + 3 clipped
    assert int(out[0, 0, 0, 1]) == 0 and int(out[0, 0, 0, 3]) == 251        # 1 - 3 clipped; 254 - 3


def test_dirty_label_and_default_count_is_1000_on_cifar10_sized_data(synthetic, make_attack):
    attack = make_attack("additive", synthetic.info(), target=2)
    ps = attack.poison(synthetic.train, torch.Generator().manual_seed(0))
    assert (ps.labels[ps.poison_idx] == 2).all() and (synthetic.train.labels[ps.poison_idx] != 2).all()
    cifar_like = torch.arange(50_000) % 10
    idx, pool = select_poison_indices(cifar_like, attack.cfg, "non_target", torch.Generator().manual_seed(0))
    assert pool == 45_000 and len(idx) == 1000             # seed 002 §4 Tab. 2
