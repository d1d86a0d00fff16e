"""Batched augmentation on the device: whole-batch tensor ops, never a per-image Python loop.

``augment(x_u8, ops, generator)`` takes uint8 [N, C, H, W] (already triggered: poison first, then augment, as
the papers' code does) and returns float [N, C, H, W] in [0, 1].  Ops run in the order given; each image draws
its own parameters from ``generator`` (same seed -> same output), as torchvision's per-sample transforms do.

Ops and their defaults (every default is the value a seed paper's code uses; torchvision semantics):

    crop          RandomCrop(size, padding=4), zero fill: exact integer shifts (a gather, not a resampling)
    flip          RandomHorizontalFlip(p=0.5)
    rotate        RandomRotation(degrees=180), nearest, zero fill       (D-BR's FCT tau, first half)
    translate     RandomAffine(0, translate=(0.2, 0.2)), nearest        (D-BR's FCT tau, second half)
    resized_crop  RandomResizedCrop(size, scale=(0.2, 1.0), ratio=(3/4, 4/3)), bilinear       (SimCLR / D-ST)
    color_jitter  RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), random order per image (SimCLR)
    grayscale     RandomGrayscale(p=0.2), channel count kept                                   (SimCLR)
    gaussian_blur RandomApply([GaussianBlur(sigma ~ U(0.1, 2))], p=0.5)          (DBD's SimCLR views)

Op parameters.  An op is named by its string (the names a ``Recipe.augment`` tuple holds); its parameters are
keyword overrides passed separately, keyed by op name, and checked against the op's signature::

    augment(x, ("rotate", "flip"), g, params={"rotate": {"degrees": 20}})          # D-BR BR on ImageNet
    augment(x, ("rotate",), g, params={"rotate": {"degrees": (180, 180)}})          # always exactly 180
    augment(x, ("rotate", "translate"), g)                                         # D-BR's tau as is

A range parameter is a half-width ``d`` (drawn from [-d, d]) or a ``(lo, hi)`` pair, as in torchvision, so a
fixed value is the pair ``(v, v)``.  ``padding`` is the crop's padding (kept as an argument for the training
loop; ``params["crop"]["padding"]`` wins).  The deterministic primitives (``rotate``, ``translate``,
``resized_crop``, ``grayscale``) take per-image tensors and are public for methods that need exact transforms.
"""
from __future__ import annotations

import difflib
import inspect
import math
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

Range = float | tuple[float, float]

# ---------------------------------------------------------------------------------------------------------
# Randomness: drawn on the generator's device (a CPU generator may drive a CUDA batch), moved to the batch's.
# ---------------------------------------------------------------------------------------------------------


def _rand(n: int, generator: torch.Generator | None, device: torch.device, *shape: int) -> torch.Tensor:
    gdev = generator.device if generator is not None else device
    return torch.rand((n, *shape), generator=generator, device=gdev).to(device)


def _uniform(n: int, bounds: tuple[float, float], generator: torch.Generator | None,
             device: torch.device) -> torch.Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * _rand(n, generator, device)


def _bounds(value: Range, name: str, center: float = 0.0, floor: float | None = None) -> tuple[float, float]:
    """torchvision's convention: ``d`` means [center - d, center + d] (clipped at ``floor``); a pair is as is."""
    if isinstance(value, (tuple, list)):
        lo, hi = float(value[0]), float(value[1])
    else:
        if value < 0:
            raise ValueError(f"{name}={value}: a half-width must be >= 0")
        lo, hi = center - float(value), center + float(value)
        if floor is not None:
            lo = max(lo, floor)
    if lo > hi:
        raise ValueError(f"{name}=({lo}, {hi}): lower bound above upper bound")
    return lo, hi


def _per_image(value: float | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float32, device=device).expand(n)


