"""Feature taps through the zoo's interface: intermediate activations by ``feature_info`` name, no name tests.

    with tap(model, ["layer3"]) as acts:      # NAD attention maps, activation clustering, pruning
        logits = model(x)
    a = acts["layer3"]                        # float [N, C, H, W]

``block_names(model)`` lists the tappable blocks (the last is the last convolutional block); penultimate
features are ``model.forward_features(x)`` (see ``bench.train.embed`` for a whole image set).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn


def block_names(model: nn.Module) -> list[str]:
    return [info["name"] for info in model.feature_info]


def last_block(model: nn.Module) -> str:
    return model.feature_info[-1]["name"]


@contextlib.contextmanager
def tap(model: nn.Module, names: Sequence[str], detach: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of the named blocks during forward passes inside the ``with`` body.

    Raises:
        KeyError: a name that is not one of ``block_names(model)`` (with the valid names).
    """
    valid = block_names(model)
    for name in names:
        if name not in valid:
            raise KeyError(f"{name!r} is not a tappable block of {type(model).__name__}; valid: {valid}")
    acts: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        def hook(_mod, _inp, out, name=name):
            acts[name] = out.detach() if detach else out
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        yield acts
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def block_activations(model: nn.Module, images_u8: torch.Tensor, name: str, device: torch.device | None = None,
                      batch_size: int = 256, pool: bool = True) -> torch.Tensor:
    """Activations of one block for a whole uint8 image set (on CPU); ``pool`` averages over H x W."""
    device = device or next(model.parameters()).device
    model.eval()
    out = []
    with tap(model, [name], detach=True) as acts:
        for s in range(0, len(images_u8), batch_size):
            model(images_u8[s:s + batch_size].to(device).float().div_(255))
            a = acts[name]
            out.append((a.mean((2, 3)) if pool and a.dim() == 4 else a).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)
