"""Checkpoint model source (issue 21): a model from a file enters the graph as a train-stage artifact keyed by
the file's sha256, its poison stage only describes the trigger, and every bad checkpoint is one line, exit 2."""
from __future__ import annotations

import shutil

import pytest
import torch
import yaml
from benchtest import TINY_DATA
from click.testing import CliRunner

from bench.attack import PoisonedSet
from bench.cli import main
from bench.config import ConfigError
from bench.data.datasets import load_dataset
from bench.db.storage import Storage
from bench.graph import build_graph
from bench.metrics import backdoor_metrics
from bench.models import create_model
from bench.recipes import Recipe
from bench.registry import ATTACKS, DATASETS
from bench.results import cells_frame
from bench.runner import RunOptions, run_sweep
from bench.sweep import build_sweep
from bench.train import fit

DATA = {**TINY_DATA, "n_train": 240}
ATTACK = {"name": "badnets", "target": 0, "poison_rate": 0.3, "size": 2}
ARCH = {"name": "small_cnn", "width": 4}


@pytest.fixture(scope="module")
def bundle():
    opts = {k: v for k, v in DATA.items() if k != "name"}
    return load_dataset("synthetic", DATASETS.get("synthetic").parse(opts))


@pytest.fixture(scope="module")
def backdoored(bundle):
    """A tiny model trained on the BadNets-poisoned synthetic set (the 'published' model of these tests)."""
    entry = ATTACKS.get("badnets")
    attack = entry.obj(entry.parse({k: v for k, v in ATTACK.items() if k != "name"}), bundle.info(), 0)
    train = attack.poison(bundle.train, torch.Generator().manual_seed(0)).apply(bundle.train)
    torch.manual_seed(0)
    model = create_model(ARCH["name"], 3, 3, 8, bundle.mean, bundle.std, width=ARCH["width"])
    recipe = Recipe(lr=0.05, batch_size=32, epochs=15, schedule="none", augment=())
    return fit(model, train, recipe, device=torch.device("cpu"), seed=0), attack


def save(path, model, wrap=True, prefix=""):
    state = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": state} if wrap else state, path)
    return str(path)


def sweep_doc(file, defenses=("none",), **model):
    return {"name": "ckpt", "grid": {"dataset": DATA, "recipe": "quick", "attack": ATTACK,
                                     "model": {**ARCH, "checkpoint": str(file), "normalize": "dataset", **model},
                                     "defense": list(defenses), "clean_ratio": 0.5}}


def test_a_checkpoint_round_trips_through_a_sweep(tmp_path, workspace, bundle, backdoored):
    model, attack = backdoored
    direct = {m.name: m.value for m in backdoor_metrics(model, bundle.test, attack, torch.device("cpu"))}
    assert direct["asr"] > 0.9 and direct["ba"] > 0.6         # a real backdoor, so equality below means something
    file = save(tmp_path / "m.tar", model, wrap=True, prefix="module.")   # DataParallel-style, inside a dict
    sweep = build_sweep(sweep_doc(file, ("none", {"name": "ft", "epochs": 1, "milestones": []})), "t.yaml")
    storage = Storage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    summary = run_sweep(sweep, storage, tmp_path / "art", RunOptions(workers=0, progress=False))
    assert summary.ok, summary.failed
    frame = cells_frame(storage, "ckpt").set_index("defense")
    for name in ("ba", "asr"):
        assert frame.loc["none", name] == pytest.approx(direct[name], abs=1e-9)
    assert frame.loc["ft", "ba"] == frame.loc["ft", "ba"]                # FT ran on the loaded model too
    stages = {j.stage: j for j in build_graph(sweep.cells).jobs.values()}
    assert stages["train"].plugin == "checkpoint" and stages["train"].parent is None
    poison = PoisonedSet.from_dict(torch.load(next((tmp_path / "art").rglob("poison.pt")), weights_only=False))
    assert poison.params["trigger_only"] and int((poison.kind != 0).sum()) == 0 and len(poison.changed_idx) == 0


