"""The CI regression check: run sweeps/ci_digits.yaml (BadNets x none/FT on digits, two seeds) into a fresh
workspace and compare it with the committed baseline reports/baselines/ci_digits.csv through `bench check`.

The sweep is seeded end to end and every job runs with one CPU thread (bench.train.cpu_threads), so the thread
count, the worker layout and the tests that ran before do not change a metric.  Another CPU's kernels still
can (AVX-512 vs AVX2 sums round differently); the sweep is set where that moves FT's metrics by at most 2.2
points (see sweeps/ci_digits.yaml) and the tolerances (BA 2, ASR 5, RA 5 points) cover it.  About 12 s of CPU.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from bench.cli import main

ROOT = Path(__file__).resolve().parents[2]
SWEEP = ROOT / "sweeps" / "ci_digits.yaml"
BASELINE = ROOT / "reports" / "baselines" / "ci_digits.csv"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws = tmp_path_factory.mktemp("ci") / "ws"
    result = CliRunner().invoke(main, ["sweep", str(SWEEP), "--workspace", str(ws), "--workers", "0"])
    assert result.exit_code == 0, result.output
    return ws


def check(ws, against):
    return CliRunner().invoke(main, ["check", "ci_digits", "--against", str(against), "--workspace", str(ws),
                                     "--verbose"])


def test_the_committed_baseline_covers_the_sweep():
    base = pd.read_csv(BASELINE)
    assert len(base) == 12                                      # 4 cells (none/ft x 2 seeds) x BA, ASR, RA
    assert set(base["metric"]) == {"ba", "asr", "ra"} and set(base["defense"]) == {"none", "ft"}
    assert (base["tolerance"] >= base["metric"].map({"ba": 0.02, "asr": 0.05, "ra": 0.05})).all()
    before = base[(base["defense"] == "none") & (base["metric"] == "asr")]["value"]
    after = base[(base["defense"] == "ft") & (base["metric"] == "asr")]["value"]
    assert before.min() > 0.95 and after.max() < 0.1            # a working backdoor that FT removes


def test_ci_sweep_passes_against_the_committed_baseline(ws):
    result = check(ws, BASELINE)
    assert result.exit_code == 0, result.output
    assert "4 cells: 0 fail, 0 insufficient" in result.output
    assert "not in the baseline" not in result.output           # every cell of the sweep was checked


def test_ci_check_fails_when_a_metric_gets_worse_beyond_tolerance(ws, tmp_path):
    base = pd.read_csv(BASELINE)
    row = base.index[(base["defense"] == "ft") & (base["metric"] == "asr") & (base["seed"] == 0)][0]
    base.loc[row, "value"] -= base.loc[row, "tolerance"] + 0.02      # the baseline ASR was lower: ours is worse
    moved = tmp_path / "moved.csv"
    base.to_csv(moved, index=False)
    result = check(ws, moved)
    assert result.exit_code == 1, result.output
    assert "1 fail" in result.output and "asr" in result.output


def test_ci_check_matches_by_cell_labels_when_the_keys_moved(ws, tmp_path):
    """A new plugin option changes every key; the labels still find the cells (and a cell is not silently
    passed when neither matches)."""
    base = pd.read_csv(BASELINE, dtype={"key": str})
    base["key"] = "moved" + base["key"].str[5:]
    relabelled = tmp_path / "relabelled.csv"
    base.to_csv(relabelled, index=False)
    result = check(ws, relabelled)
    assert result.exit_code == 0 and "0 fail, 0 insufficient" in result.output, result.output
    base["seed"] = base["seed"] + 10                            # neither key nor labels match any more
    base.to_csv(relabelled, index=False)
    result = check(ws, relabelled)
    assert result.exit_code == 0 and "4 cells: 0 fail, 4 insufficient, 0 warn, 0 pass" in result.output
