"""Job keys and the shape of the job graph."""
from __future__ import annotations

import hashlib

from benchtest import tiny_sweep

from bench.config import digest
from bench.graph import build_graph, cell_jobs, make_job
from bench.sweep import build_sweep


def test_golden_key_for_a_frozen_config():
    # If this changes, every cached artifact of every user is invalidated: only change it on purpose.
    job = make_job("train", "train", 1, {"model": {"name": "small_cnn", "width": 16}, "seed": 0,
                                         "recipe": {"name": "quick", "epochs": 30, "lr": 0.05}}, None)
    canonical = ('{"config":{"model":{"name":"small_cnn","width":16},"recipe":{"epochs":30,"lr":0.05,'
                 '"name":"quick"},"seed":0},"parent":null,"plugin":"train","stage":"train","version":1}')
    assert job.key == hashlib.sha256(canonical.encode()).hexdigest()
    assert job.key == "bad25cdde4430623a32658e40672fe2012a366c2c3895491988103028de3c298"
    assert digest({"b": 1, "a": [1, 2.5]}) == digest({"a": [1, 2.5], "b": 1})


def test_key_depends_on_parent_and_version():
    a = make_job("poison", "none", 1, {"x": 1}, None)
    b = make_job("poison", "none", 2, {"x": 1}, None)
    assert a.key != b.key
    assert make_job("train", "train", 1, {}, a).key != make_job("train", "train", 1, {}, b).key


def test_backdoored_model_shared_across_defenses_and_ratios():
    s = build_sweep(tiny_sweep(defenses=["none", "ft", {"name": "ft", "lr": 0.5}], clean_ratio=[0.05, 0.1]), "f")
    g = build_graph(s.cells)
    stages = g.by_stage()
    assert len(s.cells) == 6
    assert len(stages["poison"]) == 1 and len(stages["train"]) == 1
    # 'none' needs no clean subset, so its key ignores the ratio: 1 + 2 x 2 defend jobs
    assert len(stages["defend"]) == 5 and len(stages["evaluate"]) == 5


def test_ac_and_ss_read_the_cached_backdoored_model_unless_they_ask_for_another_teacher():
    """AC and SS cluster a classifier trained on the poisoned set with the cell's recipe: the model the cell
    without a defense trains. Their defend jobs sit below that one train job instead of training it again; a
    teacher override (LfD §5's 80 epochs) makes AC train its own below the poison job."""
    defenses = ["none", {"name": "ac", "target_class": 0}, {"name": "ss", "target_class": 0},
                {"name": "ac", "teacher_epochs": 3}]
    g = build_graph(build_sweep(tiny_sweep(defenses=defenses), "f").cells)
    stages = g.by_stage()
    (train,), (poison,) = stages["train"], stages["poison"]
    parents = {(j.plugin, j.config["defense"].get("teacher_epochs")): j.parent for j in stages["defend"]}
    assert parents == {("none", None): train.key, ("ac", None): train.key, ("ss", None): train.key,
                       ("ac", 3): poison.key}


def test_defense_hyperparameter_does_not_change_train_key():
    a = cell_jobs(build_sweep(tiny_sweep(defenses=[{"name": "ft", "lr": 0.1}]), "f").cells[0])
    b = cell_jobs(build_sweep(tiny_sweep(defenses=[{"name": "ft", "lr": 0.2}]), "f").cells[0])
    assert [j.key for j in a[:2]] == [j.key for j in b[:2]]
    assert a[2].key != b[2].key


def test_data_root_is_not_part_of_the_key():
    d1, d2 = tiny_sweep(), tiny_sweep()
    d2["grid"]["dataset"] = {**d2["grid"]["dataset"], "root": "/somewhere/else"}
    k1 = [j.key for j in cell_jobs(build_sweep(d1, "f").cells[0])]
    k2 = [j.key for j in cell_jobs(build_sweep(d2, "f").cells[0])]
    assert k1 == k2


def test_chain_order_and_stage_names():
    jobs = cell_jobs(build_sweep(tiny_sweep(defenses=["ft"]), "f").cells[0])
    assert [j.stage for j in jobs] == ["poison", "train", "defend", "evaluate"]
    assert all(j.parent == p.key for p, j in zip(jobs, jobs[1:]))
    assert jobs[2].chain["clean_ratio"] == 0.1 and jobs[2].chain["attack"]["name"] == "badnets"
