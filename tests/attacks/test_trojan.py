"""Trojan: exact pixels of the square and watermark triggers (add / stamp), and the TrojanNN optimisation."""
from __future__ import annotations

import pytest
import torch

from attacks.trojan import select_neurons, watermark_mask
from bench.data.imageset import DataInfo
from bench.registry import ATTACKS


def _info(size=16, channels=3):
    return DataInfo("synthetic", 4, channels, size, (0.5,) * channels, (0.25,) * channels)


def _images(n=6, channels=3, size=16, seed=0):
    return torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def test_mcl_square_is_added_3x3_four_pixels_from_the_corner(make_attack):
    attack = make_attack("trojan", _info())                 # size 3, margin 4, add
    x = _images()
    out = attack.apply_trigger(x, train=True)
    box = torch.zeros(16, 16, dtype=torch.bool)
    box[9:12, 9:12] = True                                   # 16 - 3 - 4 = 9
    assert torch.equal(out[..., ~box], x[..., ~box])
    p = attack.pattern[:, 9:12, 9:12].int()
    assert torch.equal(out[..., 9:12, 9:12].int(), (x[..., 9:12, 9:12].int() + p).clamp(max=255))
    assert int(attack.pattern[:, ~box].abs().sum()) == 0 and len(p.unique()) > 3
    trig = attack.true_trigger()                             # the added square as an offset (MCL(True) on Trojan)
    assert float(trig.mask.abs().sum()) == 0 and torch.equal(trig.support(), box)
    via = trig.apply(x.float() / 255).mul(255).round()
    assert torch.equal(via, out.float())


def test_tj_sq_stamped_and_bounded(make_attack):
    attack = make_attack("trojan", _info(), size=9, margin=2, mode="stamp", pattern_max=100)
    x = _images()
    out = attack.apply_trigger(x, train=True)
    box = torch.zeros(16, 16, dtype=torch.bool)
    box[5:14, 5:14] = True
    assert torch.equal(out[..., ~box], x[..., ~box])
    assert torch.equal(out[..., box], attack.pattern[:, box].expand(6, -1, -1))
    assert int(attack.pattern.max()) <= 100
    assert int(attack.true_trigger().mask.sum()) == 81


def test_watermark_shape(make_attack):
    for size in (16, 32, 64):
        m = watermark_mask(size)
        assert 0.15 < float(m.float().mean()) < 0.35
        assert m[size - 1, 0] and m[0, size - 1] and not m[0, 0] and not m[size - 1, size - 1]
    attack = make_attack("trojan", _info(), shape="watermark")
    x = _images()
    out = attack.apply_trigger(x, train=True)
    m = watermark_mask(16)
    assert torch.equal(out[..., ~m], x[..., ~m])
    assert torch.equal(out[..., m].int(), (x[..., m].int() + attack.pattern[:, m].int()).clamp(max=255))


def test_fixed_pattern_is_seeded(make_attack):
    a, b, c = (make_attack("trojan", _info(), seed=s) for s in (0, 0, 1))
    assert torch.equal(a.pattern, b.pattern) and not torch.equal(a.pattern, c.pattern)
    assert torch.equal(make_attack("trojan", _info(), seed=1, trigger_seed=0).pattern, a.pattern)


def test_only_trojan_nn_needs_the_clean_model():
    assert not ATTACKS.get("trojan").obj.needs_clean_model
    assert ATTACKS.get("trojan_nn").obj.needs_clean_model


def test_neuron_selection_ranks_incoming_weights():
    conv = torch.nn.Conv2d(2, 4, 3)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[2] = 1.0
        conv.weight[0] = -0.5
    assert select_neurons(torch.nn.Sequential(conv, torch.nn.ReLU()), 2).tolist() == [2, 0]


def test_trojan_nn_optimises_the_masked_pattern(synthetic, make_attack, untrained_model):
    info = synthetic.info()
    attack = make_attack("trojan_nn", info, opt_steps=30, size=5, margin=1)
    init = attack.pattern.clone()
    with pytest.raises(RuntimeError, match="not optimised"):
        attack.apply_trigger(synthetic.test.images[:2], train=False)
    ps = attack.poison(synthetic.train, torch.Generator().manual_seed(0), clean_model=untrained_model(info))
    facts = ps.params
    assert facts["layer"] == "block3" and len(facts["neurons"]) == 1
    assert facts["activation"] > facts["activation_init"]
    assert not torch.equal(attack.pattern, init)
    assert int(attack.pattern[:, ~attack.mask[0]].abs().sum()) == 0, "only the masked pixels are optimised"
    assert torch.equal(ps.state["pattern"], attack.pattern)
    rebuilt = make_attack("trojan_nn", info, opt_steps=30, size=5, margin=1)
    rebuilt.load_state(ps.state)
    x = synthetic.test.images[:8]
    assert torch.equal(rebuilt.apply_trigger(x, train=False), attack.apply_trigger(x, train=False))
