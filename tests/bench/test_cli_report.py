"""bench report / baseline / check through click's CliRunner, on a database holding a registered tiny sweep
whose evaluate jobs were finished with chosen metrics (no training: the whole file runs in about a second)."""
from __future__ import annotations

import io

import pandas as pd
import pytest
from benchtest import tiny_sweep
from click.testing import CliRunner

from bench.cli import main
from bench.db.storage import RunInfo, Storage, default_url
from bench.graph import build_graph
from bench.results import cells_frame, summary_table
from bench.sweep import build_sweep

# (defense, seed) -> BA, ASR, RA of the finished evaluate job
VALUES = {("none", 0): (0.90, 0.98, 0.02), ("none", 1): (0.92, 0.96, 0.04),
          ("ft", 0): (0.85, 0.10, 0.80), ("ft", 1): (0.87, 0.20, 0.70)}
# sweep 'weak': the same labels, a poison rate of 5 %, and a backdoor that did not take (ASR before 50 %)
WEAK = {("none", 0): (0.90, 0.50, 0.40), ("none", 1): (0.92, 0.52, 0.40),
        ("ft", 0): (0.85, 0.02, 0.80), ("ft", 1): (0.87, 0.03, 0.70)}


def finished(storage, doc, values):
    """Register a sweep and finish its evaluate jobs with the chosen metrics (no training)."""
    sweep = build_sweep(doc, "t.yaml")
    graph = build_graph(sweep.cells)
    storage.register_sweep(sweep.name, sweep.file, sweep.profile, sweep.scale, sweep.document,
                           graph.jobs.values(), [(c.label(), c.as_dict(), key) for c, key in graph.cells])
    info = RunInfo("w0", "cpu", "host", 1, "0123456789abcdef", False, "3", "2", "0")
    for cell, key in graph.cells:
        attempt = storage.try_claim(key, "w0", info, False, lambda st: False)
        ba, asr, ra = values[(cell.defense["name"], cell.seed)]
        storage.finish_run(key, attempt, "w0", [], [("ba", "", ba, 48), ("asr", "", asr, 32), ("ra", "", ra, 32)],
                           [], "cpu", None, 0.1)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace holding sweep 'tiny' (BadNets on synthetic data; defenses none and ft; seeds 0 and 1) and
    sweep 'weak' (the same labels with another poison rate; its backdoor did not take)."""
    ws = tmp_path_factory.mktemp("report") / "ws"
    ws.mkdir()
    storage = Storage(default_url(ws))
    finished(storage, tiny_sweep(seeds=(0, 1)), VALUES)
    finished(storage, tiny_sweep("weak", seeds=(0, 1), attacks=[{"name": "badnets", "target": 0,
                                                                  "poison_rate": 0.05}]), WEAK)
    return ws


def bench(ws, *args):
    return CliRunner().invoke(main, [*args, "--workspace", str(ws)])


@pytest.mark.parametrize("cmd", [["report"], ["baseline"], ["baseline", "save"], ["baseline", "export"],
                                 ["baseline", "import"], ["check"]])
def test_every_report_command_has_help(cmd):
    result = CliRunner().invoke(main, [*cmd, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_report_writes_html_tex_csv_and_a_figure(ws, tmp_path):
    out = tmp_path / "out"
    result = bench(ws, "report", "tiny", "--format", "html,tex,csv", "--out", str(out),
                   "--figure", "x=clean_ratio,y=asr")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["tiny.csv", "tiny.html", "tiny.tex", "tiny_asr_vs_clean_ratio.pdf",
                     "tiny_asr_vs_clean_ratio.png"]
    html = (out / "tiny.html").read_text()
    assert "Before" in html and "sweep: tiny" in html and "data:image/png;base64," in html
    assert "git commit: 0123456789" in html and "n = 2 per cell" in html      # two seeds per cell
    # golden cells: FT's ASR mean 15.00 (10 and 20), std 7.07; Before's BA 91.00 ± 1.41
    assert '<span class="v">15.00</span> ± 7.07' in html and '<span class="v">91.00</span> ± 1.41' in html
    table = pd.read_csv(out / "tiny.csv")
    assert len(table) == 4 and set(table["group"]) == {"Before", "FT"} and (table["n"] == 2).all()
    assert table.set_index(["group", "metric"]).loc[("FT", "ba"), "text"] == "86.00 ± 1.41"
    tex = (out / "tiny.tex").read_text()
    assert r"Synthetic & BadNets & 97.00$\pm$1.41 & 91.00$\pm$1.41 & 15.00$\pm$7.07 & 86.00$\pm$1.41 \\" in tex


def test_a_paper_spec_filters_the_sweep_and_compares_only_matching_rows(ws, tmp_path):
    result = bench(ws, "report", "mcl_table1", "--sweep", "tiny", "--out", str(tmp_path), "--format", "html,csv")
    assert result.exit_code == 0, result.output
    html = (tmp_path / "mcl_table1.html").read_text()
    assert "MCL Table 1" in html and '<th class="group" colspan="2">I-BAU</th>' in html
    assert '<td class="row">' not in html            # spec filter clean_ratio 0.05 drops the 0.1 cells
    assert "Paper vs ours" not in html and not (tmp_path / "mcl_table1_vs_paper.csv").exists()


def test_report_rejects_bad_input_with_exit_2(ws, tmp_path):
    assert bench(ws, "report", "tiny", "--format", "pdf", "--out", str(tmp_path)).exit_code == 2
    result = bench(ws, "report", "tinyy", "--out", str(tmp_path))
    assert result.exit_code == 2 and "no such table spec" in result.output


def test_check_passes_against_its_own_baseline_and_fails_on_a_moved_value(ws, tmp_path):
    csv = tmp_path / "baselines" / "tiny.csv"
    result = bench(ws, "baseline", "save", "tiny0", "--sweep", "tiny", "--out", str(csv))
    assert result.exit_code == 0 and "baseline 'tiny0'" in result.output
    result = bench(ws, "check", "tiny", "--baseline", "tiny0")
    assert result.exit_code == 0 and "4 cells: 0 fail, 0 insufficient, 0 warn, 4 pass" in result.output
    base = pd.read_csv(csv)
    assert set(base["metric"]) >= {"ba", "asr", "ra"}
    row = base.index[(base["metric"] == "ba") & (base["defense"] == "ft")][0]
    base.loc[row, "value"] += base.loc[row, "tolerance"] + 0.05            # we now look worse on BA
    moved = tmp_path / "moved.csv"
    base.to_csv(moved, index=False)
    result = bench(ws, "check", "--sweep", "tiny", "--against", str(moved))
    assert result.exit_code == 1 and "1 fail" in result.output and " fail " in result.output
    base.loc[row, "value"] -= 2 * (base.loc[row, "tolerance"] + 0.05)     # now better: a warning only
    base.to_csv(moved, index=False)
    result = bench(ws, "check", "tiny", "--baseline", str(moved))
    assert result.exit_code == 0 and "1 warn" in result.output


def test_baseline_export_and_import_round_trip(ws, tmp_path):
    assert bench(ws, "baseline", "save", "b", "--sweep", "tiny").exit_code == 0
    out = tmp_path / "b.csv"
    assert bench(ws, "baseline", "export", "b", str(out)).exit_code == 0
    exported = pd.read_csv(out)
    assert {"key", "metric", "value", "tolerance", "attack", "defense", "seed"} <= set(exported.columns)
    assert bench(ws, "baseline", "import", str(out), "--name", "b2").exit_code == 0
    result = bench(ws, "check", "tiny", "--baseline", "b2")
    assert result.exit_code == 0 and "0 fail" in result.output
    result = bench(ws, "check", "tiny", "--baseline", "nope")
    assert result.exit_code == 2 and "no baseline 'nope'" in result.output


def test_the_gate_marks_a_backdoor_that_did_not_take_everywhere(ws, tmp_path):
    out = tmp_path / "out"
    result = bench(ws, "report", "weak", "--format", "html,csv,tex", "--out", str(out))
    assert result.exit_code == 0, result.output
    html = (out / "weak.html").read_text()
    assert 'class="best' not in html and html.count('<sup class="gate">‡</sup>') == 4     # Before and FT x 2
    assert "‡ attack did not take" in html
    table = pd.read_csv(out / "weak.csv")
    assert (table["gate"] == "attack did not take").all() and table["mark"].isna().all()
    assert r"\ddag" in (out / "weak.tex").read_text()
    exported = pd.read_csv(io.StringIO(bench(ws, "export", "--sweep", "weak").stdout))
    assert (exported["gate"] == "attack did not take").all()
    assert exported.loc[exported["defense"] == "ft", "asr_delta"].round(4).tolist() == [-0.48, -0.49]
    tiny = pd.read_csv(io.StringIO(bench(ws, "export", "--sweep", "tiny").stdout))
    assert (tiny["gate"] == "ok").all()
    key = exported.loc[exported["defense"] == "ft", "key"].iloc[0]
    assert "gate: attack did not take" in bench(ws, "show", key[:16]).output
    storage = Storage(default_url(ws))                       # the table 'bench sweep' prints at the end
    assert (summary_table(cells_frame(storage, "weak"))["gate"] == "attack did not take").all()
    assert "gate" not in summary_table(cells_frame(storage, "tiny"))


def test_check_never_pairs_another_sweeps_cells_by_label(ws, tmp_path):
    csv = tmp_path / "tiny.csv"
    assert bench(ws, "baseline", "save", "t", "--sweep", "tiny", "--out", str(csv)).exit_code == 0
    base = pd.read_csv(csv)
    assert (base["sweep"] == "tiny").all()
    base["key"] = base["key"].str[::-1]                 # every key moved (as when a plugin gains an option)
    moved = tmp_path / "moved.csv"
    base.to_csv(moved, index=False)
    same = bench(ws, "check", "tiny", "--against", str(moved))      # same sweep: matched on its labels
    assert same.exit_code == 0 and "4 cells: 0 fail, 0 insufficient, 0 warn, 4 pass" in same.output
    assert "not in the baseline" not in same.output
    other = bench(ws, "check", "weak", "--against", str(moved))     # same labels, other settings: never paired
    assert "4 cells: 0 fail, 4 insufficient, 0 warn, 0 pass" in other.output
    assert "4 cells of the sweep are not in the baseline" in other.output


def test_report_and_check_with_claims(ws, tmp_path):
    claims = tmp_path / "c.yaml"
    claims.write_text("paper: t\nclaims:\n"
                      "  - {id: ft-removes, source: s, quote: 'FT removes it.', check: {kind: threshold, metric: asr,"
                      " subject: {defense: ft}, op: '<', value: 0.3}}\n"
                      "  - {id: ft-keeps-ba, source: s, quote: 'FT keeps BA.', check: {kind: difference, metric: ba,"
                      " subject: {defense: ft}, other: {defense: none}, op: '>', value: -0.01, k: 0}}\n")
    result = bench(ws, "report", "tiny", "--claims", str(claims), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    html = (tmp_path / "out" / "tiny.html").read_text()
    assert html.index('id="claims"') < html.index('id="results"')
    assert '<tr class="holds" data-claim="ft-removes">' in html and '<tr class="fails" data-claim="ft-keeps-ba">' in html
    assert r"\textbf{fails}: \texttt{ft-keeps-ba}" in (tmp_path / "out" / "tiny.tex").read_text()
    assert pd.read_csv(tmp_path / "out" / "tiny_claims.csv")["verdict"].tolist() == ["holds", "fails"]
    check = bench(ws, "check", "tiny", "--claims", str(claims))
    assert check.exit_code == 1 and "[fails] ft-keeps-ba" in check.output
    weak = bench(ws, "check", "weak", "--claims", str(claims))       # gated: neither holds nor fails
    assert weak.exit_code == 0 and "2 claims: 0 holds, 0 fails, 2 not testable" in weak.output
