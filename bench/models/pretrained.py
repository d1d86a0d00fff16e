"""ImageNet-pretrained initialisation for the zoo's ResNets, from torchvision's published weights.

D-BR / D-ST (seed 001) Table 5 on the ImageNet subset: the authors fine-tune ``torchvision.models.resnet18(True)``
with a new ``fc`` for the subset's classes (SCLBD/Effective_backdoor_defense ``utils/network.py``, the
``imagenet`` branch), for the backdoored model and for the SD model alike.  ``resnet18`` / ``resnet34`` take
``pretrained: imagenet`` to do the same: every weight but ``fc`` comes from torchvision's ``IMAGENET1K_V1``
checkpoint (the module names of ``bench.models.resnet`` follow torchvision, so the state dict loads as is);
``fc`` keeps its fresh initialisation.

Offline by design: the weights are read from torch hub's checkpoint folder (``torch.hub.get_dir()/checkpoints``,
where torchvision caches them) and never downloaded here; a missing file is an error naming the file to place
there and where to get it.  The pretrained weights need the ImageNet stem and 3 input channels.  The model still
normalises its input with its dataset's statistics (torchvision's weights were trained with ImageNet's; the
authors feed Tiny-ImageNet's), a per-channel affine difference that fine-tuning absorbs.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, ResNet34_Weights

WEIGHTS = {"resnet18": ResNet18_Weights.IMAGENET1K_V1, "resnet34": ResNet34_Weights.IMAGENET1K_V1}


def weights_file(arch: str) -> Path:
    """Where the torchvision checkpoint of ``arch`` must lie (torch hub's cache, as torchvision stores it)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(WEIGHTS[arch].url).name


def load_imagenet_weights(model: nn.Module, arch: str) -> nn.Module:
    """Copy torchvision's ImageNet weights of ``arch`` into ``model`` (all but ``fc``); returns ``model``.

    Raises:
        FileNotFoundError: the checkpoint is not in torch hub's cache (the message names the file and its URL).
        ValueError: a model that cannot take them (not the ImageNet stem, not 3 input channels).
    """
    if getattr(model, "stem_type", None) != "imagenet" or model.conv1.in_channels != 3:
        raise ValueError(f"pretrained: imagenet needs stem: imagenet and 3 input channels (got stem "
                         f"{getattr(model, 'stem_type', None)!r}, {model.conv1.in_channels} channels)")
    path = weights_file(arch)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained: imagenet needs torchvision's {arch} weights: place "
                                f"{path.name} (from {WEIGHTS[arch].url}) at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"fc.weight", "fc.bias"}:
        raise ValueError(f"{path}: not a torchvision {arch} checkpoint (missing {sorted(missing)[:4]}, "
                         f"unexpected {sorted(unexpected)[:4]})")
    return model
