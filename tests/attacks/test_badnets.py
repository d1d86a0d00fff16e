"""BadNets: exact pixels of each patch, native-resolution drawing, label modes, counts per base, and a real ASR."""
from __future__ import annotations

import pytest
import torch

from bench.attack import POISONED
from bench.config import ConfigError
from bench.data.imageset import DataInfo
from bench.metrics import backdoor_metrics
from bench.triggers import GRID3, nearest_resize


def _info(size=16, channels=3, classes=4):
    return DataInfo("synthetic", classes, channels, size, (0.5,) * channels, (0.25,) * channels)


def _images(n=6, channels=3, size=16, seed=0):
    return torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def _changed_region(x, out, top, left, h, w):
    """Assert ``out`` equals ``x`` outside the box; return the box of ``out``."""
    outside = torch.ones(x.shape[-2:], dtype=torch.bool)
    outside[top:top + h, left:left + w] = False
    assert torch.equal(out[..., outside], x[..., outside])
    return out[..., top:top + h, left:left + w]


def test_grid3_is_the_nad_grid_in_the_bottom_right_corner(make_attack):
    x = _images()
    out = make_attack("badnets", _info()).apply_trigger(x, train=True)
    box = _changed_region(x, out, 13, 13, 3, 3)
    expected = torch.tensor([[0, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)
    assert torch.equal(box, expected.expand_as(box))          # every image, every channel


def test_white_square_with_margin(make_attack):
    x = _images()
    out = make_attack("badnets", _info(), pattern="white", size=4, margin=1).apply_trigger(x, train=True)
    box = _changed_region(x, out, 11, 11, 4, 4)                # 16 - 4 - 1 = 11
    assert (box == 255).all()


@pytest.mark.parametrize("position,corner", [("top_left", (0, 0)), ("top_right", (0, 13)),
                                             ("bottom_left", (13, 0)), ("center", (6, 6))])
def test_named_positions(make_attack, position, corner):
    x = _images()
    out = make_attack("badnets", _info(), position=position).apply_trigger(x, train=True)
    box = _changed_region(x, out, *corner, 3, 3)
    assert torch.equal(box, GRID3.expand_as(box))


def test_noise_patch_at_a_seeded_random_position(make_attack):
    info = _info()
    a = make_attack("badnets", info, seed=5, pattern="noise", position="random")
    b = make_attack("badnets", info, seed=5, pattern="noise", position="random")
    c = make_attack("badnets", info, seed=6, pattern="noise", position="random")
    fixed = make_attack("badnets", info, seed=6, pattern="noise", position="random", trigger_seed=5)
    assert torch.equal(a.patch, b.patch) and (a.top, a.left) == (b.top, b.left)
    assert not torch.equal(a.patch, c.patch)
    assert torch.equal(a.patch, fixed.patch) and (a.top, a.left) == (fixed.top, fixed.left)
    assert 0 <= a.top <= 13 and 0 <= a.left <= 13 and len(a.patch.unique()) > 1
    x = _images()
    box = _changed_region(x, a.apply_trigger(x, train=True), a.top, a.left, 3, 3)
    assert torch.equal(box, a.patch.expand_as(box))
    tops = {make_attack("badnets", info, seed=s, pattern="noise", position="random").top for s in range(20)}
    assert len(tops) > 3, "the position is drawn, not fixed"


def test_patches_are_drawn_at_native_resolution_on_larger_images(make_attack):
    info = _info(size=64)
    x = _images(size=64)
    out = make_attack("badnets", info).apply_trigger(x, train=True)
    assert int((out != x).any(1).sum(dim=(1, 2)).max()) <= 9, "a 3x3 grid stays 3x3 at 64 px"
    _changed_region(x, out, 61, 61, 3, 3)
    big = make_attack("badnets", info, size=12)
    box = _changed_region(x, big.apply_trigger(x, train=True), 52, 52, 12, 12)
    assert torch.equal(box, GRID3.repeat_interleave(4, 0).repeat_interleave(4, 1).expand_as(box))
    assert int(big.true_trigger().mask.sum()) == 144 and set(big.patch.unique().tolist()) == {0, 255}


def test_nearest_resize_keeps_values():
    assert torch.equal(nearest_resize(GRID3, 3, 3), GRID3)
    r = nearest_resize(GRID3, 32, 32)
    assert set(r.unique().tolist()) == {0, 255} and r.shape == (32, 32)
    assert torch.equal(r[::11, ::11], GRID3)


def test_patch_must_fit(make_attack):
    with pytest.raises(ValueError, match="does not fit"):
        make_attack("badnets", _info(size=16), pattern="white", size=15, margin=2)
    with pytest.raises(ConfigError, match="pattern"):
        make_attack("badnets", _info(), pattern="checker")


def test_all2one_relabels_non_target_samples(synthetic, make_attack):
    attack = make_attack("badnets", synthetic.info(), target=2)
    ps = attack.poison(synthetic.train, torch.Generator().manual_seed(0))
    idx = ps.poison_idx
    assert (synthetic.train.labels[idx] != 2).all() and (ps.labels[idx] == 2).all()
    assert ps.params["base"] == "non_target" and ps.params["pool"] == 384
    assert len(idx) == round(0.1 * 384)


def test_all2all_relabels_to_the_next_class_over_the_whole_set(synthetic, make_attack):
    attack = make_attack("badnets", synthetic.info(), label_mode="all2all")
    ps = attack.poison(synthetic.train, torch.Generator().manual_seed(0))
    idx, y = ps.poison_idx, synthetic.train.labels
    assert ps.params["base"] == "all" and ps.params["pool"] == len(y) and len(idx) == round(0.1 * len(y))
    assert torch.equal(ps.labels[idx], (y[idx] + 1) % 4)
    assert len(y[idx].unique()) == 4, "all2all draws from every class, the target's too"
    x, target, keep = attack.stamp_test(synthetic.test.images, synthetic.test.labels)
    assert keep.all() and torch.equal(target, (synthetic.test.labels + 1) % 4)


@pytest.mark.parametrize("options,pool,count", [
    ({}, 384, 38),                                               # non_target default: round(0.1 * 384)
    ({"poison_base": "all"}, 512, 51),
    ({"poison_base": "target_class"}, 128, 13),
    ({"poison_count": 100}, 384, 100),                           # absolute count wins over the rate
    ({"poison_count": 10, "poison_base": "all"}, 512, 10),
    ({"poison_rate": 0.0}, 384, 0),
])
def test_counts_under_each_base(synthetic, make_attack, options, pool, count):
    ps = make_attack("badnets", synthetic.info(), **options).poison(synthetic.train, torch.Generator().manual_seed(0))
    assert ps.params["pool"] == pool and ps.params["poisoned"] == count == int((ps.kind == POISONED).sum())
    if options.get("poison_base") == "target_class":
        assert (synthetic.train.labels[ps.poison_idx] == 0).all()


def test_count_larger_than_the_pool_is_an_error(synthetic, make_attack):
    with pytest.raises(ValueError, match="exceeds"):
        make_attack("badnets", synthetic.info(), poison_count=385).poison(synthetic.train, torch.Generator())


def test_trained_model_learns_the_grid_backdoor(digits, make_attack, train_tiny):
    attack = make_attack("badnets", digits.info(), target=3)
    ps = attack.poison(digits.train, torch.Generator().manual_seed(0))
    model = train_tiny(digits.info(), ps.apply(digits.train))
    m = {x.name: x.value for x in backdoor_metrics(model, digits.test, attack)}
    assert m["asr"] >= 0.9 and m["ba"] >= 0.8, m
