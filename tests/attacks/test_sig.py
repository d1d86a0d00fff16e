"""SIG: the sinusoid formula pixel by pixel, clipping, train/test delta, clean-label semantics and counts."""
from __future__ import annotations

import math

import pytest
import torch

from bench.config import ConfigError
from bench.data.imageset import DataInfo
from bench.registry import ATTACKS


def _info(size=16, channels=3):
    return DataInfo("synthetic", 4, channels, size, (0.5,) * channels, (0.25,) * channels)


def test_sig_formula_on_every_row_and_channel(make_attack):
    attack = make_attack("sig", _info())                  # delta 20, f 6 (seed 000 App. A.2)
    x = torch.full((2, 3, 16, 16), 100, dtype=torch.uint8)
    out = attack.apply_trigger(x, train=True)
    for j in range(16):
        expected = round(100 + 20 * math.sin(2 * math.pi * j * 6 / 16))
        assert (out[:, :, :, j] == expected).all(), j
    assert not torch.equal(out[..., 1], out[..., 2])


def test_sig_clips_to_the_pixel_range(make_attack):
    attack = make_attack("sig", _info(), delta=40)
    hi = attack.apply_trigger(torch.full((1, 3, 16, 16), 250, dtype=torch.uint8), train=True)
    lo = attack.apply_trigger(torch.full((1, 3, 16, 16), 5, dtype=torch.uint8), train=True)
    assert int(hi.max()) == 255 and int(lo.min()) == 0
    j = 2                                                   # sin(2 pi 12 / 16) = -1: 250 - 40
    assert (hi[..., j] == 210).all() and (lo[..., j] == 0).all()


def test_separate_test_delta(make_attack):
    attack = make_attack("sig", _info(), delta=40, test_delta=60)   # the D-BR code's pair
    x = torch.full((1, 3, 16, 16), 100, dtype=torch.uint8)
    stamped, target, keep = attack.stamp_test(x, torch.tensor([1]))
    j = 6                                                   # sin(2 pi 36 / 16) = +1
    assert (attack.apply_trigger(x, train=True)[..., j] == 140).all() and (stamped[..., j] == 160).all()
    assert target.tolist() == [0] and keep.tolist() == [True]


def test_clean_label_poisons_target_class_without_relabelling(synthetic, make_attack):
    attack = make_attack("sig", synthetic.info(), target=1)
    ps = attack.poison(synthetic.train, torch.Generator().manual_seed(0))
    assert torch.equal(ps.labels, synthetic.train.labels)
    assert (synthetic.train.labels[ps.poison_idx] == 1).all()
    assert ps.params["base"] == "target_class" and ps.params["pool"] == 128
    assert ps.params["poisoned"] == round(0.08 * 128)       # seed 000 §4.1: 8 % of the target class


def test_gtsrb_uses_lfd_rate_through_the_registry_overlay():
    entry = ATTACKS.get("sig")
    assert entry.parse({}, dataset="gtsrb").poison_rate == 0.095       # seed 003 §5.1
    assert entry.parse({}, dataset="cifar10").poison_rate == 0.08
    assert entry.parse({"poison_rate": 0.1}, dataset="gtsrb").poison_rate == 0.1
    assert ATTACKS.get("cl").parse({}, dataset="gtsrb").poison_rate == 0.095


def test_all2all_is_rejected_for_clean_label(make_attack):
    with pytest.raises(ConfigError, match="clean-label"):
        make_attack("sig", _info(), label_mode="all2all")
