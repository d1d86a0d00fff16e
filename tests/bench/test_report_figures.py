"""Every figure kind of `bench report`, from a tiny database: a real sweep on the synthetic set (two seeds,
defenses none and D-BR with curves on, about ten seconds on 2 CPU cores), then PNG and PDF files for
metric-vs-option ablations (numeric and categorical axes), per-epoch curves, score histograms of clean vs
poisoned samples, and a t-SNE of penultimate features -- through the library and through the CLI."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from benchtest import tiny_sweep
from click.testing import CliRunner

from bench import reports as rp
from bench.cli import main
from bench.cli.options import artifacts_root
from bench.db.storage import Storage, default_url
from bench.results import cells_frame

DBR = {"name": "dbr", "sd_train_epochs": 1, "sd_finetune_epochs": 1, "rounds": 2, "batch_size": 32,
       "sd_batch_size": 32, "lr": [0.001, 0.01]}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    import yaml

    root = tmp_path_factory.mktemp("figures")
    doc = tiny_sweep("figs", defenses=["none", DBR], seeds=(0, 1))
    doc["curves"] = True
    path = root / "figs.yaml"
    path.write_text(yaml.safe_dump(doc))
    ws = root / "ws"
    result = CliRunner().invoke(main, ["sweep", str(path), "--workspace", str(ws), "--workers", "0"])
    assert result.exit_code == 0, result.output
    return ws


def is_png(path, min_bytes=3000):
    data = path.read_bytes()
    width, height = struct.unpack(">II", data[16:24])
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > min_bytes and width > 200 and height > 200


def test_ablation_against_an_option_and_a_categorical_axis(ws, tmp_path):
    frame = cells_frame(Storage(default_url(ws), create=False), "figs")
    png, pdf = rp.ablation_figure(frame, "defense.lr", "asr", tmp_path / "lr", filters={"defense": "dbr"})
    assert is_png(png) and pdf.read_bytes()[:5] == b"%PDF-"
    frame = frame.assign(teacher=["resnet_s1", "resnet_s"] * (len(frame) // 2))     # LfD Fig. 4a-style axis
    png, _ = rp.ablation_figure(frame, "teacher", "ba", tmp_path / "teacher")
    assert is_png(png)


def test_per_epoch_curves_from_the_database(ws, tmp_path):
    storage = Storage(default_url(ws), create=False)
    curves = rp.sweep_curves(storage, "figs")
    dbr = curves[curves["defense"] == "dbr"]
    assert sorted(dbr["step"].unique()) == [1, 2]                    # one point per unlearn/relearn round
    assert {"ba", "asr", "unlearn_loss", "relearn_loss"} <= set(dbr["name"])
    assert dbr.groupby(["defense_variant", "seed", "name"]).size().eq(2).all()    # 2 lr x 2 seeds
    first = rp.curves_figure(curves, tmp_path / "a")
    second = rp.curves_figure(curves, tmp_path / "b")
    assert is_png(first[0]) and [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    with pytest.raises(rp.SpecError, match="curves: true"):
        rp.curves_figure(curves, tmp_path / "c", metrics=("nope",))


def test_score_histograms_of_clean_and_poisoned_samples(ws, tmp_path):
    storage = Storage(default_url(ws), create=False)
    panels = rp.sweep_scores(storage, artifacts_root(ws), "figs")
    assert len(panels) == 4 and {p["defense"] for p in panels} == {"dbr"}   # 'none' returns no scores
    for p in panels:
        assert p["scores"].shape == p["poisoned"].shape == (96,)
        assert 0 < p["poisoned"].sum() < 96
    png, pdf = rp.score_histogram(panels, tmp_path / "fct")
    assert is_png(png) and pdf.stat().st_size > 3000
    with pytest.raises(rp.SpecError, match="per-sample scores"):
        rp.score_histogram([], tmp_path / "none")


def test_tsne_of_penultimate_features_with_poisoned_in_black(ws, tmp_path):
    storage = Storage(default_url(ws), create=False)
    cell = next(c for c in storage.cells("figs") if c["labels"]["defense"] == "none")
    feats = rp.cell_features(storage, artifacts_root(ws), cell, per_class=20, max_poisoned=15)
    n_clean = int((~feats["poisoned"]).sum())
    assert feats["features"].shape == (n_clean + int(feats["poisoned"].sum()), 16)   # small_cnn width 4: 16-d
    assert n_clean == 60 and set(np.unique(feats["labels"])) == {0, 1, 2}          # 20 clean per class
    assert feats["poisoned"].sum() == min(15, int((cell_kind(storage, ws, cell) == 1).sum()))
    png, pdf = rp.tsne_figure(feats["features"], feats["labels"], feats["poisoned"], tmp_path / "tsne")
    again = rp.tsne_figure(feats["features"], feats["labels"], feats["poisoned"], tmp_path / "tsne2")
    assert is_png(png) and png.read_bytes() == again[0].read_bytes()          # seeded t-SNE, stable file


def cell_kind(storage, ws, cell):
    from bench.store import ArtifactStore
    rec = storage.artifacts([cell["chain"]["poison"]])[cell["chain"]["poison"]]["poison"]
    return ArtifactStore(artifacts_root(ws)).get(rec)["kind"]


def test_bench_report_writes_every_figure_kind(ws, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [
        "report", "figs", "--out", str(out), "--format", "html", "--figure", "x=defense.lr,y=asr,defense=dbr",
        "--curves", "ba,asr", "--scores", "--tsne", "defense=none,seed=1", "--workspace", str(ws)])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["figs.html", "figs_asr_vs_defense_lr.pdf", "figs_asr_vs_defense_lr.png", "figs_curves.pdf",
                     "figs_curves.png", "figs_scores.pdf", "figs_scores.png", "figs_tsne0.pdf", "figs_tsne0.png"]
    assert all(is_png(out / n) for n in names if n.endswith(".png"))
    assert (out / "figs.html").read_text().count("data:image/png;base64,") == 4
    result = CliRunner().invoke(main, ["report", "figs", "--out", str(out), "--tsne", "defense=nope",
                                       "--workspace", str(ws)])
    assert result.exit_code == 2 and "no cell of sweep 'figs' matches" in result.output
