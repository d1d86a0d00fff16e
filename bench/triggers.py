"""Trigger stamping primitives on uint8 [N, C, H, W] batches (shared by every attack; no per-image loops)."""
from __future__ import annotations

import torch


def patch_position(size: int, patch_h: int, patch_w: int, where: str | tuple[int, int], margin: int = 0
                   ) -> tuple[int, int]:
    """Top-left corner of a patch: 'bottom_right' | 'top_left' | 'top_right' | 'bottom_left' | 'center' | (r, c)."""
    if isinstance(where, (tuple, list)):
        return int(where[0]), int(where[1])
    lo_r, lo_c = margin, margin
    hi_r, hi_c = size - patch_h - margin, size - patch_w - margin
    table = {"bottom_right": (hi_r, hi_c), "top_left": (lo_r, lo_c), "top_right": (lo_r, hi_c),
             "bottom_left": (hi_r, lo_c), "center": ((size - patch_h) // 2, (size - patch_w) // 2)}
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