def test_a_bare_state_dict_and_a_given_normalisation_load(tmp_path, bundle, backdoored):
    model, _ = backdoored
    file = save(tmp_path / "bare.pt", model, wrap=False)
    norm = {"mean": list(bundle.mean), "std": list(bundle.std)}
    cell = build_sweep(sweep_doc(file, normalize=norm), "t.yaml").cells[0]
    assert cell.model["normalize"] == norm and len(cell.model["sha256"]) == 64


def keys(file, **model):
    graph = build_graph(build_sweep(sweep_doc(file, **model), "t.yaml").cells)
    return {j.stage: j.key for j in graph.jobs.values()}


def test_the_job_key_follows_the_files_content_not_its_path(tmp_path, backdoored):
    model, _ = backdoored
    first = save(tmp_path / "a.tar", model)
    moved = tmp_path / "elsewhere" / "b.tar"
    moved.parent.mkdir()
    shutil.copy(first, moved)
    assert keys(first) == keys(moved)
    changed = create_model(ARCH["name"], 3, 3, 8, width=ARCH["width"])
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.fc.bias.add_(0.01)
    other = keys(save(tmp_path / "a.tar", changed))           # same path, new content
    assert all(other[s] != keys(moved)[s] for s in ("train", "poison", "defend", "evaluate"))
    assert keys(moved) != keys(moved, normalize="none")       # the normalisation is part of the model


def bad_cases(tmp_path, model):
    """name -> (sweep document, words the one-line error must contain)."""
    good = save(tmp_path / "good.tar", model)
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a checkpoint at all")
    wide = save(tmp_path / "wide.tar", create_model("small_cnn", 3, 3, 8, width=8))
    other = save(tmp_path / "wrn.tar", create_model("wrn16_1", 3, 3, 8))
    return {
        "missing": (sweep_doc(tmp_path / "nope.tar"), ["nope.tar", "no such file"]),
        "unreadable": (sweep_doc(junk), ["junk.tar", "unreadable", "valid:"]),
        "shape": (sweep_doc(wide), ["wide.tar", "not a small_cnn checkpoint", "shape mismatches"]),
        "keys": (sweep_doc(other), ["wrn.tar", "missing keys", "unexpected keys"]),
        "sha256": (sweep_doc(good, sha256="0" * 64), ["good.tar", "sha256 is", "valid:"]),
        "normalize": (sweep_doc(good, normalize="imagenet"), ["good.tar", "normalize", "valid: none | dataset"]),
        "defense": (sweep_doc(good, defenses=("abl",)), ["abl", "poisoned training set", "good.tar"]),
        "dbr": (sweep_doc(good, defenses=("dbr",)), ["dbr", "poisoned training set"]),
    }


@pytest.mark.parametrize("case", ["missing", "unreadable", "shape", "keys", "sha256", "normalize", "defense", "dbr"])
def test_each_bad_checkpoint_is_one_line_exit_2_nothing_written(case, tmp_path, workspace, backdoored):
    doc, words = bad_cases(tmp_path, backdoored[0])[case]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(main, ["sweep", str(path), "--workers", "0", "--no-progress"])
    assert result.exit_code == 2, result.output
    line = next(ln for ln in result.output.splitlines() if "Error:" in ln)
    assert str(path) in line and all(w in line for w in words), line
    assert not workspace.exists()


def test_the_refusal_is_a_config_error_in_the_graph(tmp_path, backdoored):
    cells = build_sweep(sweep_doc(save(tmp_path / "m.tar", backdoored[0]), defenses=("ss",)), "t.yaml").cells
    with pytest.raises(ConfigError, match="needs the poisoned training set"):
        build_graph(cells)


def test_a_model_overlay_does_not_change_a_checkpoints_architecture(tmp_path, backdoored):
    """--set (or a profile) may shrink a grid's model, never a published file's: that would not load."""
    doc = sweep_doc(save(tmp_path / "m.tar", backdoored[0]))
    cell = build_sweep(doc, "t.yaml", sets=["model.small_cnn.width=16"]).cells[0]
    assert cell.model["width"] == ARCH["width"]
    doc["grid"]["model"] = ARCH
    assert build_sweep(doc, "t.yaml", sets=["model.small_cnn.width=16"]).cells[0].model["width"] == 16
