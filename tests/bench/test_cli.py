"""The command line, in-process through click's CliRunner: exit codes, messages, nothing written on bad input."""
from __future__ import annotations

import json

import pytest
import yaml
from benchtest import tiny_sweep
from click.testing import CliRunner

from bench.cli import main

COMMANDS = [["sweep"], ["ls"], ["show"], ["export"], ["plugins"], ["db"], ["db", "upgrade"]]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd):
    result = CliRunner().invoke(main, [*cmd, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def write(tmp_path, doc, name="s.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc))
    return str(p)


def test_bad_sweep_exits_2_with_one_line_and_writes_nothing(tmp_path, workspace):
    doc = tiny_sweep(defenses=[{"name": "ft", "tua": 0.5}])
    path = write(tmp_path, doc)
    result = CliRunner().invoke(main, ["sweep", path])
    assert result.exit_code == 2
    assert f"{path}: grid.defense[0].tua: unknown key; valid: augment, batch_size, epochs, lr" in result.output
    assert not workspace.exists()


def test_unknown_plugin_suggests_the_closest_name(tmp_path, workspace):
    path = write(tmp_path, tiny_sweep(attacks=["badnet"]))
    result = CliRunner().invoke(main, ["sweep", path, "--dry-run"])
    assert result.exit_code == 2 and "did you mean 'badnets'" in result.output


def test_sweep_dry_run_ls_show_export(tmp_path, workspace):
    path = write(tmp_path, tiny_sweep())
    runner = CliRunner()
    dry = runner.invoke(main, ["sweep", path, "--dry-run"])
    assert dry.exit_code == 0 and "train" in dry.output and "1 jobs       0 cached" in dry.output
    assert not workspace.exists()
    run = runner.invoke(main, ["sweep", path, "--workers", "0", "--no-progress"])
    assert run.exit_code == 0, run.output
    assert "6 jobs ran, 0 cached, 0 failed" in run.output and "BA" in run.output
    dry2 = runner.invoke(main, ["sweep", path, "--dry-run"])
    assert "1 jobs       1 cached       0 failed       0 to run" in dry2.output
    ls = runner.invoke(main, ["ls"])
    assert ls.exit_code == 0 and "tiny" in ls.output and "2/2" in ls.output
    exported = runner.invoke(main, ["export", "--sweep", "tiny", "--format", "json"])
    rows = json.loads(exported.stdout)
    assert len(rows) == 2 and {"ba", "asr", "ra", "asr_n", "train_s", "config"} <= set(rows[0])
    show = runner.invoke(main, ["show", rows[0]["key"][:10]])
    assert show.exit_code == 0 and "evaluate job" in show.output and "asr" in show.output
    csv = runner.invoke(main, ["export", "--format", "csv"])
    assert csv.stdout.splitlines()[0].startswith("sweep,cell,scale")
    bad = runner.invoke(main, ["export", "--sweep", "tinyy"])
    assert bad.exit_code == 2 and "did you mean 'tiny'" in bad.output


def test_failed_job_gives_exit_1_and_summary(tmp_path, workspace):
    path = write(tmp_path, tiny_sweep(defenses=["none", "explode"]))
    result = CliRunner().invoke(main, ["sweep", path, "--workers", "0", "--no-progress"])
    assert result.exit_code == 1
    assert "1 failed" in result.output and "RuntimeError: boom" in result.output and "bench show" in result.output


def test_plugins_lists_fields_and_defaults():
    result = CliRunner().invoke(main, ["plugins", "defense"])
    assert result.exit_code == 0
    assert "ft (v1, 'FT')" in result.output and "lr: float = 0.1" in result.output
    recipes = CliRunner().invoke(main, ["plugins", "recipe"])
    assert "mcl_paper" in recipes.output and "epochs: int = 50" in recipes.output


def test_schema_version_mismatch_names_the_fix(tmp_path):
    from sqlalchemy import create_engine, text

    from bench.db.storage import SchemaMismatch, Storage
    url = f"sqlite:///{tmp_path / 'old.db'}"
    Storage(url)
    with create_engine(url).begin() as c:
        c.execute(text("update meta set value='0' where key='schema_version'"))
    with pytest.raises(SchemaMismatch, match="bench db upgrade"):
        Storage(url)


def test_running_a_table_block_by_block_builds_the_whole_table(tmp_path, workspace):
    """--only runs some cells; the sweep's stored cell list grows with each block instead of being replaced."""
    path = write(tmp_path, tiny_sweep())

    def exported():
        out = CliRunner().invoke(main, ["export", "--format", "json"])
        return sorted((r["defense"], r["state"]) for r in json.loads(out.stdout))

    first = CliRunner().invoke(main, ["sweep", path, "--workers", "0", "--no-progress", "--only", "defense.name=none"])
    assert first.exit_code == 0, first.output
    assert exported() == [("none", "done")]
    second = CliRunner().invoke(main, ["sweep", path, "--workers", "0", "--no-progress", "--only", "defense.name=ft"])
    assert second.exit_code == 0 and "2 cached" in second.output        # the shared poison and train jobs
    assert exported() == [("ft", "done"), ("none", "done")]
    again = CliRunner().invoke(main, ["sweep", path, "--workers", "0", "--no-progress"])   # the whole file
    assert again.exit_code == 0 and "0 jobs ran" in again.output
    assert exported() == [("ft", "done"), ("none", "done")]
    ls = CliRunner().invoke(main, ["ls"])
    assert "2/2" in ls.output


def test_a_block_at_another_profile_is_refused_instead_of_replacing_the_cell_list(tmp_path, workspace):
    """--only at a profile other than the stored sweep's would have replaced the sweep's cells with the block's
    (the cells' results stay stored, but ls / export / report lose them): exit 2, nothing written."""
    path = write(tmp_path, tiny_sweep())
    assert CliRunner().invoke(main, ["sweep", path, "--workers", "0", "--no-progress"]).exit_code == 0
    before = CliRunner().invoke(main, ["export", "--format", "json"]).stdout
    probe = CliRunner().invoke(main, ["sweep", path, "--workers", "0", "--no-progress", "--profile", "mini",
                                      "--only", "defense.name=none"])
    assert probe.exit_code == 2
    assert "sweep 'tiny' is stored at profile none and a run of some of its cells at another profile" in probe.output
    assert CliRunner().invoke(main, ["export", "--format", "json"]).stdout == before


def test_a_block_re_run_after_a_version_bump_replaces_its_stale_cells(tmp_path, workspace, monkeypatch):
    """A fix bumps a plugin's version: re-running that block with --only moves its cells to the new keys in
    place, instead of listing the old result beside the new one as a second variant of the same config."""
    from defenses.ft import FineTuning

    path = write(tmp_path, tiny_sweep())
    run = ["sweep", path, "--workers", "0", "--no-progress"]
    assert CliRunner().invoke(main, run).exit_code == 0
    before = json.loads(CliRunner().invoke(main, ["export", "--format", "json"]).stdout)
    monkeypatch.setattr(FineTuning, "version", FineTuning.version + 1)
    again = CliRunner().invoke(main, [*run, "--only", "defense.name=ft"])
    assert again.exit_code == 0, again.output
    after = json.loads(CliRunner().invoke(main, ["export", "--format", "json"]).stdout)
    assert sorted(r["defense"] for r in after) == ["ft", "none"]
    old, new = ({r["defense"]: r["key"] for r in rows} for rows in (before, after))
    assert new["none"] == old["none"] and new["ft"] != old["ft"]


def test_a_block_re_run_after_a_default_change_replaces_its_cell_and_a_set_adds_a_variant(tmp_path, workspace,
                                                                                           monkeypatch):
    """A default changes (no version bump: the resolved config differs, so its key does): re-running the block as
    the file writes it moves the cell to the new config in place, so `bench report` does not find two cells
    where the file has one. The same block with a --set that reaches the cell is a variant beside it."""
    from defenses.ft import FineTuning

    path = write(tmp_path, tiny_sweep(defenses=["none", {"name": "ft", "epochs": 1}]))
    run = ["sweep", path, "--workers", "0", "--no-progress"]
    assert CliRunner().invoke(main, run).exit_code == 0

    def exported():
        rows = json.loads(CliRunner().invoke(main, ["export", "--format", "json"]).stdout)
        return {(r["defense"], r["defense_variant"]): r for r in rows}

    before = exported()
    monkeypatch.setattr(FineTuning, "per_dataset", {**FineTuning.per_dataset, "synthetic": {"milestones": (5,)}})
    again = CliRunner().invoke(main, [*run, "--only", "defense.name=ft"])
    assert again.exit_code == 0 and "2 jobs ran" in again.output, again.output   # defend + evaluate
    after = exported()
    assert sorted(after) == sorted(before)                       # still one ft cell, now at the new config
    ft = next(r for (d, _), r in after.items() if d == "ft")
    old = next(r for (d, _), r in before.items() if d == "ft")
    assert ft["key"] != old["key"] and ft["config"]["defense"]["milestones"] == [5]
    probe = CliRunner().invoke(main, [*run, "--only", "defense.name=ft", "--set", "defense.ft.lr=0.05"])
    assert probe.exit_code == 0, probe.output
    assert sorted(d for d, _ in exported()) == ["ft", "ft", "none"]      # the probe is listed beside it
    assert ft["key"] in {r["key"] for r in exported().values()}


def test_a_report_leaves_out_cells_that_ran_older_code(tmp_path, workspace, monkeypatch):
    """A cell whose defend job ran an older plugin version is marked stale in the export and left out of a
    report with a note, so a table never mixes a fixed method's numbers with its pre-fix ones."""
    from defenses.ft import FineTuning

    path = write(tmp_path, tiny_sweep())
    assert CliRunner().invoke(main, ["sweep", path, "--workers", "0", "--no-progress"]).exit_code == 0
    monkeypatch.setattr(FineTuning, "version", FineTuning.version + 1)
    rows = json.loads(CliRunner().invoke(main, ["export", "--format", "json"]).stdout)
    assert {r["defense"]: r["stale"] for r in rows} == {"none": "", "ft": f"ft v{FineTuning.version - 1} "
                                                                            f"(now v{FineTuning.version})"}
    out = CliRunner().invoke(main, ["report", "tiny", "--format", "csv", "--out", str(tmp_path / "out")])
    assert out.exit_code == 0, out.output
    assert "left out 1 cells" in out.output and "ft v1 (now v2)" in out.output
    import pandas as pd

    table = pd.concat([pd.read_csv(p) for p in (tmp_path / "out").glob("*.csv")])
    assert set(table["group"]) == {"Before"}                    # the no-defense column; FT's stale cell is out
