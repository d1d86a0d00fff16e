"""Sweep grammar: product, local lists, zip, include/exclude, seeds, profiles, --set, and every error case."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from benchtest import tiny_sweep

from bench.config import ConfigError
from bench.sweep import build_sweep, load_sweep


def doc(**grid):
    base = {"dataset": "digits", "model": "small_cnn", "recipe": "quick", "attack": "none", "defense": "none"}
    return {"name": "t", "grid": {**base, **grid}}


def labels(sweep, *keys):
    return [tuple(c.label()[k] if k in c.label() else getattr(c, k) for k in keys) for c in sweep.cells]


def test_product_over_axes_and_seeds():
    d = doc(attack=["none", "badnets"], defense=["none", "ft"], clean_ratio=[0.01, 0.05])
    d["seeds"] = [0, 1]
    s = build_sweep(d, "f.yaml")
    assert len(s.cells) == 2 * 2 * 2 * 2
    assert labels(s, "attack", "defense", "clean_ratio", "seed")[:3] == [
        ("none", "none", 0.01, 0), ("none", "none", 0.01, 1), ("none", "none", 0.05, 0)]


def test_list_inside_entry_expands_locally():
    s = build_sweep(doc(defense=["none", {"name": "ft", "lr": [0.1, 0.01], "epochs": [5, 10]}]), "f")
    fts = [c.defense for c in s.cells if c.defense["name"] == "ft"]
    assert [(d["lr"], d["epochs"]) for d in fts] == [(0.1, 5), (0.1, 10), (0.01, 5), (0.01, 10)]
    assert len(s.cells) == 5


def test_list_typed_option_is_a_value_unless_nested():
    one = build_sweep(doc(defense={"name": "ft", "milestones": [2, 10]}), "f")
    assert [c.defense["milestones"] for c in one.cells] == [[2, 10]]
    two = build_sweep(doc(defense={"name": "ft", "milestones": [[2, 10], [5]]}), "f")
    assert [c.defense["milestones"] for c in two.cells] == [[2, 10], [5]]


def test_defaults_and_per_dataset_overlay_resolved():
    s = build_sweep(doc(defense="ft"), "f")
    assert s.cells[0].defense["lr"] == 0.1 and s.cells[0].defense["epochs"] == 20
    assert s.cells[0].recipe["epochs"] == 30 and s.cells[0].clean_ratio == 0.05


def test_zip_pairs_axes():
    d = doc(attack=["none", "badnets"], defense=["none", "ft"])
    d["zip"] = [["attack", "defense"]]
    s = build_sweep(d, "f")
    assert labels(s, "attack", "defense") == [("none", "none"), ("badnets", "ft")]


def test_zip_needs_equal_lengths():
    d = doc(attack=["none", "badnets"], defense=["none", "ft", {"name": "ft", "lr": 0.5}])
    d["zip"] = [["attack", "defense"]]
    with pytest.raises(ConfigError, match=r"zip\[0\].*equal lengths"):
        build_sweep(d, "f")


def test_exclude_with_dotted_keys_and_lists():
    d = doc(attack=["none", {"name": "badnets", "target": 3}], defense=["none", "ft"])
    d["exclude"] = [{"attack.name": "badnets", "defense": "ft"}, {"attack.target": [7]}]
    s = build_sweep(d, "f")
    assert ("badnets", "ft") not in labels(s, "attack", "defense") and len(s.cells) == 3


def test_include_adds_cells_with_replaced_keys():
    d = doc(attack="badnets", defense="none")
    d["include"] = [{"defense": ["ft", "none"], "clean_ratio": 0.1}]
    s = build_sweep(d, "f")
    assert labels(s, "defense", "clean_ratio") == [("none", 0.05), ("ft", 0.1), ("none", 0.1)]


def test_duplicate_cells_are_dropped():
    d = doc()
    d["include"] = [{"defense": "none"}]
    assert len(build_sweep(d, "f").cells) == 1


def test_set_overrides_top_level_and_options():
    s = build_sweep(doc(defense="ft"), "f", sets=["seeds=[3, 4]", "defense.ft.epochs=2", "grid.clean_ratio=0.2"])
    assert [c.seed for c in s.cells] == [3, 4]
    assert s.cells[0].defense["epochs"] == 2 and s.cells[0].clean_ratio == 0.2


def test_profile_overlay_beats_sweep_entry_and_set_beats_profile(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({
        "name": "tiny", "scale": "mini", "dataset": {"train_limit": 50}, "recipe": {"epochs": 2},
        "defense": {"ft": {"epochs": 1}}, "model": {"small_cnn": {"width": 8}}}))
    d = doc(defense={"name": "ft", "epochs": 20})
    s = build_sweep(d, "f", profile="tiny", profiles_dir=tmp_path)
    c = s.cells[0]
    assert (c.dataset["train_limit"], c.recipe["epochs"], c.defense["epochs"], c.model["width"]) == (50, 2, 1, 8)
    assert s.scale == "mini" and c.scale == "mini" and c.profile == "tiny"
    s2 = build_sweep(d, "f", sets=["defense.ft.epochs=3"], profile="tiny", profiles_dir=tmp_path)
    assert s2.cells[0].defense["epochs"] == 3


def test_profile_can_replace_a_model(tmp_path):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"model": {"wrn16_1": {"name": "small_cnn", "width": 8}}}))
    s = build_sweep(doc(model="wrn16_1"), "f", profile="p", profiles_dir=tmp_path)
    assert s.cells[0].model == {"name": "small_cnn", "width": 8}


def test_shipped_profiles_and_quickstart_load():
    s = load_sweep("sweeps/quickstart.yaml")
    assert len(s.cells) == 8 and {c.seed for c in s.cells} == {0, 1}


@pytest.mark.parametrize("mutate, path, hint", [
    (lambda d: d["grid"].update(defense={"name": "ft", "lrr": 0.1}), "grid.defense.lrr", "did you mean 'lr'"),
    (lambda d: d["grid"].update(defense=["none", {"name": "fx"}]), "grid.defense[1].name", "did you mean 'ft'"),
    (lambda d: d["grid"].update(attack="badnet"), "grid.attack", "did you mean 'badnets'"),
    (lambda d: d["grid"].update(defense={"name": "ft", "epochs": "ten"}), "grid.defense.epochs", "expected int"),
    (lambda d: d["grid"].update(defense={"name": "ft", "lr": True}), "grid.defense.lr", "expected float"),
    (lambda d: d["grid"].update(attakc="none"), "grid.attakc", "did you mean 'attack'"),
    (lambda d: d.update(seeds=["a"]), "seeds[0]", "expected int"),
    (lambda d: d.update(exclude=[{"atack.name": "x"}]), "exclude[0].atack.name", "did you mean 'attack'"),
    (lambda d: d.update(include=[{"defence": "ft"}]), "include[0].defence", "did you mean 'defense'"),
    (lambda d: d.update(sedes=[0]), "sedes", "did you mean 'seeds'"),
    (lambda d: d["grid"].update(clean_ratio=1.5), "grid.clean_ratio", "(0, 1]"),
    (lambda d: d["grid"].update(recipe={"name": "quick", "schedule": "multistep", "milestones": [40]}),
     "grid.recipe", "milestones"),
    (lambda d: d["grid"].update(attack={"name": "badnets", "label_mode": "all2any"}), "grid.attack.label_mode",
     "all2all"),
    (lambda d: d.pop("name"), "name", "required"),
    (lambda d: d["grid"].pop("model"), "grid.model", "missing"),
])
def test_errors_name_file_key_and_valid_choice(mutate, path, hint):
    d = doc()
    mutate(d)
    with pytest.raises(ConfigError) as info:
        build_sweep(d, "sweeps/x.yaml")
    err = info.value.with_file("sweeps/x.yaml")
    assert err.path == path, str(err)
    assert hint in str(err)
    assert str(err).startswith(f"sweeps/x.yaml: {path}: ") and "\n" not in str(err)


def test_unknown_profile_and_bad_set(tmp_path):
    with pytest.raises(ConfigError, match="unknown profile 'mnii'.*did you mean 'mini'"):
        (tmp_path / "mini.yaml").write_text("name: mini\n")
        build_sweep(doc(), "f", profile="mnii", profiles_dir=tmp_path)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        build_sweep(doc(), "f", sets=["seeds"])
    with pytest.raises(ConfigError, match="did you mean 'defense'"):
        build_sweep(doc(), "f", sets=["defence.ft.epochs=1"])
    with pytest.raises(ConfigError, match="--set.defense.ft.epocs.*did you mean 'epochs'"):
        build_sweep(doc(defense="ft"), "f", sets=["defense.ft.epocs=1"])


def test_a_profile_extends_another_and_overrides_only_what_it_states(tmp_path):
    from bench.sweep import load_profile

    (tmp_path / "base.yaml").write_text("name: base\nscale: mini\ndataset: {train_limit: 200, test_limit: 50}\n"
                                        "budget: {recipe: {epochs: 2}, defense: {ft: {epochs: 1}}}\n")
    (tmp_path / "probe.yaml").write_text("extends: base\nname: probe\nbudget: {recipe: {epochs: 6}}\n")
    probe = load_profile("probe", tmp_path)
    assert probe["name"] == "probe" and probe["scale"] == "mini"
    assert probe["dataset"] == {"train_limit": 200, "test_limit": 50}
    assert probe["budget"] == {"recipe": {"epochs": 6}, "defense": {"ft": {"epochs": 1}}}
    (tmp_path / "loop.yaml").write_text("extends: loop\n")
    with pytest.raises(ConfigError, match="extends: expected the name of another profile"):
        load_profile("loop", tmp_path)
    (tmp_path / "orphan.yaml").write_text("extends: nothere\n")
    with pytest.raises(ConfigError, match="unknown profile 'nothere'"):
        load_profile("orphan", tmp_path)


def test_the_repository_probe_profile_is_mini_with_three_times_the_recipe_cap():
    from bench.sweep import load_profile

    mini, probe = load_profile("mini"), load_profile("mini_x3")
    assert probe["budget"]["recipe"] == {"epochs": 3 * mini["budget"]["recipe"]["epochs"]}
    assert {k: v for k, v in probe.items() if k not in ("name", "description", "budget")} == \
        {k: v for k, v in mini.items() if k not in ("name", "description", "budget")}
    assert probe["budget"]["defense"] == mini["budget"]["defense"]


def test_load_sweep_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_sweep(bad)
    assert str(info.value).startswith(str(bad))
    with pytest.raises(ConfigError, match="no such sweep file"):
        load_sweep(tmp_path / "missing.yaml")


def test_only_keeps_the_matching_cells_and_marks_the_sweep_partial():
    from benchtest import tiny_sweep

    doc = tiny_sweep(attacks=[{"name": "badnets", "target": 0}, {"name": "blend", "target": 0}])
    full = build_sweep(doc, "t.yaml")
    assert len(full.cells) == 4 and not full.partial
    part = build_sweep(doc, "t.yaml", only=["attack.name=blend", "defense.name=[none]"])
    assert part.partial and [(c.attack["name"], c.defense["name"]) for c in part.cells] == [("blend", "none")]
    with pytest.raises(ConfigError, match="--only.defence: unknown key; did you mean 'defense'"):
        build_sweep(doc, "t.yaml", only=["defence=ft"])
    with pytest.raises(ConfigError, match="no cell of the sweep matches"):
        build_sweep(doc, "t.yaml", only=["attack.name=wanet"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        build_sweep(doc, "t.yaml", only=["dataset"])


def test_only_matches_a_default_the_file_left_out_and_a_value_as_written():
    """``--only defense.mode=dst`` keeps dbr_table1's bare ``dst`` (mode's default) and not its baselines;
    ``--only model=resnet18`` still keeps a cell the mini profile maps to a CNN."""
    from benchtest import tiny_sweep

    doc = tiny_sweep(defenses=["dst", {"name": "dst", "mode": "baseline1"}], model={"name": "resnet18"})
    modes = build_sweep(doc, "t.yaml", only=["defense.mode=dst"]).cells
    assert [c.defense["mode"] for c in modes] == ["dst"]
    mini = build_sweep(doc, "t.yaml", profile="mini", only=["model.name=resnet18", "defense.mode=baseline1"]).cells
    assert [(c.model["name"], c.defense["mode"]) for c in mini] == [("small_cnn", "baseline1")]


SWEEP_FILES = sorted((Path(__file__).resolve().parents[2] / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_every_shipped_sweep_file_resolves_at_paper_and_mini_scale(path, monkeypatch):
    """Each paper table/figure file names real plugins and options and expands to cells, with and without mini."""
    from bench.graph import build_graph

    monkeypatch.chdir(path.parents[1])      # checkpoint paths (sweeps/released_*.yaml) are from the repo root
    released = path.parents[2] / "shared" / "released"
    if "checkpoint:" in path.read_text() and not released.is_dir():
        pytest.skip(f"{path.name} defends a released checkpoint; {released} is absent")

    paper = load_sweep(path)
    mini = load_sweep(path, profile="mini")
    assert paper.name == path.stem and paper.cells and len(mini.cells) == len(paper.cells)
    assert mini.scale == "mini" and paper.scale == "full"
    assert build_graph(mini.cells).jobs


def test_a_cells_written_digest_follows_what_the_user_wrote_not_the_resolved_defaults():
    """A plain run and an --only block write the same cells; a --set that reaches a cell makes it another
    (a variant), one that reaches only another defense does not; a new seed is another cell."""
    def written(**kw):
        cells = build_sweep(tiny_sweep(seeds=(0, 1)), "t.yaml", **kw).cells
        return {(c.defense["name"], c.seed): c.written for c in cells}

    plain = written()
    assert len(set(plain.values())) == 4
    assert written(only=["defense.name=ft"]) == {k: v for k, v in plain.items() if k[0] == "ft"}
    lr = written(sets=["defense.ft.lr=0.05"])
    assert lr[("none", 0)] == plain[("none", 0)] and lr[("ft", 0)] != plain[("ft", 0)]
    assert written(sets=["defense.mcl.tau=0.3"]) == plain
