"""The prepare stage: a defense's shared preparation (seed 002's SimCLR embedding) is computed once per (data,
seed, model, its ``prepare_fields``) and handed to every defend job that shares it (kNN, Energy, kNN+Energy)."""
from __future__ import annotations

import torch
import yaml
from benchtest import tiny_sweep
from click.testing import CliRunner

from bench.cli import main
from bench.db.storage import Storage, default_url
from bench.graph import build_graph
from bench.runner import RunOptions, run_sweep
from bench.store import ArtifactStore
from bench.sweep import build_sweep


def ssl(**opts):
    return {"name": "ssl_cleanse", "simclr_epochs": 1, "simclr_batch_size": 32, "classifier": "ce", **opts}


def graph(*defenses, seeds=(0,)):
    return build_graph(build_sweep(tiny_sweep(defenses=list(defenses), seeds=seeds), "t.yaml").cells)


def test_filters_share_one_embedding_and_its_fields_split_it():
    g = graph(ssl(filter="knn"), ssl(filter="energy"), ssl(filter="knn_energy", relabelling=False))
    prepare, defend = g.by_stage()["prepare"], g.by_stage()["defend"]
    assert len(prepare) == 1 and len(defend) == 3
    assert {j.parent for j in defend} == {prepare[0].key}
    assert prepare[0].config["prepare"]["simclr_epochs"] == 1 and "filter" not in prepare[0].config["prepare"]
    assert len(graph(ssl(), ssl(simclr_epochs=2)).by_stage()["prepare"]) == 2       # an embedding field splits it
    assert len(graph(ssl(), seeds=(0, 1)).by_stage()["prepare"]) == 2
    assert graph("none", {"name": "ft", "epochs": 1}).by_stage()["prepare"] == []   # no prepare_fields: no stage


def test_a_sweep_trains_the_embedding_once_and_every_filter_reads_it(tmp_path, monkeypatch):
    (tmp_path / "ws").mkdir()
    storage = Storage(default_url(tmp_path / "ws"))
    doc = tiny_sweep("a", defenses=[ssl(filter="knn"), ssl(filter="energy")])
    result = run_sweep(build_sweep(doc, "a.yaml"), storage, tmp_path / "ws" / "artifacts",
                       RunOptions(workers=0, progress=False))
    assert result.ok and result.by_stage["prepare"] == {"jobs": 1, "done": 1}
    g = build_graph(build_sweep(doc, "a.yaml").cells)
    key = g.by_stage()["prepare"][0].key
    store = ArtifactStore(tmp_path / "ws" / "artifacts")
    z = store.get(storage.artifacts([key])[key]["prepared"])["embedding"]
    assert z.shape == (96, 128) and torch.allclose(z.norm(dim=1), torch.ones(96), atol=1e-4)
    from bench.results import cells_frame

    frame = cells_frame(storage, "a")
    assert frame["state"].tolist() == ["done", "done"] and frame["prepare_s"].notna().all()
    # the runner's health check measures each cell's embedding: the same z gives the same kNN accuracy
    assert frame["encoder_knn_acc"].nunique() == 1
    # a later sweep with a third filter reuses the stored embedding: a second SimCLR training would fail here
    from defenses.ssl_cleanse import SSLCleanse

    def no_second_training(self, ctx):
        raise AssertionError("the embedding was trained again")

    monkeypatch.setattr(SSLCleanse, "prepare", no_second_training)
    second = run_sweep(build_sweep(tiny_sweep("b", defenses=[ssl(filter="knn_energy")]), "b.yaml"), storage,
                       tmp_path / "ws" / "artifacts", RunOptions(workers=0, progress=False))
    assert second.ok and cells_frame(storage, "b")["state"].tolist() == ["done"]


def test_dry_run_lists_the_shared_stage_with_its_own_steps(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump(tiny_sweep(defenses=[ssl(filter="knn"), ssl(filter="energy")])))
    out = CliRunner().invoke(main, ["sweep", str(sweep), "--dry-run", "--workspace", str(tmp_path / "ws")])
    assert out.exit_code == 0, out.output
    stage = next(x for x in out.output.splitlines() if x.strip().startswith("prepare") and "jobs" in x)
    assert stage.split()[1] == "1"
    shared = [x for x in out.output.splitlines() if "ssl_cleanse (shared)" in x]
    assert len(shared) == 1 and "3 /         3 steps" in shared[0]          # 1 SimCLR epoch x ceil(96 / 32)
