"""bench.augment: exactness of the integer-shift ops, geometry of the affine ops, colour ops, seeding, params.

All on the CPU; torchvision's own tensor functions serve as the reference where the op mirrors one of them.
"""
from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from bench import augment as A


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def arange_images(n: int = 6, c: int = 1, h: int = 8, w: int = 10) -> torch.Tensor:
    """Every pixel of every image unique and non-zero (so zero fill is distinguishable): value = 1 + position."""
    return (torch.arange(h * w, dtype=torch.float32) + 1).view(1, 1, h, w).repeat(n, c, 1, 1)


def rand_u8(n: int = 16, c: int = 3, h: int = 12, w: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), generator=gen(seed), dtype=torch.uint8)


# ------------------------------------------------------------------------------------------------- crop / flip


def test_crop_with_padding_zero_is_identity():
    x = arange_images()
    assert torch.equal(A.random_crop(x, 0, gen()), x)
    assert torch.equal(A.augment(rand_u8(), ("crop",), gen(), padding=0), rand_u8().float() / 255)


@pytest.mark.parametrize("padding", [1, 3])
def test_crop_shifts_stay_within_padding_and_move_content_exactly(padding):
    n, h, w = 64, 8, 10
    x = arange_images(n, 2, h, w)
    out = A.random_crop(x, padding, gen(1))
    shifts = set()
    for img, src in zip(out, x, strict=True):
        inside = img[0] > 0
        k = img[0][inside].long() - 1                      # source position of each kept pixel
        ii, jj = torch.nonzero(inside, as_tuple=True)
        dy, dx = (k // w - ii).unique(), (k % w - jj).unique()
        assert len(dy) == 1 and len(dx) == 1               # one rigid shift per image
        dy, dx = int(dy), int(dx)
        assert abs(dy) <= padding and abs(dx) <= padding
        # The exact translated image, zero where the source falls outside.
        expect = torch.zeros_like(src)
        ys, xs = slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(w, w - dx))
        expect[:, ys, xs] = src[:, ys.start + dy:ys.stop + dy, xs.start + dx:xs.stop + dx]
        assert torch.equal(img, expect)
        shifts.add((dy, dx))
    assert len(shifts) > 5                                 # the shifts really vary across the batch


def test_flip_flips_exactly_the_chosen_images():
    x = arange_images(32, 3)
    out = A.random_flip(x, gen(2))
    chosen = torch.rand(32, generator=gen(2)) < 0.5         # the same draw the op makes
    assert 0 < int(chosen.sum()) < 32
    assert torch.equal(out[chosen], x[chosen].flip(3))
    assert torch.equal(out[~chosen], x[~chosen])


# ------------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("size", [(8, 8), (7, 10)])
def test_rotation_by_180_is_a_double_flip(size):
    x = torch.rand(4, 3, *size, generator=gen(3))
    assert torch.equal(A.rotate(x, 180.0), x.flip(2).flip(3))            # nearest: pixel centres map exactly
    assert torch.allclose(A.rotate(x, 180.0, "bilinear"), x.flip(2).flip(3), atol=1e-5)
    u8 = (x * 255).round().to(torch.uint8)
    fixed = A.augment(u8, ("rotate",), gen(), params={"rotate": {"degrees": (180, 180)}})
    assert torch.allclose(fixed, (u8.float() / 255).flip(2).flip(3), atol=1e-6)


@pytest.mark.parametrize("angle", [90.0, -37.5])
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_rotation_matches_torchvision(angle, mode):
    x = torch.rand(3, 3, 9, 13, generator=gen(4))
    ref = TF.rotate(x, angle, interpolation=InterpolationMode(mode))
    assert torch.allclose(A.rotate(x, angle, mode), ref, atol=1e-5)


def test_rotation_angles_are_per_image():
    x = torch.rand(2, 1, 8, 8, generator=gen(5))
    out = A.rotate(x, torch.tensor([0.0, 90.0]))
    assert torch.equal(out[0], x[0])
    assert torch.equal(out[1], x[1].rot90(1, (1, 2)))                   # counter-clockwise, as torchvision


def test_translate_by_zero_is_identity():
    x = torch.rand(4, 3, 9, 11, generator=gen(6))
    assert torch.equal(A.translate(x, 0.0, 0.0), x)
    assert torch.allclose(A.translate(x, 0.0, 0.0, "bilinear"), x, atol=1e-6)
    u8 = rand_u8()
    out = A.augment(u8, ("translate",), gen(), params={"translate": {"translate": (0.0, 0.0)}})
    assert torch.equal(out, u8.float() / 255)


def test_translate_matches_torchvision_and_shifts_whole_pixels():
    x = arange_images(1, 1, 8, 10)
    out = A.translate(x, 3.0, -2.0)
    assert torch.equal(out, TF.affine(x, 0.0, [3, -2], 1.0, [0.0, 0.0]))
    assert torch.equal(out[0, 0, :6, 3:], x[0, 0, 2:, :7])                # content moved right 3, up 2
    assert int((out == 0).sum()) == 8 * 10 - 6 * 7


