"""The runner end to end on tiny data: caching, failure isolation, crash-resume, concurrent sweeps."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml
from benchtest import REPO, tiny_sweep

from bench.db.storage import Storage, default_url
from bench.runner import RunOptions, run_sweep
from bench.sweep import build_sweep


def run(doc, ws: Path, **opts):
    storage = Storage(default_url(ws)) if (ws.mkdir(parents=True, exist_ok=True) or True) else None
    summary = run_sweep(build_sweep(doc, "t.yaml"), storage, ws / "artifacts",
                        RunOptions(workers=0, progress=False, **opts))
    return storage, summary


def runs_by_stage(storage: Storage) -> Counter:
    from sqlalchemy import select

    from bench.db.models import JobRow, RunRow
    with storage.session_scope() as s:
        return Counter(s.scalars(select(JobRow.stage).join(RunRow, RunRow.job_key == JobRow.key)))


def test_sweep_runs_stores_metrics_and_second_run_is_cached(tmp_path):
    storage, summary = run(tiny_sweep(), tmp_path / "ws")
    assert summary.ok and summary.ran == 6 and summary.cached == 0      # poison, train, 2 defend, 2 evaluate
    from bench.results import cells_frame
    frame = cells_frame(storage, "tiny")
    assert len(frame) == 2 and set(frame["state"]) == {"done"}
    assert frame["asr_n"].tolist() == [32, 32]                           # non-target test images of 48
    assert frame["ba_n"].tolist() == [48, 48] and frame["train_s"].notna().all()
    assert ((frame["ba"] >= 0) & (frame["ba"] <= 1)).all()
    _, again = run(tiny_sweep(), tmp_path / "ws")
    assert again.ran == 0 and again.cached == 6
    assert storage.counts()["runs"] == 6


def test_adding_a_defense_to_a_finished_sweep_trains_nothing(tmp_path):
    storage, _ = run(tiny_sweep(), tmp_path / "ws")
    before = runs_by_stage(storage)
    _, summary = run(tiny_sweep(defenses=["none", {"name": "ft", "epochs": 1, "milestones": []},
                                          {"name": "ft", "epochs": 2, "milestones": []}]), tmp_path / "ws")
    after = runs_by_stage(storage)
    assert summary.ran == 2
    assert after["train"] == before["train"] == 1 and after["poison"] == before["poison"] == 1
    assert after["defend"] == 3 and after["evaluate"] == 3


def test_a_failing_defense_is_recorded_and_the_sweep_goes_on(tmp_path):
    doc = tiny_sweep(defenses=["none", {"name": "explode", "message": "kaboom"}])
    storage, summary = run(doc, tmp_path / "ws")
    assert [f["plugin"] for f in summary.failed] == ["explode"] and summary.blocked == 1
    assert "kaboom" in summary.failed[0]["error"]
    key = summary.failed[0]["key"]
    detail = storage.job_detail(key)
    assert detail["state"] == "failed" and "RuntimeError: kaboom" in detail["runs"][0]["traceback"]
    from bench.results import cells_frame
    frame = cells_frame(storage, "tiny").set_index("defense")
    assert frame.loc["none", "state"] == "done" and frame.loc["explode", "state"] == "pending"
    _, again = run(doc, tmp_path / "ws")                  # failed jobs stay failed without --retry-failed
    assert again.ran == 0 and len(again.failed) == 1
    _, retried = run(doc, tmp_path / "ws", retry_failed=True)
    assert len(retried.failed) == 1 and [r["attempt"] for r in storage.job_detail(key)["runs"]] == [1, 2]


def test_missing_artifact_is_recomputed(tmp_path):
    storage, _ = run(tiny_sweep(), tmp_path / "ws")
    for p in (tmp_path / "ws" / "artifacts").rglob("model.pt"):
        p.write_bytes(b"corrupted")                         # every stored model is now wrong
    _, summary = run(tiny_sweep(defenses=["none", {"name": "ft", "epochs": 2, "milestones": []}]), tmp_path / "ws")
    assert summary.ok
    assert runs_by_stage(storage)["train"] == 2             # the backdoored model was trained again
    statuses = Counter(r["status"] for rs in all_runs(storage).values() for r in rs)
    assert statuses["superseded"] >= 1 and statuses["failed"] == 0


def write_sweep(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def bench_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.cli", *args]


def env_for(ws: Path, log: Path | None = None) -> dict:
    env = {**os.environ, "BENCH_WORKSPACE": str(ws), "PYTHONPATH": os.environ["PYTHONPATH"] + os.pathsep + str(REPO)}
    if log:
        env["BENCH_TEST_LOG"] = str(log)
    return env


def succeeded_runs(storage: Storage) -> int:
    return sum(r["status"] == "succeeded" for k in storage.find_jobs("") for r in storage.runs_of(k))


def all_runs(storage: Storage) -> dict[str, list[dict]]:
    from sqlalchemy import select

    from bench.db.models import JobRow
    with storage.session_scope() as s:
        keys = list(s.scalars(select(JobRow.key)))
    return {k: storage.runs_of(k) for k in keys}


def test_sigkill_mid_sweep_then_rerun_finishes_without_duplicates(tmp_path):
    ws = tmp_path / "ws"
    doc = tiny_sweep(defenses=[{"name": "sleep", "seconds": 1.0}], seeds=[0, 1, 2, 3])
    path = write_sweep(tmp_path, doc)
    proc = subprocess.Popen(bench_cmd("sweep", str(path), "--workers", "1", "--no-progress"), env=env_for(ws),
                            cwd=REPO, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    db = ws / "bench.db"
    deadline = time.time() + 120
    while time.time() < deadline:                         # wait until some jobs are done, then kill hard
        if db.exists():
            try:
                if succeeded_runs(Storage(default_url(ws))) >= 5:
                    break
            except Exception:  # the schema may be half-created at the very first moment
                pass
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    storage = Storage(default_url(ws))
    first = succeeded_runs(storage)
    assert 5 <= first < 16, "the kill should land mid-sweep"
    time.sleep(2)                                         # the orphaned worker notices and exits
    out = subprocess.run(bench_cmd("sweep", str(path), "--workers", "1", "--no-progress"), env=env_for(ws),
                         cwd=REPO, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    runs = all_runs(storage)
    assert len(runs) == 16                                 # 4 seeds x (poison, train, defend, evaluate)
    for key, rs in runs.items():
        assert sum(r["status"] == "succeeded" for r in rs) == 1, (key, rs)
        assert all(r["status"] in ("succeeded", "abandoned") for r in rs)
    from bench.results import cells_frame
    frame = cells_frame(storage)
    assert len(frame) == 4 and frame["ba"].notna().all()
    # no duplicated metric rows: poison (2) + evaluate (3) metrics per seed, once each
    assert storage.counts()["metrics"] == 4 * (2 + 3)


def test_two_sweep_processes_never_run_the_same_job(tmp_path):
    ws, log = tmp_path / "ws", tmp_path / "calls.log"
    doc = tiny_sweep(defenses=[{"name": "sleep", "seconds": 1.0}], seeds=[0, 1, 2, 3, 4, 5])
    path = write_sweep(tmp_path, doc)
    Storage(default_url(ws.mkdir(parents=True) or ws))      # create the schema once, before the race
    procs = [subprocess.Popen(bench_cmd("sweep", str(path), "--workers", "0", "--no-progress"),
                              env=env_for(ws, log), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _ in range(2)]
    outs = [p.communicate(timeout=240)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    calls = [line.split() for line in log.read_text().splitlines()]
    assert sorted(int(c[2]) for c in calls) == [0, 1, 2, 3, 4, 5]      # each defend ran exactly once
    storage = Storage(default_url(ws))
    assert all(len(rs) == 1 and rs[0]["status"] == "succeeded" for rs in all_runs(storage).values())
    assert len({c[0] for c in calls}) == 2, "both processes should have done some of the work"


def test_a_cells_chain_names_its_own_poison_and_train_jobs_not_the_clean_surrogates(tmp_path):
    """CL trains a clean surrogate (poison 'none' -> train) above its own poison stage; the cell's chain (stage
    times in exports, scores in figures) must point at the nearest job of each stage."""
    storage, summary = run(tiny_sweep(attacks=[{"name": "cl", "target": 0, "poison_rate": 0.5, "steps": 1}],
                                      defenses=["none"]), tmp_path / "ws")
    assert summary.ok
    from sqlalchemy import select

    from bench.db.models import JobRow

    with storage.session_scope() as s:
        plugin = dict(s.execute(select(JobRow.key, JobRow.plugin)).all())
    chain = storage.cells("tiny")[0]["chain"]
    assert plugin[chain["poison"]] == "cl" and plugin[chain["train"]] == "train"
    assert plugin[storage.job_detail(chain["train"])["parents"][0]["key"]] == "cl"


def test_threads_option_sets_the_workers_threads_and_the_run_says_so(tmp_path):
    import torch
    from sqlalchemy import select

    from bench.db.models import RunRow
    from bench.runner import device_slots

    assert [t for _, _, t in device_slots(RunOptions(workers=2, device="cpu"))] == [1, 1]
    assert [t for _, _, t in device_slots(RunOptions(workers=1, device="cpu", threads=2))] == [2]
    before = torch.get_num_threads()
    storage, summary = run(tiny_sweep(), tmp_path / "ws", threads=2, device="cpu")
    assert summary.ok and torch.get_num_threads() == before          # restored after each job
    with storage.session_scope() as s:
        assert set(s.scalars(select(RunRow.device))) == {"cpu (2 threads)"}
    storage, _ = run(tiny_sweep(defenses=["none", {"name": "ft", "epochs": 1, "milestones": []}]), tmp_path / "w1",
                     device="cpu")
    with storage.session_scope() as s:
        assert set(s.scalars(select(RunRow.device))) == {"cpu"}


def test_threads_below_one_is_refused_with_exit_2_before_anything_is_written(tmp_path):
    from click.testing import CliRunner

    from bench.cli import main

    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(tiny_sweep()))
    ws = tmp_path / "ws"
    result = CliRunner().invoke(main, ["sweep", str(path), "--threads", "0", "--workspace", str(ws), "--no-progress"])
    assert result.exit_code == 2 and "'--threads'" in result.output and "expected 1 or more" in result.output
    assert not ws.exists()
