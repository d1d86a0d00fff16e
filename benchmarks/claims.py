"""Job claims (not a test): claims per second with 4 workers on PostgreSQL and on SQLite, and the scheduling
latency from a job becoming ready to a worker starting it.

    python benchmarks/claims.py [--jobs 400] [--cells 30] [--pg postgresql+psycopg://user@host/db]

Without ``--pg`` a throwaway PostgreSQL server is started from the system's packages (initdb into a temporary
folder; as root it runs as the 'postgres' user), as the tests do.

1. Claims/s: ``--jobs`` ready jobs without parents; N processes each loop claim -> record an empty success until
   nothing is left (the database work of a job, no compute).  The baseline, measured in the same run, is the
   core scheduler's claim (``Storage.try_claim``, compare-and-swap on a job it picked) in one process on SQLite:
   what ``bench sweep`` does today.  Every other row prints its ratio against it.
2. Latency: a no-op sweep of ``--cells`` cells (poison -> train -> defend -> evaluate on 8x8 synthetic data, 0
   epochs); latency = a run's start minus its parent's finish, both from the runs table.  Baseline: the core
   scheduler (``bench sweep --workers 0``) on SQLite; then 4 pull workers (``bench worker`` processes) on SQLite
   and on PostgreSQL.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from bench.db.storage import RunInfo, Storage, default_url, stale_after
from bench.graph import Job

INFO = RunInfo("bench", "cpu", socket.gethostname(), os.getpid(), None, None, "", "", "")


# -- a throwaway PostgreSQL server ----------------------------------------------------------------------------
@contextmanager
def postgres(url: str | None):
    if url:
        yield url
        return
    import glob
    initdb = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    if initdb is None:
        sys.exit("no PostgreSQL (initdb) found: install it or pass --pg URL")
    tmp = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    tmp.chmod(0o755)
    user = []
    if os.geteuid() == 0:
        pwd.getpwnam("postgres")
        shutil.chown(tmp, "postgres")
        user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pg_ctl = os.path.join(os.path.dirname(initdb), "pg_ctl")
    subprocess.run(user + [initdb, "-D", str(tmp / "data"), "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, capture_output=True)
    subprocess.run(user + [pg_ctl, "-D", str(tmp / "data"), "-l", str(tmp / "log"), "-w", "-o",
                           f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c max_connections=100", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(user + [pg_ctl, "-D", str(tmp / "data"), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def fresh_pg_db(base: str, name: str) -> str:
    import psycopg
    conninfo = base.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
        c.execute(f"CREATE DATABASE {name}")
    return base.rsplit("/", 1)[0] + f"/{name}"


# -- 1. claims per second -------------------------------------------------------------------------------------
def _claimer(url: str, how: str, n_jobs: int, start, out) -> None:
    storage = Storage(url, create=False)
    owner, count = f"{socket.gethostname()}:{os.getpid()}", 0
    keys = [f"{i:064x}" for i in range(n_jobs)]
    keys = keys[os.getpid() % n_jobs:] + keys[:os.getpid() % n_jobs]     # each process starts elsewhere
    never_stale = stale_after(1e9)
    storage.progress("flat")                          # connected
    start.wait()                                      # every process ready: the clock starts
    if how == "claim_next":
        while (c := storage.claim_next(owner, INFO, "flat")) is not None:
            storage.finish_run(c.key, c.attempt, owner, [], [], [], "cpu", None, 0.0)
            count += 1
    else:                 # the scheduler's loop: poll states, try the compare-and-swap on each pending job
        while True:
            pending = [k for k, s in storage.job_states(keys).items() if s.state == "pending"]
            if not pending:
                break
            for k in pending:
                attempt = storage.try_claim(k, owner, INFO, False, never_stale)
                if attempt is not None:
                    storage.finish_run(k, attempt, owner, [], [], [], "cpu", None, 0.0)
                    count += 1
    out.put(count)


def claims_per_second(url: str, how: str, workers: int, n_jobs: int) -> float:
    storage = Storage(url)
    storage.register_sweep("flat", "flat.yaml", None, "mini", {},
                           [Job(f"{i:064x}", "poison", "none", 1, {"i": i}, None) for i in range(n_jobs)], [])
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(workers + 1), ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(url, how, n_jobs, start, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    start.wait()
    t0 = time.perf_counter()
    total = sum(out.get(timeout=600) for _ in procs)
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    assert total == n_jobs and storage.progress("flat")["done"] == n_jobs, (total, storage.progress("flat"))
    return n_jobs / elapsed


# -- 2. scheduling latency ------------------------------------------------------------------------------------
def noop_sweep(cells: int) -> dict:
    return {"name": "noop", "seeds": list(range(cells)), "grid": {
        "dataset": {"name": "synthetic", "n_train": 64, "n_test": 32, "size": 8},
        "model": {"name": "small_cnn", "width": 2}, "recipe": {"name": "quick", "epochs": 0},
        "attack": "none", "defense": "none", "clean_ratio": 0.1}}


def latencies(storage: Storage) -> list[float]:
    from sqlalchemy import select

    from bench.db.models import JobRow, RunRow
    with storage.session_scope() as s:
        runs = {k: (a, b) for k, a, b in s.execute(select(RunRow.job_key, RunRow.started_at, RunRow.finished_at)
                                                   .where(RunRow.status == "succeeded"))}
        parents = dict(s.execute(select(JobRow.key, JobRow.parent_key)).all())
    return [(runs[k][0] - runs[p][1]).total_seconds() for k, p in parents.items() if p and k in runs]


def latency_scheduler(ws: Path, cells: int) -> tuple[list[float], float]:
    from bench.runner import RunOptions, run_sweep
    from bench.sweep import build_sweep
    ws.mkdir()
    storage = Storage(default_url(ws))
    t0 = time.perf_counter()
    summary = run_sweep(build_sweep(noop_sweep(cells), "noop.yaml"), storage, ws / "artifacts",
                        RunOptions(workers=0, progress=False))
    assert summary.ok
    return latencies(storage), time.perf_counter() - t0


def latency_pull(url: str, ws: Path, cells: int, workers: int) -> tuple[list[float], float]:
    from bench.runner import register
    from bench.sweep import build_sweep
    storage = Storage(url)
    register(build_sweep(noop_sweep(cells), "noop.yaml"), storage)
    env = {**os.environ, "BENCH_WORKSPACE": str(ws), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "bench.cli", "worker", "--db", url, "--sweep", "noop",
                               "--until-empty", "--poll", "0.5"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(workers)]
    for p in procs:
        p.wait(timeout=1200)
    elapsed = time.perf_counter() - t0
    assert storage.progress("noop")["done"] == storage.progress("noop")["jobs"]
    return latencies(storage), elapsed


def fmt(lat: list[float]) -> str:
    q = statistics.quantiles(lat, n=20)
    return f"median {1000 * statistics.median(lat):7.1f} ms  p95 {1000 * q[-1]:7.1f} ms  max {1000 * max(lat):7.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=400)
    ap.add_argument("--cells", type=int, default=30)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--pg", default=None, help="PostgreSQL URL of a server to use (a database 'bench_claims_*' "
                                               "is created there); default: start a throwaway one")
    args = ap.parse_args()
    print(f"{socket.gethostname()}: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    with postgres(args.pg) as pg, tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = []

        def sqlite(name: str) -> str:
            (tmp / name).mkdir()
            return default_url(tmp / name)
        base = claims_per_second(sqlite("base"), "try_claim", 1, args.jobs)
        rows.append(("sqlite   scheduler try_claim (CAS)  1 process", base))
        for w in (1, args.workers):
            rows.append((f"sqlite   pull claim_next            {w} process", claims_per_second(
                sqlite(f"s{w}"), "claim_next", w, args.jobs)))
        for w in (1, args.workers):
            rows.append((f"postgres pull claim_next (SKIP LOCKED) {w} process", claims_per_second(
                fresh_pg_db(pg, f"bench_claims_{w}"), "claim_next", w, args.jobs)))
        print(f"\n1. claims per second ({args.jobs} ready jobs; claim + record an empty result)")
        for name, rate in rows:
            print(f"  {name:<48} {rate:8.1f} claims/s   x{rate / base:5.2f} baseline")

        print(f"\n2. scheduling latency, ready -> started ({args.cells} no-op cells, {4 * args.cells} jobs)")
        lat, el = latency_scheduler(tmp / "ws_sched", args.cells)
        base_med = statistics.median(lat)
        print(f"  sqlite   core scheduler, in-process      {fmt(lat)}  (x1.00 baseline; wall {el:.1f} s)")
        lat, el = latency_pull(sqlite("pull"), tmp / "ws_sqlite", args.cells, args.workers)
        print(f"  sqlite   {args.workers} pull workers                {fmt(lat)}  "
              f"(x{statistics.median(lat) / base_med:.2f} baseline; wall {el:.1f} s)")
        lat, el = latency_pull(fresh_pg_db(pg, "bench_claims_lat"), tmp / "ws_pg", args.cells, args.workers)
        print(f"  postgres {args.workers} pull workers                {fmt(lat)}  "
              f"(x{statistics.median(lat) / base_med:.2f} baseline; wall {el:.1f} s)")


if __name__ == "__main__":
    main()
