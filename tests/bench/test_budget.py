"""Step budgets (bench/budget.py): a profile that shrinks the data keeps each stage's paper optimizer steps."""
from __future__ import annotations

import re
import typing

import pytest
import yaml
from click.testing import CliRunner

from bench import budget
from bench.cli import main
from bench.config import ConfigError
from bench.models import create_from_spec
from bench.registry import DEFENSES, RECIPES
from bench.sweep import build_sweep, load_sweep


def cell_of(tmp_path, profile: dict, defense, recipe="mcl_paper", ratio=0.25):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"name": "p", "scale": "mini", **profile}))
    doc = {"name": "t", "grid": {"dataset": {"name": "synthetic", "n_train": 1024}, "model": "small_cnn",
                                 "recipe": recipe, "attack": "none", "defense": defense, "clean_ratio": ratio}}
    return build_sweep(doc, "t.yaml", profile="p", profiles_dir=tmp_path).cells[0]


def steps(cell, kind: str, paper: bool = False) -> int:
    cfg = cell.paper if paper else {"recipe": cell.recipe, "defense": cell.defense}
    n = budget.paper_size(cell.dataset) if paper else budget.train_size(cell.dataset)
    return budget.count(kind, cfg[kind], cfg["recipe"], n, cell.clean_ratio).steps


def test_halving_the_data_doubles_epochs_and_keeps_steps(tmp_path):
    cell = cell_of(tmp_path, {"dataset": {"train_limit": 512}}, "ft")
    assert (cell.defense["epochs"], cell.paper["defense"]["epochs"]) == (40, 20)
    assert cell.defense["milestones"] == [2, 20]                    # FT's lr steps at epochs 1 and 10, moved x2
    assert (cell.recipe["epochs"], cell.recipe["milestones"]) == (100, [40, 70])
    assert steps(cell, "defense") == steps(cell, "defense", paper=True) == 20 * 4   # 256 clean images / 64
    assert steps(cell, "recipe") == steps(cell, "recipe", paper=True) == 50 * 16    # 1024 images / 64


def test_a_cap_bounds_a_stage_and_its_milestones_keep_their_place(tmp_path):
    cell = cell_of(tmp_path, {"dataset": {"train_limit": 256}, "budget": {"recipe": {"epochs": 60},
                                                                        "defense": {"ft": {"epochs": 50}}}}, "ft")
    assert (cell.recipe["epochs"], cell.recipe["milestones"]) == (60, [24, 42])   # 20/50 and 35/50 of 60
    assert (cell.defense["epochs"], cell.defense["milestones"]) == (50, [2, 25])   # 1 and 10 of 20, x2.5, rounded
    assert steps(cell, "recipe") < steps(cell, "recipe", paper=True)


def test_steps_fields_and_fixed_epochs_are_not_scaled(tmp_path):
    anp = cell_of(tmp_path, {"dataset": {"train_limit": 256}}, "anp")
    assert anp.defense["iterations"] == 2000
    mcr = cell_of(tmp_path, {"dataset": {"train_limit": 256}}, "mcr")     # tiled 10,000-sample epochs
    assert (mcr.defense["curve_epochs"], mcr.defense["endpoint_epochs"]) == (200, 100)   # train_baseline.py: 100
    dbd = cell_of(tmp_path, {"dataset": {"train_limit": 256}, "budget": {"defense": {"dbd": {"semi_epochs": 19}}}},
                  "dbd")
    assert (dbd.defense["semi_epochs"], dbd.defense["rampup_epochs"], dbd.defense["simclr_epochs"]) == (19, 19, 400)


def test_acs_teacher_counts_only_when_ac_trains_it_itself():
    """AC's ``teacher_epochs: None`` is the cell's recipe: the train stage's model (counted there) unless
    ``teacher_augment`` asks AC to train another one, whose steps are then AC's own."""
    recipe = {"epochs": 30, "batch_size": 100}
    reads = {"name": "ac", "teacher_epochs": None, "teacher_augment": None}
    trains = {**reads, "teacher_augment": ["flip"]}
    assert budget.count("defense", reads, recipe, 1000).steps == 0
    assert budget.count("defense", trains, recipe, 1000).steps == 30 * 10
    assert budget.count("defense", {**trains, "teacher_epochs": 5}, recipe, 1000).steps == 5 * 10


def test_explicit_profile_and_set_values_win_over_the_budget(tmp_path):
    cell = cell_of(tmp_path, {"dataset": {"train_limit": 512}, "defense": {"ft": {"epochs": 7}}}, "ft")
    assert cell.defense["epochs"] == 7
    no_profile = build_sweep({"name": "t", "grid": {"dataset": "synthetic", "model": "small_cnn", "recipe": "quick",
                                                    "attack": "none", "defense": "ft"}}, "t.yaml",
                             sets=["dataset.train_limit=128"]).cells[0]
    assert no_profile.defense["epochs"] == 20 and no_profile.paper["defense"] == no_profile.defense


def test_an_explicit_epoch_count_moves_its_milestones_with_it(tmp_path):
    """``--set`` of a schedule field under a profile: the field is kept as stated and its followers move by
    stated / paper (issue 22: Dynamic's lr milestones had stayed where the profile's cap put them)."""
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"name": "p", "scale": "mini",
                                                     "dataset": {"train_limit": 512},
                                                     "budget": {"defense": {"ft": {"epochs": 4}}}}))
    doc = {"name": "t", "grid": {"dataset": {"name": "synthetic", "n_train": 1024}, "model": "small_cnn",
                                 "recipe": "mcl_paper", "attack": "none", "defense": "ft"}}
    capped = build_sweep(doc, "t.yaml", profile="p", profiles_dir=tmp_path).cells[0]
    assert (capped.defense["epochs"], capped.defense["milestones"]) == (4, [1, 2])  # 1 and 10 of 20, x0.2
    stated = build_sweep(doc, "t.yaml", profile="p", profiles_dir=tmp_path, sets=["defense.ft.epochs=10"]).cells[0]
    assert (stated.defense["epochs"], stated.defense["milestones"]) == (10, [1, 5])  # x0.5, the cap not applied
    both = build_sweep(doc, "t.yaml", profile="p", profiles_dir=tmp_path,
                       sets=["defense.ft.epochs=10", "defense.ft.milestones=[3]"]).cells[0]
    assert both.defense["milestones"] == [3]