# ---------------------------------------------------------------------------------------------------------
# Exact integer-shift ops (kept as they were: no resampling, so no interpolation error).
# ---------------------------------------------------------------------------------------------------------


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """RandomCrop(size, padding) with zero padding: one shift per image, done as a batched gather."""
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dev = x.device
    gdev = generator.device if generator is not None else dev
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=gdev).to(dev)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=gdev).to(dev)
    rows = (dy[:, None] + torch.arange(h, device=dev)[None]).view(n, 1, h, 1).expand(n, c, h, w + 2 * padding)
    cropped = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w, device=dev)[None]).view(n, 1, 1, w).expand(n, c, h, w)
    return cropped.gather(3, cols)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """RandomHorizontalFlip(p) as one masked select."""
    flip = _rand(x.shape[0], generator, x.device) < p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


# ---------------------------------------------------------------------------------------------------------
# Geometric ops: one affine grid per image, one batched grid_sample (align_corners=False, zero fill), which
# is how torchvision's tensor backend implements rotate/affine -- so results match it, not just resemble it.
# ---------------------------------------------------------------------------------------------------------


def _warp(x: torch.Tensor, theta: torch.Tensor, interpolation: str,
          clamp: torch.Tensor | None = None) -> torch.Tensor:
    """Sample ``x`` at ``theta`` [N, 2, 3] (output -> input, normalised coordinates).

    ``clamp`` [N, 4] = (x_lo, x_hi, y_lo, y_hi) in normalised coordinates keeps sampling inside a box.
    """
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    if clamp is not None:
        c = clamp.to(x.dtype).view(-1, 1, 1, 4)
        grid = torch.stack((grid[..., 0].clamp(c[..., 0], c[..., 1]), grid[..., 1].clamp(c[..., 2], c[..., 3])), -1)
    return F.grid_sample(x, grid, mode=interpolation, padding_mode="zeros", align_corners=False)


def rotate(x: torch.Tensor, degrees: float | torch.Tensor, interpolation: str = "nearest") -> torch.Tensor:
    """Rotate about the image centre, counter-clockwise by ``degrees`` (torchvision's ``F.rotate``), zero fill.

    Args:
        x: float [N, C, H, W].
        degrees: one angle, or float [N] per image.
        interpolation: "nearest" (torchvision's default) or "bilinear".
    """
    n, _, h, w = x.shape
    a = torch.deg2rad(_per_image(degrees, n, x.device))
    cos, sin, zero = torch.cos(a), torch.sin(a), torch.zeros_like(a)
    # Pixel-space inverse map (y down): in = [[cos, -sin], [sin, cos]] out; rescaled to normalised coordinates.
    theta = torch.stack((torch.stack((cos, -sin * h / w, zero), 1), torch.stack((sin * w / h, cos, zero), 1)), 1)
    return _warp(x, theta, interpolation)


def translate(x: torch.Tensor, dx: float | torch.Tensor, dy: float | torch.Tensor,
              interpolation: str = "nearest") -> torch.Tensor:
    """Shift content right by ``dx`` and down by ``dy`` pixels (float or float [N]), zero fill."""
    n, _, h, w = x.shape
    tx, ty = _per_image(dx, n, x.device), _per_image(dy, n, x.device)
    one, zero = torch.ones_like(tx), torch.zeros_like(tx)
    theta = torch.stack((torch.stack((one, zero, -2 * tx / w), 1), torch.stack((zero, one, -2 * ty / h), 1)), 1)
    return _warp(x, theta, interpolation)


_shift = translate  # for random_translate, whose torchvision-named parameter ``translate`` shadows it


def resized_crop(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: torch.Tensor,
                 width: torch.Tensor, interpolation: str = "bilinear") -> torch.Tensor:
    """Crop box (top, left, height, width) of each image (int [N] each) and resize it to the input size.

    Sampling is clamped to the box's pixel centres, so this equals torchvision's ``F.resized_crop`` (crop, then
    bilinear resize with align_corners=False; an upscale, where antialiasing does nothing).
    """
    n, _, h, w = x.shape
    top, left, height, width = (t.to(x.device, torch.float32) for t in (top, left, height, width))
    zero = torch.zeros_like(top)
    sx, sy = width / w, height / h
    tx, ty = (2 * left + width) / w - 1, (2 * top + height) / h - 1
    theta = torch.stack((torch.stack((sx, zero, tx), 1), torch.stack((zero, sy, ty), 1)), 1)
    clamp = torch.stack(((2 * left + 1) / w - 1, (2 * (left + width) - 1) / w - 1,
                         (2 * top + 1) / h - 1, (2 * (top + height) - 1) / h - 1), 1)
    return _warp(x, theta, interpolation, clamp)


