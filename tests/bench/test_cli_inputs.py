"""Bad input at every door of the CLI: one line on stderr, exit code 2, nothing written; and numbers in YAML
1.2 notation (``1e-4``) accepted wherever YAML is read."""
from __future__ import annotations

import json

import pytest
import yaml
from benchtest import tiny_sweep
from click.testing import CliRunner

from bench.cli import main
from bench.config import ConfigError, load_yaml
from bench.sweep import load_sweep


def write(tmp_path, doc, name="s.yaml") -> str:
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return str(p)


def one_line_error(result, *fragments: str) -> str:
    """The run failed with exit 2 and exactly one line, starting 'Error:', that holds every fragment."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


# -- YAML 1.2 numbers, per entry point -----------------------------------------------------------------------
def test_the_loader_reads_scientific_notation_as_floats_and_leaves_other_strings_alone():
    doc = load_yaml("a: 1e-4\nb: 1.0e+9\nc: -5E3\nd: 12\ne: 1.2.3\nf: 1e4x\ng: [2e-2, 0.5]")
    assert doc == {"a": 1e-4, "b": 1e9, "c": -5000.0, "d": 12, "e": "1.2.3", "f": "1e4x", "g": [0.02, 0.5]}
    assert yaml.safe_load("a: 1e-4") == {"a": "1e-4"}          # PyYAML itself is untouched (YAML 1.1)


def test_a_sweep_file_accepts_1e_minus_4(tmp_path):
    text = yaml.safe_dump(tiny_sweep(defenses=[{"name": "ft", "lr": 0.5}])).replace("lr: 0.5", "lr: 1e-4")
    assert "lr: 1e-4" in text
    sweep = load_sweep(write(tmp_path, text))
    assert {c.defense["lr"] for c in sweep.cells} == {1e-4}


def test_a_profile_accepts_1e_minus_4(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "sci.yaml").write_text("scale: sci\nrecipe: {lr: 5e-3}\ndefense: {ft: {lr: 1e-4}}\n")
    sweep = load_sweep(write(tmp_path, tiny_sweep()), profile="sci", profiles_dir=tmp_path / "p")
    assert {c.recipe["lr"] for c in sweep.cells} == {5e-3} and sweep.scale == "sci"
    assert {c.defense.get("lr") for c in sweep.cells if c.defense["name"] == "ft"} == {1e-4}


def test_set_and_only_accept_1e_minus_4(tmp_path, workspace):
    path = write(tmp_path, tiny_sweep(defenses=["none", {"name": "ft", "lr": [0.1, 0.0001]}]))
    sweep = load_sweep(path, sets=["defense.ft.momentum=9e-1"], only=["defense.lr=1e-4"])
    assert [(c.defense["lr"], c.defense["momentum"]) for c in sweep.cells] == [(1e-4, 0.9)]
    dry = CliRunner().invoke(main, ["sweep", path, "--dry-run", "--set", "defense.ft.lr=1e-4"])
    assert dry.exit_code == 0, dry.output


def test_a_report_spec_accepts_5e_minus_2(tmp_path):
    from bench.reports import load_spec

    spec = load_spec(write(tmp_path, "name: sci\nsweep: tiny\nrows: [dataset]\nfilters: {clean_ratio: 5e-2}\n"
                                     "groups: [{label: Before, where: {defense: none}}]\n", "sci.yaml"))
    assert spec.filters == {"clean_ratio": 0.05}


# -- one line, exit 2, nothing written --------------------------------------------------------------------------
def test_a_yaml_syntax_error_names_the_line_and_column(tmp_path, workspace):
    path = write(tmp_path, "name: x\ngrid:\n  dataset: [digits,\n")
    one_line_error(CliRunner().invoke(main, ["sweep", path]), path, "not valid YAML: line 4, column 1")
    assert not workspace.exists()


def test_set_indexes_a_list_and_names_its_length(tmp_path, workspace):
    path = write(tmp_path, tiny_sweep())
    one_line_error(CliRunner().invoke(main, ["sweep", path, "--set", "grid.attack.0.bogus=1"]),
                   "grid.attack[0].bogus: unknown key", "valid: label_mode")
    one_line_error(CliRunner().invoke(main, ["sweep", path, "--set", "grid.defense.7.epochs=1"]),
                   "'grid.defense' is a list of 2; index it with 0..1")
    ok = load_sweep(path, sets=["grid.defense.1.epochs=3"])
    assert {c.defense["epochs"] for c in ok.cells if c.defense["name"] == "ft"} == {3}
    assert not workspace.exists()


def test_a_target_outside_the_classes_fails_before_anything_is_written(tmp_path, workspace):
    path = write(tmp_path, tiny_sweep(attacks=[{"name": "badnets", "target": 5}]))     # 3 classes
    for args in ([], ["--dry-run"]):
        one_line_error(CliRunner().invoke(main, ["sweep", path, *args]), path, "target", "5 is not a class",
                       "valid: 0..2")
    assert not workspace.exists()


def test_a_missing_data_root_or_dataset_fails_before_anything_is_written(tmp_path, workspace):
    doc = tiny_sweep()
    doc["grid"]["dataset"] = "cifar10"
    path = write(tmp_path, doc)
    one_line_error(CliRunner().invoke(main, ["sweep", path, "--data-root", str(tmp_path / "nope")]),
                   "--data-root", "does not exist")
    (tmp_path / "empty").mkdir()
    line = one_line_error(CliRunner().invoke(main, ["sweep", path, "--data-root", str(tmp_path / "empty")]),
                          "dataset 'cifar10'", "--data-root")
    assert line.count("dataset 'cifar10'") == 1                    # said once
    assert not workspace.exists()


@pytest.mark.parametrize("url, says", [
    ("nonsense://x", "is not a database URL"),
    ("sqlite:////no/such/folder/bench.db", "unable to open database file"),
    ("postgresql+psycopg://me@127.0.0.1:1/bench", "OperationalError"),        # nothing listens on port 1
])
def test_a_bad_or_unreachable_database_is_one_line(tmp_path, workspace, url, says):
    path = write(tmp_path, tiny_sweep())
    for args in (["sweep", path], ["ls"], ["export"], ["report", "tiny"]):
        one_line_error(CliRunner().invoke(main, [*args, "--db", url]), "--db", says)
    assert not workspace.exists()


def test_a_read_only_database_is_read_but_not_written(tmp_path, workspace):
    path = write(tmp_path, tiny_sweep(defenses=["none"]))
    assert CliRunner().invoke(main, ["sweep", path, "--workers", "0", "--no-progress"]).exit_code == 0
    read_only = f"sqlite:///file:{workspace / 'bench.db'}?mode=ro&uri=true"
    ls = CliRunner().invoke(main, ["ls", "--db", read_only])
    assert ls.exit_code == 0 and "tiny" in ls.output
    exported = CliRunner().invoke(main, ["export", "--db", read_only, "--format", "json"])
    assert exported.exit_code == 0 and len(json.loads(exported.stdout)) == 1
    one_line_error(CliRunner().invoke(main, ["sweep", path, "--db", read_only, "--set", "seeds=[3]"]),
                   "--db", "readonly")


def test_a_workspace_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "ws").write_text("")
    path = write(tmp_path, tiny_sweep())
    one_line_error(CliRunner().invoke(main, ["sweep", path, "--workspace", str(tmp_path / "ws")]),
                   "--workspace", "is a file")


def test_parquet_without_pyarrow_names_the_extra(tmp_path, workspace, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
    one_line_error(CliRunner().invoke(main, ["export", "--format", "parquet", "--out", str(tmp_path / "x.pq")]),
                   "pip install -e '.[parquet]'")


@pytest.mark.parametrize("args, says", [
    (["sweep", "{path}", "--bogus"], "No such option"),
    (["sweep", "{path}", "--workers", "-1"], "--workers"),
    (["sweep", "{path}", "--device", "gpu"], "valid: auto, cpu, cuda, cuda:N"),
    (["worker", "--device", "tpu"], "valid: auto, cpu, cuda, cuda:N"),
    (["sweep", "{path}", "--profile", "minii"], "did you mean 'mini'"),
    (["sweep", "{path}", "--only", "datset=digits"], "did you mean 'dataset'"),
    (["sweep", "{path}", "--set", "seeds"], "expected KEY=VALUE"),
    (["sweep", "{tmp}/missing.yaml"], "no such sweep file"),
    (["show", "abc"], "no database"),
    (["plugins", "attacks"], "'attacks' is not one of"),
])
def test_usage_errors_are_one_line(tmp_path, workspace, args, says):
    path = write(tmp_path, tiny_sweep())
    args = [a.format(path=path, tmp=tmp_path) for a in args]
    one_line_error(CliRunner().invoke(main, args), says)
    assert not workspace.exists()


def test_config_error_is_one_line_even_when_raised_outside_parsing(tmp_path):
    @main.command(name="raise-config-error", hidden=True)
    def boom():
        raise ConfigError("grid.x", "broken", "f.yaml")
    try:
        one_line_error(CliRunner().invoke(main, ["raise-config-error"]), "f.yaml: grid.x: broken")
    finally:
        main.commands.pop("raise-config-error")
