"""Checks that need the data or the artifact store, run before a sweep writes anything.

Parsing (bench/sweep.py) checks every key and type from the file alone.  What only the data can tell -- that a
dataset is where ``--data-root`` says, that an attack's target is one of its classes -- is checked here, once
per dataset that still has work to do, so a bad sweep fails in one line with exit code 2 and no row is written.
"""
from __future__ import annotations

from typing import Any, Mapping

from bench.config import ConfigError


def check_data(cells, states: Mapping[str, Any], graph, data_root: str | None) -> None:
    """Load each dataset that a not-yet-done poison job reads; check every attack target against its classes.

    Raises:
        ConfigError: a dataset that cannot be found (its one-line message says where it looked and how to fix
            it), or a ``target`` outside the dataset's classes.
    """
    from bench.data.datasets import DatasetNotFound, load_dataset
    from bench.registry import DATASETS

    open_data = {repr(j.config["dataset"]) for j in graph.jobs.values()
                 if j.stage in ("generate", "poison") and not (j.key in states and states[j.key].state == "done")}
    classes: dict[str, int] = {}
    for cell in cells:
        ds = cell.dataset
        key = repr({k: v for k, v in ds.items() if k not in ("root", "download")})
        if key not in open_data and repr(ds) not in open_data:
            continue
        if key not in classes:
            entry = DATASETS.get(ds["name"])
            try:
                classes[key] = load_dataset(ds["name"], entry.parse(ds), data_root).num_classes
            except DatasetNotFound as err:
                raise ConfigError(f"grid.dataset {ds['name']}", str(err)) from None
        target = cell.attack.get("target")
        if isinstance(target, int) and not 0 <= target < classes[key]:
            raise ConfigError(f"grid.attack {cell.attack['name']}.target",
                              f"{target} is not a class of {ds['name']} (valid: 0..{classes[key] - 1})")


def broken_artifacts(storage, store_root, keys) -> list[str]:
    """Done jobs among ``keys`` whose recorded artifacts are missing or fail their sha256 (read only)."""
    from bench.store import ArtifactStore

    store = ArtifactStore(store_root)
    arts = storage.artifacts(keys)
    return [k for k, recs in arts.items() if recs and not all(store.verify(r) for r in recs.values())]