def random_rotate(x: torch.Tensor, generator: torch.Generator | None = None, degrees: Range = 180.0,
                  interpolation: str = "nearest") -> torch.Tensor:
    """RandomRotation(degrees): an angle per image, uniform in [-degrees, degrees] (or in a (lo, hi) pair)."""
    return rotate(x, _uniform(x.shape[0], _bounds(degrees, "degrees"), generator, x.device), interpolation)


def random_translate(x: torch.Tensor, generator: torch.Generator | None = None,
                     translate: tuple[float, float] = (0.2, 0.2), interpolation: str = "nearest") -> torch.Tensor:
    """RandomAffine(degrees=0, translate=(fx, fy)): whole-pixel shifts with |dx| <= fx * W and |dy| <= fy * H.

    As torchvision: dx = round(U(-fx * W, fx * W)), likewise dy.
    """
    n, _, h, w = x.shape
    fx, fy = translate
    dx = torch.round(_uniform(n, (-fx * w, fx * w), generator, x.device))
    dy = torch.round(_uniform(n, (-fy * h, fy * h), generator, x.device))
    return _shift(x, dx, dy, interpolation)


def random_resized_crop(x: torch.Tensor, generator: torch.Generator | None = None,
                        scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        interpolation: str = "bilinear") -> torch.Tensor:
    """RandomResizedCrop(size=input size, scale, ratio), with torchvision's box sampling, batched.

    torchvision tries up to 10 (area, aspect) draws and takes the first box that fits, else a centre crop with
    the aspect ratio clamped to ``ratio``; here all 10 tries are drawn at once and the first fitting one is kept.
    """
    n, _, h, w = x.shape
    dev, tries = x.device, 10
    area = h * w * (scale[0] + (scale[1] - scale[0]) * _rand(n, generator, dev, tries))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * _rand(n, generator, dev, tries))
    cw, ch = torch.round(torch.sqrt(area * aspect)), torch.round(torch.sqrt(area / aspect))
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)              # first fitting try (0 when none fits)
    cw, ch, found = cw.gather(1, first)[:, 0], ch.gather(1, first)[:, 0], fits.any(1)
    # Fallback (torchvision): the whole image, cut to the nearest allowed aspect ratio, centred.
    in_ratio = w / h
    fw = float(w) if in_ratio <= ratio[1] else float(round(h * ratio[1]))
    fh = float(h) if in_ratio >= ratio[0] else float(round(w / ratio[0]))
    cw, ch = torch.where(found, cw, fw), torch.where(found, ch, fh)
    u = _rand(n, generator, dev, 2)
    top = torch.where(found, torch.floor(u[:, 0] * (h - ch + 1)), torch.floor((h - ch) / 2))
    left = torch.where(found, torch.floor(u[:, 1] * (w - cw + 1)), torch.floor((w - cw) / 2))
    return resized_crop(x, top, left, ch, cw, interpolation)


# ---------------------------------------------------------------------------------------------------------
# Colour ops (torchvision's tensor formulas, float in [0, 1]); single-channel images pass saturation, hue and
# grayscale unchanged, as torchvision does.
# ---------------------------------------------------------------------------------------------------------

_GRAY = (0.2989, 0.587, 0.114)   # torchvision's rgb_to_grayscale weights


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of RGB images, repeated over the channels (C kept); 1-channel images are returned as is."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(_GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True).expand_as(x)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1).to(x.dtype)
    return (f * x + (1 - f) * other).clamp_(0, 1)


def _brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), f)


def _contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x)[:, :1].mean((1, 2, 3), keepdim=True), f)


def _saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return x if x.shape[1] == 1 else _blend(x, grayscale(x), f)


# hsv -> rgb: for sector i = floor(6 h), (r, g, b) pick from (v, p, q, t) by this table (indices into that stack).
_HSV_PICK = torch.tensor([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])


