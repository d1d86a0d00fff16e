"""Model zoo behind ``create_model`` (the only way in). Importing this package registers every family."""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Mapping, Sequence

from torch import nn

from bench.models import small_cnn  # noqa: F401  (registers)
from bench.models._base import Backbone, input_normalization
from bench.registry import MODELS

_FAMILIES = ("wrn", "resnet", "preact_resnet", "lowcap")
for _family in _FAMILIES:  # one module per family; importing it registers its models
    if importlib.util.find_spec(f"bench.models.{_family}"):
        importlib.import_module(f"bench.models.{_family}")


def create_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 **kwargs: Any) -> Backbone:
    """Build a registered model.

    Args:
        name: registry name (``bench plugins model`` lists them).
        num_classes, in_channels, image_size: from the dataset.
        mean, std: per-channel normalisation in [0, 1] units (the model normalises internally).
        kwargs: the model's own options (checked against its config; None values are dropped so defaults apply).
    Raises:
        ConfigError: unknown name or option.
    """
    entry = MODELS.get(name)
    cfg = entry.parse({k: v for k, v in kwargs.items() if v is not None}, f"model({name})")
    opts = {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}
    return entry.obj(num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                     mean=mean, std=std, **opts)


def create_from_spec(spec: Mapping[str, Any], info) -> nn.Module:
    """Build from a resolved model spec ``{name, ...options}`` and a ``DataInfo``."""
    opts = dict(spec)
    name = opts.pop("name")
    mean, std = input_normalization(opts, info)        # a checkpoint's own (bench/models/_base.py)
    return create_model(name, info.num_classes, info.in_channels, info.image_size, mean, std, **opts)


def list_models() -> list[str]:
    return MODELS.names()


__all__ = ["Backbone", "create_model", "create_from_spec", "list_models"]