def test_random_translate_stays_within_its_fraction():
    n, h, w = 200, 10, 10
    x = arange_images(n, 1, h, w)
    out = A.random_translate(x, gen(7), (0.2, 0.3))
    for img in out:
        inside = img[0] > 0
        if not inside.any():
            continue
        k = img[0][inside].long() - 1
        ii, jj = torch.nonzero(inside, as_tuple=True)
        assert (ii - k // w).abs().max() <= round(0.3 * h) and (jj - k % w).abs().max() <= round(0.2 * w)


def test_resized_crop_matches_torchvision_and_full_box_is_identity():
    x = torch.rand(2, 3, 12, 16, generator=gen(8))
    box = [torch.tensor([v, v]) for v in (2, 3, 7, 9)]
    ref = TF.resized_crop(x, 2, 3, 7, 9, [12, 16], antialias=True)
    assert torch.allclose(A.resized_crop(x, *box), ref, atol=1e-5)
    full = [torch.tensor([v, v]) for v in (0, 0, 12, 16)]
    assert torch.allclose(A.resized_crop(x, *full), x, atol=1e-6)
    same = A.random_resized_crop(x[:, :, :12, :12], gen(), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(same, x[:, :, :12, :12], atol=1e-6)


# ------------------------------------------------------------------------------------------------- colour


def test_grayscale_output_has_equal_channels():
    x = rand_u8(8)
    out = A.augment(x, ("grayscale",), gen(), params={"grayscale": {"p": 1.0}})
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    assert torch.allclose(out, TF.rgb_to_grayscale(x.float() / 255, 3), atol=1e-6)
    mixed = A.random_grayscale(x.float() / 255, gen(9), p=0.5)
    gray = (mixed[:, 0] == mixed[:, 1]).all((1, 2)) & (mixed[:, 1] == mixed[:, 2]).all((1, 2))
    assert 0 < int(gray.sum()) < 8
    one = rand_u8(4, c=1).float() / 255
    assert torch.equal(A.random_grayscale(one, gen(), p=1.0), one)


@pytest.mark.parametrize("channels", [1, 3])
def test_color_jitter_stays_in_unit_range(channels):
    x = rand_u8(64, c=channels)
    out = A.augment(x, ("color_jitter",), gen(10),
                    params={"color_jitter": {"brightness": 0.9, "contrast": 0.9, "saturation": 0.9, "hue": 0.5}})
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    changed = (out != x.float() / 255).flatten(1).any(1)
    assert changed.float().mean() > 0.5                                # p = 0.8 by default


def test_color_jitter_with_zero_strength_is_identity_and_p_zero_skips():
    x = rand_u8().float() / 255
    assert torch.equal(A.color_jitter(x, gen(), 0.0, 0.0, 0.0, 0.0, p=1.0), x)
    assert torch.equal(A.color_jitter(x, gen(), p=0.0), x)


def test_color_adjustments_match_torchvision():
    x = torch.rand(4, 3, 6, 6, generator=gen(11))
    f = torch.tensor([0.6, 1.4, 0.0, 1.0])
    for ours, ref in ((A._brightness, TF.adjust_brightness), (A._contrast, TF.adjust_contrast),
                      (A._saturation, TF.adjust_saturation)):
        expect = torch.stack([ref(x[i], float(f[i])) for i in range(4)])
        assert torch.allclose(ours(x, f), expect, atol=1e-6)
    shift = torch.tensor([-0.1, 0.05, 0.5, 0.0])
    expect = torch.stack([TF.adjust_hue(x[i], float(shift[i])) for i in range(4)])
    assert torch.allclose(A._hue(x, shift), expect, atol=1e-5)


# ------------------------------------------------------------------------------------------------- seeding


@pytest.mark.parametrize("op", list(A.OPS))
def test_same_seed_same_output_and_other_seed_differs(op):
    x = rand_u8(32)
    a, b = A.augment(x, (op,), gen(12)), A.augment(x, (op,), gen(12))
    assert torch.equal(a, b)
    assert a.dtype == torch.float32 and a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, A.augment(x, (op,), gen(13)))


def test_simclr_views_are_seeded_and_differ_from_each_other():
    x = rand_u8(16, h=16, w=16)
    v1, v2 = A.simclr_views(x, gen(14))
    w1, w2 = A.simclr_views(x, gen(14))
    assert torch.equal(v1, w1) and torch.equal(v2, w2)
    assert v1.shape == x.shape and not torch.equal(v1, v2)
    assert A.SIMCLR == ("resized_crop", "flip", "color_jitter", "grayscale")


def test_augment_keeps_the_training_loop_contract():
    x = rand_u8()
    assert torch.equal(A.augment(x, (), gen()), x.float() / 255)
    a = A.augment(x, ("crop", "flip"), gen(15), padding=2)
    b = A.augment(x, ("crop", "flip"), gen(15), params={"crop": {"padding": 2}})
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("ops, params, match", [
    (("rotat",), None, "did you mean 'rotate'"),
    (("rotate",), {"rotate": {"degree": 20}}, "did you mean 'degrees'"),
    (("flip",), {"rotate": {"degrees": 20}}, "not among the ops"),
    (("rotate",), {"rotate": 20}, "must be a mapping"),
])
def test_bad_ops_and_params_are_rejected_with_a_hint(ops, params, match):
    with pytest.raises(ValueError, match=match):
        A.augment(rand_u8(2), ops, gen(), params=params)
