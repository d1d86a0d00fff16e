"""Blend: the blending arithmetic, each pattern source, patch blends, and a real ASR."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bench.config import ConfigError
from bench.data.imageset import DataInfo
from bench.metrics import backdoor_metrics
from bench.triggers import stripes


def _info(size=16, channels=3):
    return DataInfo("synthetic", 4, channels, size, (0.5,) * channels, (0.25,) * channels)


def _images(n=6, channels=3, size=16, seed=0):
    return torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def test_blend_arithmetic_with_a_user_file(tmp_path, make_attack):
    path = tmp_path / "flat.png"
    Image.fromarray(np.full((40, 24, 3), 200, dtype=np.uint8)).save(path)   # any size: resized to 16x16
    attack = make_attack("blend", _info(), pattern="file", pattern_path=str(path), alpha=0.2)
    x = torch.full((2, 3, 16, 16), 100, dtype=torch.uint8)
    assert (attack.apply_trigger(x, train=True) == 120).all()            # 0.8 * 100 + 0.2 * 200
    x = _images()
    expected = 0.8 * x.double() + 0.2 * 200.0
    out = attack.apply_trigger(x, train=True).double()
    assert (out - expected).abs().max() <= 0.5 + 1e-6                    # rounded to the nearest level


def test_npy_pattern_and_grey_conversion(tmp_path, make_attack):
    arr = np.zeros((16, 16), dtype=np.uint8)
    arr[:, 8:] = 255
    np.save(tmp_path / "half.npy", arr)
    attack = make_attack("blend", _info(channels=1), pattern="file", pattern_path=str(tmp_path / "half.npy"),
                         alpha=0.5)
    out = attack.apply_trigger(torch.zeros(1, 1, 16, 16, dtype=torch.uint8), train=True)
    assert (out[..., :8] == 0).all() and (out[..., 8:] == 128).all()     # round(127.5) to even


def test_pattern_path_and_pattern_must_agree(make_attack, tmp_path):
    with pytest.raises(ConfigError, match="pattern_path"):
        make_attack("blend", _info(), pattern="file")
    with pytest.raises(ConfigError, match="pattern_path"):
        make_attack("blend", _info(), pattern_path=str(tmp_path / "x.png"))
    with pytest.raises(FileNotFoundError):
        make_attack("blend", _info(), pattern="file", pattern_path=str(tmp_path / "missing.png"))
    with pytest.raises(ConfigError, match="alpha"):
        make_attack("blend", _info(), alpha=1.5)


@pytest.mark.parametrize("channels", [1, 3])
def test_shipped_sample_image_is_the_default_pattern(make_attack, channels):
    attack = make_attack("blend", _info(channels=channels))
    assert attack.cfg.pattern == "image" and attack.cfg.alpha == 0.2
    p = attack.pattern
    assert p.shape == (channels, 16, 16) and p.dtype == torch.uint8 and p.float().std() > 10


def test_random_pixels_are_seeded_full_image(make_attack):
    a = make_attack("blend", _info(), seed=1, pattern="random")
    b = make_attack("blend", _info(), seed=1, pattern="random")
    c = make_attack("blend", _info(), seed=2, pattern="random")
    assert torch.equal(a.pattern, b.pattern) and not torch.equal(a.pattern, c.pattern)
    assert len(a.pattern.unique()) > 200 and a.pattern.shape == (3, 16, 16)


def test_signal_pattern_is_dbr_stripes(make_attack):
    attack = make_attack("blend", _info(), pattern="signal")
    out = attack.apply_trigger(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), train=True)
    cols = torch.arange(16)
    expected = torch.where(cols % 8 >= 4, 51, 0).to(torch.uint8)          # 0.2 * 255 on the bright columns
    assert (out == expected).all()
    assert torch.equal(stripes(4, 16)[0, 0], torch.tensor([0, 0, 0, 0, 255, 255, 255, 255] * 2, dtype=torch.uint8))


def test_mcl_centre_patch_blend_changes_only_the_patch(make_attack):
    attack = make_attack("blend", _info(), pattern="patch", alpha=0.1)   # seed 000 App. A.2
    x = _images()
    out = attack.apply_trigger(x, train=True)
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[6:9, 6:9] = True                                              # centre: (16 - 3) // 2 = 6
    assert torch.equal(out[..., ~inside], x[..., ~inside])
    u = attack.pattern[:, 6:9, 6:9].double()
    expected = (0.9 * x[..., 6:9, 6:9].double() + 0.1 * u)
    assert (out[..., 6:9, 6:9].double() - expected).abs().max() <= 0.5 + 1e-6
    mask = attack.true_trigger().mask
    assert int(mask.gt(0).sum()) == 9 and float(mask.max()) == pytest.approx(0.1)


def test_seed002_patch_blend_at_a_random_position(make_attack):
    attacks = [make_attack("blend", _info(), seed=s, pattern="patch", position="random", alpha=0.4) for s in range(8)]
    assert len({(a.top, a.left) for a in attacks}) > 1
    a = attacks[0]
    x = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    out = a.apply_trigger(x, train=True)
    assert torch.equal(out[..., a.top:a.top + 3, a.left:a.left + 3],
                       (0.4 * a.pattern[:, a.top:a.top + 3, a.left:a.left + 3].float()).round().to(torch.uint8)[None])
    assert int((out != 0).any(1).sum()) <= 9


def test_test_alpha_differs_from_the_poisoning_alpha(make_attack):
    attack = make_attack("blend", _info(), pattern="random", alpha=0.1, test_alpha=0.3)
    x = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    p = attack.pattern.double()
    assert torch.equal(attack.apply_trigger(x, train=True)[0], (0.1 * p).round().to(torch.uint8))
    stamped, _, _ = attack.stamp_test(x, torch.tensor([1]))
    assert (stamped[0].double() - 0.3 * p).abs().max() <= 0.5 + 1e-6


def test_trained_model_learns_the_blend_backdoor(digits, make_attack, train_tiny):
    attack = make_attack("blend", digits.info(), target=3)
    ps = attack.poison(digits.train, torch.Generator().manual_seed(0))
    model = train_tiny(digits.info(), ps.apply(digits.train))
    m = {x.name: x.value for x in backdoor_metrics(model, digits.test, attack)}
    assert m["asr"] >= 0.9 and m["ba"] >= 0.8, m


def test_file_patterns_travel_with_the_artifact(tmp_path, synthetic, make_attack):
    path = tmp_path / "p.png"
    Image.fromarray(np.full((16, 16, 3), 90, dtype=np.uint8)).save(path)
    attack = make_attack("blend", synthetic.info(), pattern="file", pattern_path=str(path))
    ps = attack.poison(synthetic.train, torch.Generator().manual_seed(0))
    Image.fromarray(np.full((16, 16, 3), 7, dtype=np.uint8)).save(path)       # the file changes afterwards
    rebuilt = make_attack("blend", synthetic.info(), pattern="file", pattern_path=str(path))
    rebuilt.load_state(ps.state)
    x = synthetic.test.images[:4]
    assert torch.equal(rebuilt.apply_trigger(x, train=False), attack.apply_trigger(x, train=False))
