"""The CI regression check: run sweeps/ci_digits.yaml (BadNets x none/FT on digits, two seeds) into a fresh
workspace and compare it with the committed baseline reports/baselines/ci_digits.csv through `bench check`.

The sweep is seeded end to end; two runs on one machine give bit-identical metrics, and the tolerances (BA 1,
ASR 3 points, widened to 2x the seed spread; one digits test image is 0.28 points) absorb the small float
differences another CPU may bring. About 25 s on 2 idle CPU cores.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from bench.cli import main

ROOT = Path(__file__).resolve().parents[2]
SWEEP = ROOT / "sweeps" / "ci_digits.yaml"
BASELINE = ROOT / "reports" / "baselines" / "ci_digits.csv"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    # CPU float reductions depend on the thread count, and other test modules set it (1 or 2) at import: pin
    # the count the baseline was made with, so the check sees the same arithmetic whatever ran before.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ws = tmp_path_factory.mktemp("ci") / "ws"
        result = CliRunner().invoke(main, ["sweep", str(SWEEP), "--workspace", str(ws), "--workers", "0"])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return ws


def check(ws, against):
    return CliRunner().invoke(main, ["check", "ci_digits", "--against", str(against), "--workspace", str(ws),
                                     "--verbose"])


def test_the_committed_baseline_covers_the_sweep():
    base = pd.read_csv(BASELINE)
    assert len(base) == 12                                      # 4 cells (none/ft x 2 seeds) x BA, ASR, RA
    assert set(base["metric"]) == {"ba", "asr", "ra"} and set(base["defense"]) == {"none", "ft"}
    assert (base["tolerance"] >= base["metric"].map({"ba": 0.01, "asr": 0.03, "ra": 0.03})).all()
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