def _hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    v, mn = x.max(1).values, x.min(1).values
    chroma = v - mn
    flat = chroma == 0
    s = chroma / torch.where(flat, torch.ones_like(v), v)
    div = torch.where(flat, torch.ones_like(chroma), chroma)
    rc, gc, bc = (v - r) / div, (v - g) / div, (v - b) / div
    is_r, is_g = v == r, (v == g) & (v != r)
    hue6 = torch.where(is_r, bc - gc, torch.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.remainder(hue6 / 6.0 + f.view(-1, 1, 1).to(x.dtype), 1.0)
    sector = torch.floor(h * 6.0)
    frac = h * 6.0 - sector
    p = (v * (1 - s)).clamp(0, 1)
    q = (v * (1 - s * frac)).clamp(0, 1)
    t = (v * (1 - s * (1 - frac))).clamp(0, 1)
    pick = _HSV_PICK.to(x.device)[sector.long().remainder(6)]          # [N, H, W, 3]
    return torch.stack((v, p, q, t), 1).gather(1, pick.permute(0, 3, 1, 2))


_JITTER = (_brightness, _contrast, _saturation, _hue)


def color_jitter(x: torch.Tensor, generator: torch.Generator | None = None, brightness: float = 0.4,
                 contrast: float = 0.4, saturation: float = 0.4, hue: float = 0.1, p: float = 0.8) -> torch.Tensor:
    """RandomApply([ColorJitter(brightness, contrast, saturation, hue)], p), SimCLR's colour distortion.

    Each chosen image gets its own factors (brightness/contrast/saturation from [max(0, 1 - v), 1 + v], hue shift
    from [-hue, hue]) and its own random order of the four adjustments, as torchvision's per-call ``randperm``.
    Each adjustment runs once per image (on the images whose turn it is), so the cost is that of one pass.
    """
    n, dev = x.shape[0], x.device
    chosen = _rand(n, generator, dev) < p
    factors = torch.stack([_uniform(n, _bounds(v, name, 1.0, 0.0), generator, dev) for name, v in
                           (("brightness", brightness), ("contrast", contrast), ("saturation", saturation))]
                          + [_uniform(n, _bounds(hue, "hue"), generator, dev)], 1)
    order = _rand(n, generator, dev, 4).argsort(1)                      # per-image permutation of the 4 ops
    active = (brightness, contrast, saturation, hue)
    out = x.clone()
    for step in range(4):
        for k, fn in enumerate(_JITTER):
            if not active[k]:
                continue
            idx = (chosen & (order[:, step] == k)).nonzero().squeeze(1)
            if idx.numel():
                out[idx] = fn(out[idx], factors[idx, k])
    return out


def random_grayscale(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.2) -> torch.Tensor:
    """RandomGrayscale(p): each image becomes gray (all channels equal) with probability ``p``."""
    chosen = _rand(x.shape[0], generator, x.device) < p
    return torch.where(chosen.view(-1, 1, 1, 1), grayscale(x), x)


def random_gaussian_blur(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5,
                         sigma: tuple[float, float] = (0.1, 2.0)) -> torch.Tensor:
    """RandomApply([GaussianBlur(sigma)], p): DBD's SimCLR blur (SCLBD/DBD data/utils.py l.13-26, 46-49: PIL's
    ``GaussianBlur(radius=σ)`` with σ ~ U(0.1, 2.0), config/defense/simclr/*/example.yaml l.29-31: p 0.5).

    Each chosen image gets its own σ; a separable Gaussian of standard deviation σ truncated at 3 · max σ, with
    the edge pixels extended (replicate padding), as PIL extends them.  Batched as one grouped convolution.
    """
    n, c, h, w = x.shape
    lo, hi = _bounds(sigma, "sigma")
    chosen = _rand(n, generator, x.device) < p
    s = _uniform(n, (lo, hi), generator, x.device).clamp(min=1e-3).to(x.dtype)
    r = max(1, math.ceil(3 * hi))
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-t[None] ** 2 / (2 * s[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)                # [n * c, 2r + 1]
    y = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="replicate")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c).view(n, c, h, w)
    return torch.where(chosen.view(-1, 1, 1, 1), y, x)


