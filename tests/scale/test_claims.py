"""Storage.claim_next, the pull workers' claim, on SQLite and on a real PostgreSQL server: readiness, staleness by
the server's clock, the attempt bound, and concurrent claimers that never get the same job."""
from __future__ import annotations

import threading
import time

import pytest
from benchtest import tiny_sweep

from bench.db.storage import RunInfo, Storage, default_url
from bench.graph import Job
from bench.runner import register
from bench.sweep import build_sweep

INFO = RunInfo("w", "cpu", "host", 1, "0123abcd", False, "3", "2", "0")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.servers)])
def db_url(request, tmp_path) -> str:
    if request.param == "postgres":
        return request.getfixturevalue("pg_url")
    return default_url(tmp_path)


def chain_keys(storage: Storage) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for c in storage.cells("tiny"):
        for stage, key in c["chain"].items():
            out.setdefault(stage, [])
            if key not in out[stage]:
                out[stage].append(key)
    return out


def test_claims_follow_the_graph_and_recover_stale_jobs_up_to_the_bound(db_url):
    storage = Storage(db_url)
    register(build_sweep(tiny_sweep(), "t.yaml"), storage)           # poison -> train -> 2 defend -> 2 evaluate
    keys = chain_keys(storage)
    first = storage.claim_next("a", INFO, "tiny", grace_s=60)
    assert (first.stage, first.attempt) == ("poison", 1)
    assert storage.claim_next("b", INFO, "tiny", grace_s=60) is None  # train waits for its parent
    assert storage.claim_next("b", INFO, "other-sweep", grace_s=60) is None
    assert storage.finish_run(first.key, 1, "a", [], [], [], "cpu", None, 0.1)
    train = storage.claim_next("b", INFO, "tiny", grace_s=60)
    assert train.key == keys["train"][0]
    # 'b' goes silent: with a zero grace its heartbeat is already stale by the server's clock
    time.sleep(0.01)
    again = storage.claim_next("c", INFO, "tiny", grace_s=0, max_attempts=2)
    assert (again.key, again.attempt) == (train.key, 2)
    assert not storage.finish_run(train.key, 1, "b", [], [], [], "cpu", None, 0.1)   # b's late result is refused
    assert storage.heartbeat([train.key], "b") == 0 and storage.heartbeat([train.key], "c") == 1
    time.sleep(0.01)
    assert storage.claim_next("d", INFO, "tiny", grace_s=0, max_attempts=2) is None  # out of attempts: given up
    detail = storage.job_detail(train.key)
    assert detail["state"] == "failed"
    assert [r["status"] for r in detail["runs"]] == ["abandoned", "abandoned"]
    assert detail["runs"][-1]["error"].startswith("gave up after 2 attempts")
    assert storage.progress("tiny") == {"pending": 4, "running": 0, "done": 1, "failed": 1, "jobs": 6}


def flat_jobs(n: int) -> list[Job]:
    return [Job(f"{i:064x}", "poison", "none", 1, {"i": i}, None) for i in range(n)]


def test_four_concurrent_claimers_never_get_the_same_job(db_url):
    storage = Storage(db_url)
    jobs = flat_jobs(120)
    storage.register_sweep("flat", "f.yaml", None, "mini", {}, jobs, [])
    claimed: list[list[str]] = [[] for _ in range(4)]

    def claimer(i: int) -> None:
        s = Storage(db_url)
        while (c := s.claim_next(f"w{i}", INFO, "flat")) is not None:
            claimed[i].append(c.key)
            assert s.finish_run(c.key, c.attempt, f"w{i}", [], [], [], "cpu", None, 0.0)
    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    every = [k for c in claimed for k in c]
    assert sorted(every) == sorted(j.key for j in jobs)               # each job claimed exactly once
    assert sum(len(c) > 0 for c in claimed) >= 2
    assert storage.counts()["runs"] == 120
    assert storage.progress("flat")["done"] == 120


def test_an_older_database_gets_the_cells_written_column_added_and_filled_on_the_next_run(tmp_path):
    from sqlalchemy import text

    url = default_url(tmp_path)
    sweep = build_sweep(tiny_sweep(), "t.yaml")
    register(sweep, Storage(url))
    with Storage(url).engine.begin() as c:
        c.execute(text("ALTER TABLE cells DROP COLUMN written"))     # as written before the column existed
    storage = Storage(url)
    with storage.engine.begin() as c:
        assert c.execute(text("SELECT written FROM cells")).scalars().all() == [None, None]
    register(build_sweep(tiny_sweep(), "t.yaml", only=["defense.name=ft"]), storage)   # a block re-run
    with storage.engine.begin() as c:
        rows = dict(c.execute(text("SELECT job_key, written FROM cells")).all())
    ft = next(cell for cell in sweep.cells if cell.defense["name"] == "ft")
    assert len(rows) == 2 and sorted(rows.values(), key=str) == sorted([None, ft.written], key=str)


def test_an_older_database_gets_sweep_membership_back_filled(tmp_path):
    from sqlalchemy import text

    url = default_url(tmp_path)
    register(build_sweep(tiny_sweep(), "t.yaml"), Storage(url))
    with Storage(url).engine.begin() as c:
        c.execute(text("DROP TABLE sweep_jobs"))          # as written before the table existed
    storage = Storage(url)
    assert storage.progress("tiny") == {"pending": 6, "running": 0, "done": 0, "failed": 0, "jobs": 6}
    assert storage.claim_next("a", INFO, "tiny").stage == "poison"
