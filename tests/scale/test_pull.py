"""The pull worker (``bench worker``) as real processes: on a PostgreSQL server two workers never run a job twice,
and a job whose worker was SIGKILLed is re-run exactly once after the grace period; on SQLite, SIGUSR1 finishes
the current job and SIGTERM gives it back.  Every run records host, device and code version."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from benchtest import REPO, tiny_sweep
from click.testing import CliRunner

from bench.cli import main
from bench.db.storage import Storage, default_url
from bench.launch.pull import task_from_db
from bench.runner import RunOptions, Scheduler, register
from bench.sweep import build_sweep


def sleep_sweep(name: str, seconds: float, seeds) -> dict:
    return tiny_sweep(name=name, defenses=[{"name": "sleep", "seconds": seconds}], seeds=seeds)


def start_worker(url: str, ws: Path, *args: str, log: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "BENCH_WORKSPACE": str(ws)}
    if log:
        env["BENCH_TEST_LOG"] = str(log)
    return subprocess.Popen([sys.executable, "-m", "bench.cli", "worker", "--db", url, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(cond, timeout: float = 90.0, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def running_defend(storage: Storage, sweep: str):
    keys = [c["chain"]["defend"] for c in storage.cells(sweep)]
    return next((s for s in storage.job_states(keys).values() if s.state == "running"), None)


def all_runs(storage: Storage) -> dict[str, list[dict]]:
    return {k: storage.runs_of(k) for c in storage.cells() for k in c["chain"].values()}


def assert_provenance(runs: dict[str, list[dict]]) -> None:
    for rs in runs.values():
        for r in rs:
            assert r["host"] == socket.gethostname() and r["device"] == "cpu"
            assert r["git_commit"] or r["bench_version"]


def test_worker_rebuilds_each_task_from_the_database(tmp_path):
    storage = Storage(default_url(tmp_path))
    graph = register(build_sweep(tiny_sweep(attacks=[{"name": "badnets", "target": 0, "poison_rate": 0.2}],
                                            defenses=["none", "ac"]), "t.yaml"), storage)
    sched = Scheduler(graph, storage, tmp_path / "artifacts", RunOptions(workers=0))
    for job in graph.jobs.values():
        planned, pulled = sched.task(job), task_from_db(storage, job.key)
        assert (pulled.stage, pulled.lineage, pulled.inputs) == (planned.stage, planned.lineage, planned.inputs)
        assert pulled.chain == json.loads(json.dumps(planned.chain))


def test_worker_help_and_unknown_sweep(tmp_path):
    assert "--until-empty" in CliRunner().invoke(main, ["worker", "--help"]).output
    Storage(default_url(tmp_path))
    bad = CliRunner().invoke(main, ["worker", "--workspace", str(tmp_path), "--sweep", "nope"])
    assert bad.exit_code == 2 and "no sweep 'nope'" in bad.output


@pytest.mark.servers
def test_two_workers_on_postgres_never_run_a_job_twice(pg_url, tmp_path):
    storage, log = Storage(pg_url), tmp_path / "calls.log"
    procs = [start_worker(pg_url, tmp_path / "ws", "--poll", "0.2", log=log) for _ in range(2)]
    for p in procs:                                  # both are up (torch imported) and waiting for work
        assert p.stdout.readline().startswith("worker ")
    register(build_sweep(sleep_sweep("two", 1.0, range(4)), "t.yaml"), storage)
    wait_for(lambda: storage.progress("two")["done"] == 16, timeout=180, what="the sweep to finish")
    for p in procs:
        p.send_signal(signal.SIGTERM)                # idle: exits at once
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    calls = [line.split() for line in log.read_text().splitlines()]
    assert sorted(int(c[2]) for c in calls) == [0, 1, 2, 3]              # each defend ran exactly once
    assert len({c[0] for c in calls}) == 2, "both workers should have run some defends"
    runs = all_runs(storage)
    assert len(runs) == 16 and all(len(rs) == 1 and rs[0]["status"] == "succeeded" for rs in runs.values())
    assert_provenance(runs)
    assert storage.progress("two") == {"pending": 0, "running": 0, "done": 16, "failed": 0, "jobs": 16}


@pytest.mark.servers
def test_sigkilled_worker_leaves_a_job_rerun_exactly_once_after_the_grace(pg_url, tmp_path):
    storage, log, ws = Storage(pg_url), tmp_path / "calls.log", tmp_path / "ws"
    register(build_sweep(sleep_sweep("kill", 3.0, [0]), "t.yaml"), storage)
    beat = ["--heartbeat", "0.3", "--grace", "3", "--poll", "0.2", "--until-empty"]
    victim = start_worker(pg_url, ws, *beat, log=log)
    held = wait_for(lambda: running_defend(storage, "kill"), what="the defend job to start")
    time.sleep(0.8)                                     # a few heartbeats
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    last_beat = storage.job_states([held.key])[held.key].heartbeat
    # two workers race for the stale job: exactly one of them re-runs it, and not before the grace period
    rescuers = [start_worker(pg_url, ws, *beat, log=log) for _ in range(2)]
    outs = [p.communicate(timeout=180)[0] for p in rescuers]
    assert [p.returncode for p in rescuers] == [0, 0], outs
    runs = storage.runs_of(held.key)
    assert [(r["attempt"], r["status"]) for r in runs] == [(1, "abandoned"), (2, "succeeded")]
    assert (runs[1]["started_at"] - last_beat).total_seconds() >= 3.0
    pids = [line.split()[0] for line in log.read_text().splitlines()]
    assert len(pids) == 2 and pids[0] == str(victim.pid) and pids[1] != pids[0]
    others = {k: rs for k, rs in all_runs(storage).items() if k != held.key}
    assert len(others) == 3 and all([r["status"] for r in rs] == ["succeeded"] for rs in others.values())
    assert storage.job_detail(held.key)["state"] == "done"


def test_sigusr1_finishes_the_job_and_sigterm_releases_it(tmp_path):
    ws = tmp_path / "ws"
    url = default_url(ws.mkdir() or ws)
    storage = Storage(url)
    register(build_sweep(sleep_sweep("usr1", 2.0, [0]), "t.yaml"), storage)
    register(build_sweep(sleep_sweep("term", 60.0, [1]), "t.yaml"), storage)
    worker = start_worker(url, ws, "--sweep", "usr1", "--poll", "0.2")     # would wait for work forever
    held = wait_for(lambda: running_defend(storage, "usr1"), what="the defend job to start")
    worker.send_signal(signal.SIGUSR1)
    out = worker.communicate(timeout=60)[0]
    assert worker.returncode == 0 and "finished the current job" in out, out
    evaluate = storage.cells("usr1")[0]["key"]
    states = storage.job_states([held.key, evaluate])
    assert states[held.key].state == "done" and states[evaluate].state == "pending"   # nothing new was claimed

    worker = start_worker(url, ws, "--sweep", "term", "--poll", "0.2")
    held = wait_for(lambda: running_defend(storage, "term"), what="the 60 s defend job to start")
    t0 = time.time()
    worker.send_signal(signal.SIGTERM)
    out = worker.communicate(timeout=30)[0]
    assert worker.returncode == 0 and time.time() - t0 < 10 and "released" in out, out
    state = storage.job_states([held.key])[held.key]
    assert (state.state, state.owner, state.attempts) == ("pending", None, 1)
    run = storage.runs_of(held.key)[0]
    # SIGTERM may land while the job runs or (on a loaded machine) between its claim and its start: either way
    # the run is abandoned with the signal named
    assert run["status"] == "abandoned" and "SIGTERM" in run["error"], run["error"]