# ---------------------------------------------------------------------------------------------------------
# The op table and the entry points.
# ---------------------------------------------------------------------------------------------------------

Op = Callable[..., torch.Tensor]
"""op(x float [N, C, H, W] in [0, 1], generator, **params) -> float [N, C, H, W] in [0, 1]."""


def _crop_op(x: torch.Tensor, generator: torch.Generator | None = None, padding: int = 4) -> torch.Tensor:
    return random_crop(x, padding, generator)


OPS: dict[str, Op] = {
    "crop": _crop_op,
    "flip": random_flip,
    "rotate": random_rotate,
    "translate": random_translate,
    "color_jitter": color_jitter,
    "grayscale": random_grayscale,
    "resized_crop": random_resized_crop,
    "gaussian_blur": random_gaussian_blur,
}

# The parameters each op accepts (everything after ``x, generator``), for checking ``params`` up front.
_OP_PARAMS: dict[str, tuple[str, ...]] = {name: tuple(inspect.signature(fn).parameters)[2:]
                                         for name, fn in OPS.items()}

SIMCLR: tuple[str, ...] = ("resized_crop", "flip", "color_jitter", "grayscale")
"""SimCLR's view pipeline (as D-ST's SS-CTL and seed 002 use it): RandomResizedCrop(scale 0.2-1), HFlip,
ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, RandomGrayscale(p 0.2)."""


def _closest(word: str, valid: Sequence[str]) -> str:
    near = difflib.get_close_matches(word, valid, n=1)
    return f"did you mean {near[0]!r}? " if near else ""


def check_ops(ops: Sequence[str], params: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Raise ValueError (naming the nearest valid name) for an unknown op, a parameter for an op not in
    ``ops``, or an unknown parameter name."""
    for op in ops:
        if op not in OPS:
            raise ValueError(f"unknown augmentation {op!r}; {_closest(op, list(OPS))}valid: {', '.join(OPS)}")
    for op, kw in (params or {}).items():
        if op not in ops:
            raise ValueError(f"params given for augmentation {op!r}, which is not among the ops {list(ops)}")
        if not isinstance(kw, Mapping):
            raise ValueError(f"params[{op!r}] must be a mapping of keyword arguments, got {kw!r}")
        for key in kw:
            if key not in _OP_PARAMS[op]:
                raise ValueError(f"augmentation {op!r} has no parameter {key!r}; {_closest(key, _OP_PARAMS[op])}"
                                 f"valid: {', '.join(_OP_PARAMS[op])}")


def augment(x_u8: torch.Tensor, ops: Sequence[str], generator: torch.Generator | None = None,
            padding: int = 4, params: Mapping[str, Mapping[str, Any]] | None = None) -> torch.Tensor:
    """Apply ``ops`` to a uint8 batch and return float [0, 1] images.

    Args:
        x_u8: uint8 [N, C, H, W] in [0, 255] (float input in [0, 1] is accepted as is).
        ops: op names from ``OPS``, applied in order.
        generator: the source of every random draw (on the batch's device or the CPU).
        padding: the crop's padding (``params["crop"]["padding"]`` overrides it).
        params: per-op keyword overrides, e.g. ``{"rotate": {"degrees": 20}}`` (see the module docstring).
    Returns:
        float [N, C, H, W] in [0, 1] on ``x_u8``'s device.
    Raises:
        ValueError: unknown op or parameter (with the nearest valid name).
    """
    check_ops(ops, params)
    x = x_u8.float().div_(255.0) if x_u8.dtype == torch.uint8 else x_u8.float()
    for op in ops:
        kw = dict(params.get(op, {})) if params else {}
        if op == "crop":
            kw.setdefault("padding", padding)
        x = OPS[op](x, generator, **kw)
    return x


def simclr_views(x_u8: torch.Tensor, generator: torch.Generator | None = None,
                 params: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent SimCLR views of each image (``SIMCLR`` pipeline), float [N, C, H, W] in [0, 1] each."""
    return augment(x_u8, SIMCLR, generator, params=params), augment(x_u8, SIMCLR, generator, params=params)
