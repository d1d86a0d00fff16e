"""Helpers shared by the harness tests (importable as ``benchtest``; tests/helpers is on sys.path)."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"

TINY_DATA = {"name": "synthetic", "n_train": 96, "n_test": 48, "size": 8, "num_classes": 3}
TINY_MODEL = {"name": "small_cnn", "width": 4}
TINY_RECIPE = {"name": "quick", "epochs": 1, "batch_size": 32}


def tiny_sweep(name: str = "tiny", defenses=None, seeds=(0,), attacks=None, **grid) -> dict:
    """A sweep document over the synthetic set that trains in well under a second per job."""
    return {"name": name, "seeds": list(seeds), "grid": {
        "dataset": TINY_DATA, "model": TINY_MODEL, "recipe": TINY_RECIPE,
        "attack": attacks or [{"name": "badnets", "target": 0, "poison_rate": 0.2}],
        "defense": defenses or ["none", {"name": "ft", "epochs": 1, "milestones": []}],
        "clean_ratio": 0.1, **grid}}


def generate_jobs(*attacks: dict) -> list:
    """The generate jobs of a tiny sweep over ``attacks`` (one per distinct generator)."""
    from bench.graph import build_graph
    from bench.sweep import build_sweep

    return build_graph(build_sweep(tiny_sweep(attacks=list(attacks), defenses=["none"]), "t.yaml").cells
                       ).by_stage()["generate"]
