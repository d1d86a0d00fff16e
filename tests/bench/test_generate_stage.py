"""The generate stage: an attack's trigger generator is trained once per (dataset, seed, generator config) and
reused by every poison rate, defense and later sweep (test plugin ``toy_generated``, tests/helpers)."""
from __future__ import annotations

import pytest
import yaml
from benchtest import generate_jobs, tiny_sweep
from click.testing import CliRunner

from bench import budget
from bench.cli import main
from bench.db.storage import Storage, default_url
from bench.graph import build_graph
from bench.runner import RunOptions, run_sweep
from bench.sweep import build_sweep


def toy(rate=0.2, strength=0.5):
    return {"name": "toy_generated", "target": 0, "poison_rate": rate, "strength": strength}


def test_poison_rates_share_a_generator_and_generator_fields_split_it():
    shared = generate_jobs(toy(0.1), toy(0.3))
    assert len(shared) == 1 and shared[0].config["generator"] == {
        "name": "toy_generated", "strength": 0.5, "gen_epochs": 2, "gen_batch_size": 32}
    assert len(generate_jobs(toy(0.1), toy(0.1, strength=0.3))) == 2
    seeds = build_sweep(tiny_sweep(attacks=[toy()], defenses=["none"], seeds=(0, 1)), "t.yaml").cells
    assert len(build_graph(seeds).by_stage()["generate"]) == 2
    assert generate_jobs({"name": "badnets", "target": 0}) == []      # badnets has no generator


def test_a_second_sweep_reuses_the_trained_generator(tmp_path, monkeypatch):
    log = tmp_path / "log"
    monkeypatch.setenv("BENCH_TEST_LOG", str(log))
    (tmp_path / "ws").mkdir()
    storage = Storage(default_url(tmp_path / "ws"))
    first = run_sweep(build_sweep(tiny_sweep("a", attacks=[toy(0.1), toy(0.3)]), "a.yaml"), storage,
                      tmp_path / "ws" / "artifacts", RunOptions(workers=0, progress=False))
    assert first.ok and log.read_text().splitlines() == ["generate 0 0.5"]
    assert first.by_stage["generate"] == {"jobs": 1, "done": 1}
    second = run_sweep(build_sweep(tiny_sweep("b", attacks=[toy(0.25)], defenses=["none"]), "b.yaml"), storage,
                       tmp_path / "ws" / "artifacts", RunOptions(workers=0, progress=False))
    assert second.ok and log.read_text().splitlines() == ["generate 0 0.5"]     # no second training
    from bench.results import cells_frame

    frame = cells_frame(storage, "b")
    assert frame["state"].tolist() == ["done"] and frame["generate_s"].notna().all()
    assert 0 <= frame["asr"].iloc[0] <= 1                                     # evaluate stamped via the generator


def test_dry_run_lists_the_generate_stage_with_its_steps(tmp_path, monkeypatch):
    monkeypatch.setitem(budget.SCHEDULES["attack"], "toy_generated",
                        {"gen_epochs": budget.Stage("train", "gen_batch_size")})
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"name": "p", "scale": "mini", "dataset": {"train_limit": 48},
                                                     "budget": {"attack": {"toy_generated": {"gen_epochs": 3}}}}))
    doc = tiny_sweep(attacks=[toy()], defenses=["none"])
    cell = build_sweep(doc, "t.yaml", profile="p", profiles_dir=tmp_path).cells[0]
    assert (cell.attack["gen_epochs"], cell.paper["attack"]["gen_epochs"]) == (3, 2)   # 2 x 96/48 = 4, capped at 3
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump(doc))
    out = CliRunner().invoke(main, ["sweep", str(sweep), "--dry-run", "--workspace", str(tmp_path / "ws")])
    assert out.exit_code == 0, out.output
    assert "generate" in out.output and "toy_generated generator" in out.output
    line = next(x for x in out.output.splitlines() if "toy_generated generator" in x)
    assert "6 /         6 steps" in line                                  # 2 epochs x ceil(96 / 32)


def test_a_checkpoint_cell_refuses_a_generated_attack(tmp_path):
    from bench.config import ConfigError
    from bench.graph import cell_jobs

    cell = build_sweep(tiny_sweep(attacks=[toy()], defenses=["none"]), "t.yaml").cells[0]
    object.__setattr__(cell, "model", {**cell.model, "checkpoint": "x.pt", "sha256": "0" * 64})
    with pytest.raises(ConfigError, match="generator"):
        cell_jobs(cell)