def test_lfd_teachers_follow_the_profile_model_map(tmp_path):
    prof = {"model": {"resnet18": {"name": "small_cnn", "width": 16}, "resnet_s2": {"name": "small_cnn", "width": 8}}}
    mapped = cell_of(tmp_path, prof, {"name": "lfd", "teacher": "resnet_s2"})
    assert (mapped.defense["teacher"], mapped.defense["teacher_options"]) == ("small_cnn", {"width": 8})
    kept = cell_of(tmp_path, prof, {"name": "lfd", "teacher": "resnet_s"})
    assert (kept.defense["teacher"], kept.defense["teacher_options"]) == ("resnet_s", {})


def test_mini_keeps_lfds_teacher_capacities_in_order_below_the_student():
    from bench.data.imageset import DataInfo

    cells = load_sweep("sweeps/lfd_fig4.yaml", profile="mini").cells
    info = DataInfo("cifar10", 10, 3, 32, (0.5,) * 3, (0.25,) * 3)

    def params(spec):
        return sum(p.numel() for p in create_from_spec(spec, info).parameters())

    teachers = {c.paper["defense"]["teacher"]: {"name": c.defense["teacher"], **c.defense["teacher_options"]}
                for c in cells}
    sizes = [params(teachers[t]) for t in ("resnet_s1", "resnet_s", "resnet_s2", "resnet18")]
    assert sizes == sorted(sizes) and sizes[2] < sizes[3] <= params(cells[0].model)


def test_bad_budget_is_one_line_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"budget.defense.ft.epoch: not a schedule field; did you mean 'epochs'"):
        cell_of(tmp_path, {"budget": {"defense": {"ft": {"epoch": 3}}}}, "ft")
    with pytest.raises(ConfigError, match=r"budget.recipe.epochs: expected a maximum count"):
        cell_of(tmp_path, {"budget": {"recipe": {"epochs": -1}}}, "ft")


def test_the_table_names_real_fields_and_covers_every_schedule_field():
    """A field renamed in a Config, or a new ``*_epochs`` / ``iterations`` / ``rounds`` / ``*_steps`` field not
    in the table, fails here: the mini profile would silently stop scaling it."""
    not_schedules = {("anp", "perturb_steps")}            # inner maximisation steps per batch, not a schedule
    configs = {("defense", e.name): e.config for e in DEFENSES.entries()}
    configs |= {("recipe", e.name): e.config for e in RECIPES.entries()}
    for (kind, name), cls in configs.items():
        fields = typing.get_type_hints(cls)
        table = budget.stages_of(kind, name)
        named = set(budget.CAP_ONLY.get(kind, {}).get(name, ()))
        named |= {f for pair in budget.MODEL_FIELDS.get(name, {}).items() for f in pair} if kind == "defense" else set()
        for field, stage in table.items():
            batch = stage.batch if stage.batch and not stage.batch.startswith("recipe.") else None
            shares = stage.share if isinstance(stage.share, tuple) else ()
            for ref in (field, *stage.follow, batch, stage.epoch_steps, stage.when and stage.when[0], *shares):
                assert ref is None or ref in fields, f"{kind} {name}: {ref} is not a field"
            named |= {field, *stage.follow}
        for field in named:
            assert field in fields, f"{kind} {name}: {field} is not a field"
        pattern = re.compile(r"(epochs|_steps|iterations|rounds)$")
        for field in fields:
            if pattern.search(field) and (name, field) not in not_schedules:
                assert field in named, f"{kind} {name}: schedule field {field} is not in bench/budget.py"


def test_dry_run_prints_each_jobs_steps_beside_the_paper(tmp_path, workspace, monkeypatch):
    import bench.sweep

    (tmp_path / "half.yaml").write_text(yaml.safe_dump({
        "name": "half", "scale": "mini", "dataset": {"train_limit": 512},
        "budget": {"recipe": {"epochs": 60}, "defense": {"anp": {"iterations": 500}}}}))
    monkeypatch.setattr(bench.sweep, "PROFILES_DIR", tmp_path)
    doc = {"name": "d", "grid": {"dataset": {"name": "synthetic", "n_train": 1024}, "model": "small_cnn",
                                 "recipe": "mcl_paper", "attack": {"name": "badnets", "target": 1},
                                 "defense": ["ft", "anp"], "clean_ratio": 0.25}}
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(main, ["sweep", str(path), "--profile", "half", "--dry-run"])
    assert result.exit_code == 0, result.output
    rows = {m[1]: (m[2], m[3]) for m in re.findall(r"(train|defend) +\w+ +(\S+).*? ([\d,]+) / +([\d,]+) steps",
                                                    result.output)}
    assert rows["ft"] == ("80", "80")                      # 40 epochs x 2 batches of 128 = 20 x 4 of 256
    assert rows["anp"] == ("500", "2,000")                 # the profile's stated cap
    assert rows["mcl_paper"] == ("480", "800")             # 60 epochs (cap) x 8 batches vs 50 x 16
