"""Label-consistent attack: PGD stays within eps, labels are untouched, the grid triggers (one or four corners)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.data.imageset import DataInfo
from bench.triggers import GRID3, reflect_for_corner


def _info(size=16, channels=3):
    return DataInfo("synthetic", 4, channels, size, (0.5,) * channels, (0.25,) * channels)


def test_needs_a_clean_surrogate(synthetic, make_attack):
    attack = make_attack("cl", synthetic.info())
    assert type(attack).needs_clean_model and attack.label_type == "clean"
    with pytest.raises(ValueError, match="clean"):
        attack.poison(synthetic.train, torch.Generator())


def test_pgd_within_eps_labels_untouched_trigger_stamped(synthetic, make_attack, untrained_model):
    info = synthetic.info()
    attack = make_attack("cl", info, target=2)
    model = untrained_model(info).eval()
    ps = attack.poison(synthetic.train, torch.Generator().manual_seed(0), clean_model=model)
    assert torch.equal(ps.labels, synthetic.train.labels)
    idx = ps.poison_idx
    assert (synthetic.train.labels[idx] == 2).all() and len(idx) == round(0.08 * 128)
    clean, poisoned = synthetic.train.images[idx], ps.apply(synthetic.train).images[idx]
    box = torch.zeros(16, 16, dtype=torch.bool)
    box[13:, 13:] = True
    diff = (poisoned.int() - clean.int())[..., ~box]
    assert int(diff.abs().max()) <= 8 and int((diff != 0).sum()) > diff.numel() // 2
    assert torch.equal(poisoned[..., 13:, 13:], GRID3.expand(len(idx), 3, 3, 3))
    # the perturbation ascends the surrogate's loss on the true label
    adv = attack.perturb(clean, synthetic.train.labels[idx], model, torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = lambda x: F.cross_entropy(model(x.float() / 255), synthetic.train.labels[idx])  # noqa: E731
        assert float(loss(adv)) > float(loss(clean))


def test_fractional_eps_is_floored_after_quantisation(synthetic, make_attack, untrained_model):
    attack = make_attack("cl", synthetic.info(), eps=2.5, step_size=2.0, steps=2)
    x = synthetic.train.images[:16]
    adv = attack.perturb(x, synthetic.train.labels[:16], untrained_model(synthetic.info()), torch.Generator())
    assert int((adv.int() - x.int()).abs().max()) == 2


def test_four_corner_trigger_is_the_grid_mirrored(make_attack):
    attack = make_attack("cl", _info(), corners="four")
    x = torch.full((1, 3, 16, 16), 128, dtype=torch.uint8)
    out = attack.apply_trigger(x, train=False)[0]
    assert torch.equal(out[:, 13:, 13:], GRID3.expand(3, 3, 3))
    assert torch.equal(out[:, 13:, :3], GRID3.flip(-1).expand(3, 3, 3))
    assert torch.equal(out[:, :3, 13:], GRID3.flip(-2).expand(3, 3, 3))
    assert torch.equal(out[:, :3, :3], reflect_for_corner(GRID3, "top_left").expand(3, 3, 3))
    assert torch.equal(out[:, :3, :3], GRID3.flip(-1).flip(-2).expand(3, 3, 3))
    assert int((out != 128).any(0).sum()) <= 36 and int(attack.mask.sum()) == 36
    assert torch.equal(out.flip(-1)[:, :, :], out), "mirrored corners survive a horizontal flip"


def test_test_time_trigger_is_the_grid_only(make_attack):
    attack = make_attack("cl", _info(), position="center")   # seed 000 App. B: centre under augmentation
    x = torch.zeros(4, 3, 16, 16, dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 3])
    stamped, target, keep = attack.stamp_test(x, y)
    assert torch.equal(stamped[:, :, 6:9, 6:9], GRID3.expand(4, 3, 3, 3)) and int(stamped.sum()) == 4 * 3 * 4 * 255
    assert keep.tolist() == [False, True, True, True] and (target == 0).all()
    assert int(attack.true_trigger().mask.sum()) == 9
