"""Trigger mechanics shared by every attack: uint8 [N, C, H, W] batches in, uint8 out, no per-image loops.

Stamping (patch replacement, masked canvases), blending, additive signals (SIG sinusoid, chessboard, stripes),
patterns (grids, noise patches, nearest resizing, image files), and WaNet's warping grids.  Patterns are drawn
at the image's own resolution; only full-image blend patterns from files are resized (bilinear, antialiased).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

Position = Literal["bottom_right", "top_left", "top_right", "bottom_left", "center", "nad_center"]
"""Named patch positions (``patch_position``); attack configs add "random" where a drawn position is allowed."""
PositionOrRandom = Literal["bottom_right", "top_left", "top_right", "bottom_left", "center", "nad_center", "random"]

NAD_CENTER_OFFSET = 14
"""The NAD-lineage code's "adaptive center trigger" (``_centerTriger`` / ``_blendTrigger`` in NAD's and WeCanShow/MCL's
``data_loader.py`` l. 396-412, 455-466): the patch's top-left pixel at (size - 14, size - 14), rows/cols 18-20 of
a 32 px image: the "center" of MCL's Blend (seed 000 App. A.2) as the authors placed it."""


def patch_position(size: int, patch_h: int, patch_w: int, where: str | tuple[int, int], margin: int = 0
                   ) -> tuple[int, int]:
    """Top-left corner of a patch: 'bottom_right' | 'top_left' | 'top_right' | 'bottom_left' | 'center' |
    'nad_center' (the NAD / MCL code's centre, ``NAD_CENTER_OFFSET``) | (r, c)."""
    if isinstance(where, (tuple, list)):
        return int(where[0]), int(where[1])
    lo_r, lo_c = margin, margin
    hi_r, hi_c = size - patch_h - margin, size - patch_w - margin
    table = {"bottom_right": (hi_r, hi_c), "top_left": (lo_r, lo_c), "top_right": (lo_r, hi_c),
             "bottom_left": (hi_r, lo_c), "center": ((size - patch_h) // 2, (size - patch_w) // 2),
             "nad_center": (size - NAD_CENTER_OFFSET, size - NAD_CENTER_OFFSET)}
    if where not in table:
        raise ValueError(f"unknown patch position {where!r}; valid: {', '.join(table)}")
    return table[where]


def stamp_patch(x_u8: torch.Tensor, patch_u8: torch.Tensor, top: int, left: int,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Return a copy of ``x_u8`` with ``patch_u8`` [C or 1, h, w] written at (top, left) where ``mask`` [h, w] is set.

    The patch is drawn at the image's own resolution (no resizing); a 1-channel patch is repeated over C.
    """
    out = x_u8.clone()
    h, w = patch_u8.shape[-2:]
    if top < 0 or left < 0 or top + h > x_u8.shape[-2] or left + w > x_u8.shape[-1]:
        raise ValueError(f"patch {h}x{w} at ({top},{left}) does not fit a {tuple(x_u8.shape[-2:])} image")
    patch = patch_u8.to(out.device).expand(out.shape[1], h, w)
    region = out[:, :, top:top + h, left:left + w]
    if mask is None:
        region[:] = patch
    else:
        m = mask.to(out.device, torch.bool).expand_as(patch)
        region[:] = torch.where(m, patch, region)
    return out


def blend(x_u8: torch.Tensor, pattern_u8: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """x' = (1 - alpha) x + alpha * pattern, rounded back to uint8 (alpha scalar or a [1|C, H, W] map)."""
    x = x_u8.float()
    out = (1 - alpha) * x + alpha * pattern_u8.to(x.device).float()
    return out.round_().clamp_(0, 255).to(torch.uint8)


def add_signal(x_u8: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """x' = clip(x + signal) for an additive float signal [C|1, H, W] in pixel units (SIG, additive)."""
    return (x_u8.float() + signal.to(x_u8.device)).round_().clamp_(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------------------------------------
# Patterns: small patches, their placement on the full canvas, and resolution-independent resizing.
# ---------------------------------------------------------------------------------------------------------
GRID3 = torch.tensor([[0, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)
"""The NAD-lineage 3x3 grid (``gridTrigger``): the bottom-right block of a 0/255 checker whose top-left is 0."""
NAD_BLEND3 = torch.tensor([[255, 128, 255], [128, 255, 128], [255, 128, 128]], dtype=torch.uint8)
"""The grey 3x3 pattern the NAD-lineage code blends (``_blendTrigger``, WeCanShow/MCL ``data_loader.py`` l. 456-466)."""

CORNERS = ("bottom_right", "bottom_left", "top_right", "top_left")


def trigger_generator(seed: int, trigger_seed: int | None = None) -> torch.Generator:
    """The generator of an attack's random trigger parameters: ``trigger_seed`` when set, else the cell seed
    (a fixed ``trigger_seed`` keeps one trigger across the seeds of a sweep)."""
    return torch.Generator().manual_seed(trigger_seed if trigger_seed is not None else seed)


def nearest_resize(pattern: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Nearest-neighbour resize of [..., h, w] by explicit index maps (no interpolation: values are kept).

    Output pixel i reads input pixel floor((i + 0.5) * h / out_h), so a 3x3 grid becomes equal blocks when the
    output side is a multiple of 3 and near-equal blocks otherwise.
    """
    h, w = pattern.shape[-2:]
    rows = ((torch.arange(out_h, dtype=torch.float64) + 0.5) * h / out_h).floor().long().clamp_(max=h - 1)
    cols = ((torch.arange(out_w, dtype=torch.float64) + 0.5) * w / out_w).floor().long().clamp_(max=w - 1)
    return pattern[..., rows, :][..., cols]


def reflect_for_corner(patch: torch.Tensor, corner: str) -> torch.Tensor:
    """A bottom-right patch [..., h, w] mirrored into ``corner`` (the four-corner trigger of label-consistent
    attacks: every corner shows the reflection of the bottom-right pattern, so a horizontal flip keeps it)."""
    flips = {"bottom_right": (), "bottom_left": (-1,), "top_right": (-2,), "top_left": (-2, -1)}
    if corner not in flips:
        raise ValueError(f"unknown corner {corner!r}; valid: {', '.join(flips)}")
    dims = flips[corner]
    return patch.flip(dims) if dims else patch.clone()


def random_patch(channels: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform noise patch, uint8 [channels, h, w] with every value in {0, ..., 255} equally likely."""
    return torch.randint(0, 256, (channels, h, w), generator=generator, dtype=torch.uint8)


def random_position(size: int, patch_h: int, patch_w: int, margin: int, generator: torch.Generator
                    ) -> tuple[int, int]:
    """A uniformly drawn top-left corner such that the patch lies ``margin`` pixels inside the border."""
    hi_r, hi_c = size - patch_h - margin, size - patch_w - margin
    if hi_r < margin or hi_c < margin:
        raise ValueError(f"a {patch_h}x{patch_w} patch with margin {margin} does not fit a {size}px image")
    top = int(torch.randint(margin, hi_r + 1, (1,), generator=generator))
    left = int(torch.randint(margin, hi_c + 1, (1,), generator=generator))
    return top, left


def place(patch_u8: torch.Tensor, top: int, left: int, channels: int, size: int,
          mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Put a patch on an empty canvas -> (mask bool [1, size, size], pattern uint8 [channels, size, size]).

    ``mask`` [h, w] selects which patch pixels are part of the trigger (all of them when None); the pattern is
    0 outside the mask.  Several placements combine with ``|`` on masks and ``torch.where`` on patterns.
    """
    h, w = patch_u8.shape[-2:]
    if top < 0 or left < 0 or top + h > size or left + w > size:
        raise ValueError(f"patch {h}x{w} at ({top},{left}) does not fit a {size}px image")
    full_mask = torch.zeros(1, size, size, dtype=torch.bool)
    pattern = torch.zeros(channels, size, size, dtype=torch.uint8)
    m = torch.ones(h, w, dtype=torch.bool) if mask is None else mask.bool()
    full_mask[0, top:top + h, left:left + w] = m
    pattern[:, top:top + h, left:left + w] = torch.where(m, patch_u8.expand(channels, h, w), 0)
    return full_mask, pattern


def stamp_masked(x_u8: torch.Tensor, mask: torch.Tensor, pattern_u8: torch.Tensor) -> torch.Tensor:
    """x' = pattern where ``mask`` [1|C, H, W] is set, x elsewhere (patch replacement on the full canvas)."""
    return torch.where(mask.to(x_u8.device), pattern_u8.to(x_u8.device), x_u8)


# ---------------------------------------------------------------------------------------------------------
# Global signals (pixel units, float [1, H, W], broadcast over channels): SIG, the D-BR "signal" stripes, the
# additive chessboard.
# ---------------------------------------------------------------------------------------------------------
def sinusoid(h: int, w: int, delta: float, freq: float) -> torch.Tensor:
    """SIG (Barni et al., 2019): v(i, j) = delta * sin(2 pi j f / m), j the column, m = w columns; [1, h, w]."""
    j = torch.arange(w, dtype=torch.float64)
    row = delta * torch.sin(2 * torch.pi * j * freq / w)
    return row.float().expand(1, h, w).clone()


def stripes(h: int, w: int, period: int = 8) -> torch.Tensor:
    """Vertical 0/255 stripes, uint8 [1, h, w]: column j is 255 when (j mod period) >= period / 2, else 0."""
    j = torch.arange(w)
    row = torch.where(j % period >= period // 2, 255, 0).to(torch.uint8)
    return row.expand(1, h, w).clone()


def chessboard(h: int, w: int, amplitude: float, signed: bool = False) -> torch.Tensor:
    """Chessboard signal [1, h, w]: +amplitude where (i + j) is even; 0 (or -amplitude if ``signed``) elsewhere."""
    i = torch.arange(h).view(h, 1)
    j = torch.arange(w).view(1, w)
    even = (i + j) % 2 == 0
    low = -amplitude if signed else 0.0
    return torch.where(even, float(amplitude), low).float().unsqueeze(0)


# ---------------------------------------------------------------------------------------------------------
# Full-image patterns from files: a user's image / .npy, or an image a dependency ships.
# ---------------------------------------------------------------------------------------------------------
def _to_channels(img: torch.Tensor, channels: int) -> torch.Tensor:
    """float [c, H, W] -> [channels, H, W]: grey is repeated, RGB becomes grey by ITU-R 601 luma."""
    if img.shape[0] == channels:
        return img
    if img.shape[0] == 1:
        return img.expand(channels, *img.shape[1:]).clone()
    if channels == 1 and img.shape[0] >= 3:
        luma = torch.tensor([0.299, 0.587, 0.114], dtype=img.dtype).view(3, 1, 1)
        return (img[:3] * luma).sum(0, keepdim=True)
    raise ValueError(f"cannot turn a {img.shape[0]}-channel pattern into {channels} channels")


def resize_pattern(img: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """float [c, H, W] in [0, 255] -> uint8 [channels, size, size]: bilinear with antialiasing when the size
    differs (the full-image blend patterns of Blend-Kitty are resized in the authors' code too)."""
    img = _to_channels(img.float(), channels)
    if tuple(img.shape[-2:]) != (size, size):
        img = torch.nn.functional.interpolate(img.unsqueeze(0), size=(size, size), mode="bilinear",
                                              align_corners=False, antialias=True)[0]
    return img.round().clamp(0, 255).to(torch.uint8)


def load_pattern(path: str | Path, channels: int, size: int) -> torch.Tensor:
    """A pattern file -> uint8 [channels, size, size].

    Args:
        path: an image Pillow reads (png, jpg, ...) or a ``.npy`` array ([H, W], [H, W, C] or [C, H, W]) of
            values in [0, 255] (float arrays with max <= 1 are taken as [0, 1] and scaled).
    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pattern file {path} not found")
    if path.suffix == ".npy":
        raw = np.load(path)
        arr = torch.from_numpy(np.asarray(raw, dtype=np.float64))
        if raw.dtype.kind == "f" and raw.max() <= 1.0:
            arr = arr * 255.0
        if arr.dim() == 2:
            arr = arr.unsqueeze(0)
        elif arr.dim() == 3 and arr.shape[-1] in (1, 3, 4) and arr.shape[0] not in (1, 3, 4):
            arr = arr.permute(2, 0, 1)
        return resize_pattern(arr[:3], channels, size)
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L" if channels == 1 else "RGB")
        arr = torch.from_numpy(np.asarray(im).copy())
    arr = arr.unsqueeze(0) if arr.dim() == 2 else arr.permute(2, 0, 1)
    return resize_pattern(arr, channels, size)


def sample_image_path(name: str = "grace_hopper.jpg") -> Path:
    """The path of an image matplotlib ships in ``mpl-data/sample_data`` (read there, never copied to the repo)."""
    from matplotlib import cbook

    path = Path(cbook.get_sample_data(name, asfileobj=False))
    if not path.is_file():
        raise FileNotFoundError(f"matplotlib's sample image {name!r} is not installed ({path}); "
                                "give your own image with pattern: file and pattern_path")
    return path


# ---------------------------------------------------------------------------------------------------------
# Warping (WaNet, Nguyen & Tran 2021): a smooth random flow field applied with grid_sample.
# ---------------------------------------------------------------------------------------------------------
def identity_grid(size: int) -> torch.Tensor:
    """The sampling grid that reproduces the image: float [1, size, size, 2] of (x, y) in [-1, 1]."""
    lin = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    return torch.stack((xx, yy), dim=-1).unsqueeze(0)


def warp_field(size: int, k: int, s: float, grid_rescale: float, generator: torch.Generator) -> torch.Tensor:
    """WaNet's warping grid, float [1, size, size, 2].

    A k x k field of uniform [-1, 1] offsets, normalised by its mean absolute value, is upsampled bicubically to
    size x size; the grid is clamp((identity + s * field / size) * grid_rescale, -1, 1).  s = 0 and
    grid_rescale = 1 give the identity.
    """
    ins = torch.rand(1, 2, k, k, generator=generator) * 2 - 1
    ins = ins / ins.abs().mean()
    field = torch.nn.functional.interpolate(ins, size=(size, size), mode="bicubic", align_corners=True)
    grid = (identity_grid(size) + s * field.permute(0, 2, 3, 1) / size) * grid_rescale
    return grid.clamp(-1, 1)


def noise_grids(grid: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """WaNet's "noise mode" grids: ``grid`` plus per-sample uniform [-1, 1] / size offsets, [n, size, size, 2]."""
    size = grid.shape[1]
    offsets = (torch.rand(n, size, size, 2, generator=generator) * 2 - 1) / size
    return (grid.expand(n, -1, -1, -1) + offsets).clamp(-1, 1)


def warp(x_u8: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Resample uint8 [N, C, H, W] along ``grid`` ([1 or N, H, W, 2]); bilinear, align_corners=True, rounded."""
    if len(x_u8) == 0:
        return x_u8.clone()
    x = x_u8.float()
    g = grid.to(x.device, x.dtype).expand(len(x), -1, -1, -1)
    out = torch.nn.functional.grid_sample(x, g, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)
