"""Results that must not mislead: a diverged (NaN) model fails its job, overrides add cells instead of hiding
them, a corrupt artifact shows in --dry-run, a cached run prints no empty bar, exports say their units."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from benchtest import tiny_sweep
from click.testing import CliRunner

from bench.cli import main
from bench.train import Diverged

DIGITS = {"name": "digits"}
TINY_DIGITS = {"name": "small_cnn", "width": 4}


def write(tmp_path, doc) -> str:
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(doc))
    return str(p)


def run(*args: str):
    return CliRunner().invoke(main, [*args])


def exported(*args: str) -> list[dict]:
    result = run("export", "--format", "json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_diverged_fine_tuning_fails_its_job_and_the_sweep_goes_on(tmp_path, workspace):
    """lr 1e9 (typed as YAML 1.2 writes it) turns FT's weights to NaN: that cell fails with the reason, the other
    cells succeed, and no BA/ASR is recorded for the NaN model (it would read as BA 10 %, ASR 100 %)."""
    doc = tiny_sweep(defenses=["none", {"name": "ft", "epochs": 1, "milestones": [], "batch_size": 32}],
                     attacks=["none", {"name": "badnets", "target": 0, "poison_rate": 0.1}])
    doc["grid"]["dataset"], doc["grid"]["model"] = DIGITS, TINY_DIGITS
    result = run("sweep", write(tmp_path, doc), "--workers", "0", "--no-progress", "--set", "defense.ft.lr=1.0e+9")
    assert result.exit_code == 1, result.output
    assert "2 failed" in result.output and "Diverged" in result.output and "non-finite" in result.output
    rows = {(r["attack"], r["defense"]): r for r in exported()}
    done = {k for k, r in rows.items() if r["state"] == "done"}
    assert done == {("none", "none"), ("badnets", "none")}       # the FT cells' defend jobs failed
    assert rows[("badnets", "none")]["asr"] > 0.5 and rows[("none", "none")]["ba"] > 0.3
    assert rows[("none", "ft")].get("asr") is None


def test_evaluation_refuses_a_model_with_a_nan_weight():
    from bench.data.datasets import SyntheticConfig, load_dataset
    from bench.metrics import backdoor_metrics
    from bench.models import create_model
    from bench.registry import ATTACKS

    bundle = load_dataset("synthetic", SyntheticConfig(n_train=16, n_test=8, size=8, num_classes=3))
    entry, cfg = ATTACKS.resolve({"name": "badnets", "target": 0}, "attack")
    model = create_model("small_cnn", 3, 3, 8, bundle.mean, bundle.std, width=4)
    assert {m.name for m in backdoor_metrics(model, bundle.test, entry.obj(cfg, bundle.info(), 0))} >= {"ba"}
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(Diverged, match="refusing to evaluate: the model has 1 non-finite weights"):
        backdoor_metrics(model, bundle.test, entry.obj(cfg, bundle.info(), 0))


def test_set_adds_cells_to_the_sweep_and_says_so(tmp_path, workspace):
    """After `--set seeds=[1]` the seed-0 cells are still listed, exported and reported."""
    path = write(tmp_path, tiny_sweep(defenses=["none"]))
    first = run("sweep", path, "--workers", "0", "--no-progress", "--set", "seeds=[0]")
    assert first.exit_code == 0, first.output
    assert "overrides: --set seeds=[0]\n" in first.output          # a new sweep: there are no earlier cells
    more = run("sweep", path, "--workers", "0", "--no-progress", "--set", "seeds=[1]")
    assert more.exit_code == 0, more.output
    assert "overrides: --set seeds=[1]; these cells are added to sweep 'tiny'" in more.output
    assert sorted(r["seed"] for r in exported("--sweep", "tiny")) == [0, 1]
    assert "2/2" in run("ls").output
    lr = run("sweep", path, "--workers", "0", "--no-progress", "--set", "recipe.lr=1e-3")
    assert lr.exit_code == 0, lr.output
    assert len(exported()) == 3                           # the file's two seeds + the overridden recipe's cell
    # the printed summary averages seeds, never recipes: the lr variant is a row of its own, not a third "seed"
    rows = [line for line in lr.output.splitlines() if " badnets " in line]
    assert len(rows) == 2 and "quick[lr=0.001]" in rows[1] and "quick[lr=0.05]" in rows[0], lr.output


def test_dry_run_names_a_corrupt_artifact_and_a_cached_run_prints_no_bar(tmp_path, workspace):
    path = write(tmp_path, tiny_sweep(defenses=["none"]))
    assert run("sweep", path, "--workers", "0", "--no-progress").exit_code == 0
    cached = run("sweep", path, "--workers", "0")         # progress bar on: nothing to run, so no bar at all
    assert cached.exit_code == 0 and "0 jobs ran, 4 cached" in cached.output and "sweep:" not in cached.output
    for model in Path(workspace, "artifacts").rglob("*model*"):       # the train job's and the defend job's
        model.write_bytes(model.read_bytes()[:-8] + b"corrupt!")
    dry = run("sweep", path, "--dry-run")
    assert dry.exit_code == 0
    assert "train job" in dry.output and "stored artifact missing or corrupt" in dry.output
    train = next(line for line in dry.output.splitlines() if line.strip().startswith("train "))
    assert train.split()[1:] == ["1", "jobs", "0", "cached", "0", "failed", "1", "to", "run"]


def test_export_rounds_says_its_units_and_keeps_config_an_object(tmp_path, workspace):
    path = write(tmp_path, tiny_sweep(defenses=["none"]))
    result = run("sweep", path, "--workers", "0", "--no-progress")
    assert "(scale: full)" in result.output and "BA = clean accuracy" in result.output
    out = run("export", "--format", "json")
    assert "fractions in [0, 1], not percent" in out.stderr
    row = json.loads(out.stdout)[0]
    assert isinstance(row["config"], dict) and row["config"]["attack"]["name"] == "badnets"
    for name in ("ba", "asr", "ra"):
        assert 0 <= row[name] <= 1 and row[name] == round(row[name], 6)
    csv = run("export", "--format", "csv").stdout
    assert all(len(v.split(".")[-1]) <= 6 for v in csv.splitlines()[1].split(",") if v.replace(".", "").isdigit())
