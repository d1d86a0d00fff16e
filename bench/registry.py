"""Registries of named plugins: datasets, models, recipes, attacks and defenses.

One name everywhere: the module file, the registry key, the YAML ``name:``, the database ``plugin`` column and
the report key are the same lowercase identifier.  ``register`` is a decorator; ``create``/``parse`` are the only
ways in; ``version`` goes into cache keys (bump it when a plugin's output changes for the same config).
Importing the modules listed for a kind fills its registry (as timm's ``models/__init__`` does).
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from bench.config import ConfigError, closest, parse, with_overrides


@dataclass(frozen=True)
class Entry:
    """One registered plugin."""

    kind: str
    name: str
    obj: Any                      # class (attacks, defenses) or builder function (datasets, models, recipes)
    version: int
    config: type                  # frozen dataclass of the plugin's options, defaults = paper values
    display_name: str
    doc: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)

    def parse(self, data: Mapping[str, Any] | None, path: str = "", dataset: str | None = None) -> Any:
        """Options -> frozen config: defaults (or a preset) < per-dataset overlay < ``data``."""
        data = dict(data or {})
        per_dataset = self.meta.get("per_dataset") or getattr(self.obj, "per_dataset", None) or {}
        overlay = dict(per_dataset.get(dataset, {})) if dataset else {}
        if isinstance(self.obj, self.config):           # a named preset instance (recipes)
            return with_overrides(self.obj, {**overlay, **data}, path)
        return parse(self.config, {**overlay, **data}, path)


def config_from_signature(fn: Callable, skip: tuple[str, ...]) -> type:
    """A frozen dataclass built from a builder's keyword arguments (for models and datasets)."""
    specs = []
    for p in inspect.signature(fn).parameters.values():
        if p.name in skip or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        ann = p.annotation if p.annotation is not inspect.Parameter.empty else Any
        if isinstance(ann, str):
            ann = eval(ann, fn.__globals__)  # noqa: S307 - annotations of our own builders
        default = p.default if p.default is not inspect.Parameter.empty else dataclasses.MISSING
        specs.append((p.name, ann, dataclasses.field(default=default)))
    return dataclasses.make_dataclass(f"{fn.__name__}_config", specs, frozen=True)


def load_user_plugins() -> None:
    """Import the modules named in ``BENCH_PLUGINS`` (comma-separated): a user's own attacks and defenses
    register themselves without editing bdbench (workers inherit the variable, so they see them too)."""
    for module in filter(None, (m.strip() for m in os.environ.get("BENCH_PLUGINS", "").split(","))):
        importlib.import_module(module)


class Registry:
    """Named plugins of one kind, filled by importing ``modules`` on first use."""

    def __init__(self, kind: str, modules: tuple[str, ...], signature_skip: tuple[str, ...] = ()):
        self.kind, self.modules, self.signature_skip = kind, modules, signature_skip
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}
        self._loaded = False
        self._loading = False

    def register(self, name: str, *, version: int = 1, config: type | None = None, display_name: str | None = None,
                 aliases: tuple[str, ...] = (), **meta: Any) -> Callable:
        def deco(obj: Any) -> Any:
            if name in self._entries:
                warnings.warn(f"{self.kind} '{name}' registered twice; keeping the last", stacklevel=2)
            cfg = config or getattr(obj, "Config", None)
            if cfg is None and dataclasses.is_dataclass(obj) and not isinstance(obj, type):
                cfg = type(obj)
            if cfg is None:
                cfg = config_from_signature(obj, self.signature_skip)
            doc = inspect.getdoc(obj) or ""
            self._entries[name] = Entry(self.kind, name, obj, version, cfg, display_name or name, doc, dict(meta))
            for alias in aliases:
                self._aliases[alias] = name
            if isinstance(obj, type):
                obj.name, obj.version = name, version
            return obj
        return deco

    def _load(self) -> None:
        """Import the plugin modules once.  A module that registers while it imports may look itself up
        (``_loading`` stops that recursion); an import that fails leaves the registry unloaded, so the next use
        retries and raises the same error instead of answering from a half-filled registry."""
        if self._loaded or self._loading:
            return
        self._loading = True
        try:
            for module in self.modules:
                importlib.import_module(module)
            load_user_plugins()
            self._loaded = True
        finally:
            self._loading = False

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def get(self, name: str, path: str = "name") -> Entry:
        self._load()
        if name in self._aliases:
            new = self._aliases[name]
            warnings.warn(f"{self.kind} '{name}' was renamed to '{new}'", DeprecationWarning, stacklevel=2)
            name = new
        if not isinstance(name, str) or name not in self._entries:
            raise ConfigError(path, f"unknown {self.kind} {name!r}; {closest(str(name), self._entries)}")
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries or name in self._aliases

    def split(self, spec: str | Mapping[str, Any], path: str) -> tuple[Entry, dict[str, Any]]:
        """``'badnets'`` or ``{name: badnets, ...}`` -> (entry, options)."""
        if isinstance(spec, str):
            return self.get(spec, path), {}
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise ConfigError(path, f"expected a {self.kind} name or a mapping with 'name'; got {spec!r}")
        opts = dict(spec)
        return self.get(opts.pop("name"), f"{path}.name"), opts

    def resolve(self, spec: str | Mapping[str, Any], path: str, dataset: str | None = None) -> tuple[Entry, Any]:
        entry, opts = self.split(spec, path)
        return entry, entry.parse(opts, path, dataset)


DATASETS = Registry("dataset", ("bench.data.datasets", "bench.data.sources"), signature_skip=("data_root",))
MODELS = Registry("model", ("bench.models",), signature_skip=("num_classes", "in_channels", "image_size",
                                                              "mean", "std"))
RECIPES = Registry("recipe", ("bench.recipes",))
ATTACKS = Registry("attack", ("attacks",))
DEFENSES = Registry("defense", ("defenses",))

REGISTRIES = {"dataset": DATASETS, "model": MODELS, "recipe": RECIPES, "attack": ATTACKS, "defense": DEFENSES}

register_dataset = DATASETS.register
register_model = MODELS.register
register_recipe = RECIPES.register
register_attack = ATTACKS.register
register_defense = DEFENSES.register
