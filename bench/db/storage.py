"""The one interface to the database (Optuna-storage style).

Contract: every method opens its own ``session_scope`` (commit, rollback, close); returned values are plain
dataclasses, dicts or DataFrames, never live ORM rows; uniqueness is enforced by the schema, and the claim of a
job is a compare-and-swap ``UPDATE`` so two processes (or machines) sharing a database never run one job twice.
SQLite (file, WAL, busy timeout) by default; any SQLAlchemy URL (PostgreSQL for shared use) works.

Two ways to claim:

* ``try_claim(key)``: the scheduler's compare-and-swap on one job it picked (``bench sweep``, one machine).
* ``claim_next()``: a pull worker (``bench worker``) asks for *any* ready job: one transaction selects a job whose
  parent is done with ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL (concurrent workers skip each other's
  row instead of queueing on it; SQLite serialises writers with ``BEGIN IMMEDIATE`` and ignores the clause), then
  marks it running and inserts the run row.

Time: heartbeats, claim times and the staleness cut-off are read from the database server's clock (UTC), so
machines with skewed clocks agree on which job is stale.  A running job whose heartbeat is older than the grace
period is re-queued; a job that was claimed ``max_attempts`` times without finishing is marked failed.
"""
from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Iterator

from sqlalchemy import and_, case, create_engine, delete, event, func, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, aliased, sessionmaker

from bench.config import digest
from bench.db.models import (
    SCHEMA_VERSION,
    ArtifactRow,
    Base,
    BaselineRow,
    BaselineValueRow,
    CellRow,
    CurveRow,
    JobRow,
    Meta,
    MetricRow,
    RunRow,
    SweepJobRow,
    SweepRow,
)
from bench.store import ArtifactRecord


class SchemaMismatch(RuntimeError):
    """The database was written by another schema version (the message names the fix)."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def default_url(workspace: str | os.PathLike) -> str:
    return f"sqlite:///{os.path.abspath(os.path.join(workspace, 'bench.db'))}"


@dataclass(frozen=True)
class JobState:
    key: str
    stage: str
    state: str
    owner: str | None
    heartbeat: datetime | None
    attempts: int


@dataclass(frozen=True)
class RunInfo:
    """Facts about the process and code that ran a job (stored with every run)."""

    worker: str
    device: str
    host: str
    pid: int
    git_commit: str | None
    git_dirty: bool | None
    python_version: str
    torch_version: str
    bench_version: str


@dataclass(frozen=True)
class Claim:
    """A job a pull worker claimed: its key and the attempt number of the run row it owns."""

    key: str
    stage: str
    attempt: int


class Storage:
    def __init__(self, url: str, create: bool = True):
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 60}
        self.engine = create_engine(url, future=True, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
            # Every transaction takes SQLite's write lock up front (BEGIN IMMEDIATE): a read-then-write
            # transaction (claim, register) can then never fail with SQLITE_BUSY_SNAPSHOT when another process
            # wrote in between; it waits (busy timeout) instead. Transactions here are short.
            event.listen(self.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._check_schema(create)

    # -- plumbing ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def session_scope(self) -> Iterator[Session]:
        session = self._session()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def _check_schema(self, create: bool) -> None:
        from sqlalchemy import inspect

        tables = set(inspect(self.engine).get_table_names())
        if not tables and create:
            Base.metadata.create_all(self.engine)
            with contextlib.suppress(IntegrityError), self.session_scope() as s:
                s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
            return
        if "meta" not in tables:
            raise SchemaMismatch(f"{self.url}: not a bdbench database (no 'meta' table)")
        with self.session_scope() as s:
            row = s.get(Meta, "schema_version")
            found = int(row.value) if row else None
        if found != SCHEMA_VERSION:
            raise SchemaMismatch(f"{self.url}: database schema version {found}, this bdbench needs "
                                 f"{SCHEMA_VERSION}; run 'bench db upgrade --db {self.url}'")
        Base.metadata.create_all(self.engine)  # tables added without a version bump (sweep_jobs so far)
        if "sweep_jobs" not in tables:        # an older database: fill the new table from the cells
            self._backfill_sweep_jobs()
        if not self._has_column("cells", "written"):   # added without a version bump; NULL for the old cells
            try:
                with self.engine.begin() as conn:
                    conn.exec_driver_sql("ALTER TABLE cells ADD COLUMN written VARCHAR(64)")
            except DBAPIError:
                if not self._has_column("cells", "written"):   # not another process adding it at the same time
                    raise

    def _has_column(self, table: str, column: str) -> bool:
        from sqlalchemy import inspect

        return column in {c["name"] for c in inspect(self.engine).get_columns(table)}

    def _backfill_sweep_jobs(self) -> None:
        with self.session_scope() as s:
            parents = dict(s.execute(select(JobRow.key, JobRow.parent_key)).all())
            rows = set()
            for sweep_id, key in s.execute(select(CellRow.sweep_id, CellRow.job_key)).all():
                while key and (sweep_id, key) not in rows:
                    rows.add((sweep_id, key))
                    key = parents.get(key)
            _insert_rows(s, SweepJobRow, [dict(sweep_id=i, job_key=k) for i, k in sorted(rows)])

    def check_writable(self) -> None:
        """A write that changes nothing (the schema version onto itself): fails now, before a sweep writes
        anything, when the database or its folder is read-only."""
        with self.session_scope() as s:
            s.execute(update(Meta).where(Meta.key == "schema_version").values(value=Meta.value))

    # -- the database server's clock -----------------------------------------------------------------------
    def _now(self, s: Session) -> datetime:
        """Now, in UTC, by the database server's clock (PostgreSQL); this machine's clock for a SQLite file."""
        if s.get_bind().dialect.name == "postgresql":
            return s.scalar(select(func.timezone("UTC", func.now())))
        return utcnow()

    def server_now(self) -> datetime:
        with self.session_scope() as s:
            return self._now(s)

    # -- sweeps, cells and jobs ----------------------------------------------------------------------------
    def register_sweep(self, name: str, file: str, profile: str | None, scale: str, document: dict,
                       jobs: Iterable[Any], cells: list[tuple], merge: bool = False) -> int:
        """Insert the sweep (or update it), its missing jobs and its cell list; returns the sweep id.

        ``jobs`` are graph jobs (parents first); ``cells`` are (labels, config, evaluate key[, written]) per
        cell, ``written`` the digest of what the user wrote for it (bench.sweep.written_digest).
        The cell list replaces the stored one, unless ``merge`` (a run of some cells, ``--only``) and the
        stored sweep has the same profile and scale: then cells and jobs not yet listed are appended, so
        running a table block by block builds the whole table.  A listed cell that comes back with a new key
        is moved to the new key in its place when it is the same cell: the same config (a plugin's or the
        harness's version changed) or the same written entry (a default or a profile's cap changed), so a block
        re-run after a fix does not leave the stale result beside the new one as a second variant.  Existing
        jobs, runs and metrics are never touched.
        """
        now = utcnow()
        jobs = list(jobs)
        with self.session_scope() as s:
            have = set()
            for chunk in range(0, len(jobs), 500):
                keys = [j.key for j in jobs[chunk:chunk + 500]]
                have |= set(s.scalars(select(JobRow.key).where(JobRow.key.in_(keys))))
            new = [dict(key=j.key, stage=j.stage, parent_key=j.parent, plugin=j.plugin, plugin_version=j.version,
                        config=j.config, created_at=now, state="pending", attempts=0)
                   for j in jobs if j.key not in have]
            for chunk in range(0, len(new), 500):      # parents first: the list is in topological order
                s.execute(_insert_ignore(s, JobRow).values(new[chunk:chunk + 500]))
            row = s.scalars(select(SweepRow).where(SweepRow.name == name)).first()
            if row is None:
                row = SweepRow(name=name, file=file, profile=profile, scale=scale, document=document,
                               created_at=now, updated_at=now)
                s.add(row)
                s.flush()
            else:
                merge = merge and (row.profile, row.scale) == (profile, scale)
                row.file, row.profile, row.scale, row.document, row.updated_at = file, profile, scale, document, now
            listed: dict[str, int] = {}
            listed_jobs: set[str] = set()
            by_config: dict[str, CellRow] = {}
            by_written: dict[str, CellRow] = {}
            by_key: dict[str, CellRow] = {}
            if merge:
                stored = list(s.scalars(select(CellRow).where(CellRow.sweep_id == row.id)))
                listed = {c.job_key: c.position for c in stored}
                by_key = {c.job_key: c for c in stored}
                by_config = {digest(c.config): c for c in stored}
                by_written = {c.written: c for c in stored if c.written}
                listed_jobs = set(s.scalars(select(SweepJobRow.job_key).where(SweepJobRow.sweep_id == row.id)))
            else:
                s.execute(delete(CellRow).where(CellRow.sweep_id == row.id))
                s.execute(delete(SweepJobRow).where(SweepJobRow.sweep_id == row.id))
            pos = max(listed.values(), default=-1) + 1
            incoming = {c[2] for c in cells}
            for labels, config, key, *rest in cells:
                written = rest[0] if rest else None
                stale = by_config.get(digest(config)) or (by_written.get(written) if written else None)
                if key in listed:
                    if written and key in by_key and not by_key[key].written:   # a cell listed before the column
                        by_key[key].written = written
                elif stale is not None and stale.job_key not in incoming:
                    del listed[stale.job_key]                                  # same cell, new code: the new key
                    stale.job_key, stale.labels, stale.config, stale.written = key, labels, config, written
                    listed[key] = stale.position
                else:
                    s.add(CellRow(sweep_id=row.id, position=pos, job_key=key, labels=labels, config=config,
                                  written=written))
                    listed[key] = pos
                    pos += 1
            _insert_rows(s, SweepJobRow, [dict(sweep_id=row.id, job_key=j.key) for j in jobs
                                          if j.key not in listed_jobs])
            return row.id

    def job_states(self, keys: Iterable[str]) -> dict[str, JobState]:
        keys = list(keys)
        out: dict[str, JobState] = {}
        with self.session_scope() as s:
            for chunk in range(0, len(keys), 500):
                for r in s.scalars(select(JobRow).where(JobRow.key.in_(keys[chunk:chunk + 500]))):
                    out[r.key] = JobState(r.key, r.stage, r.state, r.owner, r.heartbeat, r.attempts)
        return out

    def try_claim(self, key: str, owner: str, info: RunInfo, retry_failed: bool,
                  is_stale: Callable[[JobState], bool]) -> int | None:
        """Claim a job for ``owner`` by compare-and-swap; return the new attempt number, or None if taken.

        Claimable: pending; failed (with ``retry_failed``); running but stale (its owner is dead or silent).
        The previous running attempt of a stale job is marked 'abandoned'.
        """
        with self.session_scope() as s:
            r = s.get(JobRow, key)
            if r is None:
                return None
            st = JobState(r.key, r.stage, r.state, r.owner, r.heartbeat, r.attempts)
            ok = st.state == "pending" or (st.state == "failed" and retry_failed) or (
                st.state == "running" and is_stale(st))
            if not ok:
                return None
            now = self._now(s)
            res = s.execute(update(JobRow).where(
                JobRow.key == key, JobRow.state == st.state, JobRow.attempts == st.attempts,
                (JobRow.owner == st.owner) if st.owner is not None else JobRow.owner.is_(None),
            ).values(state="running", owner=owner, heartbeat=now, attempts=st.attempts + 1)
                .execution_options(synchronize_session=False))
            if res.rowcount != 1:
                return None
            return self._open_run(s, key, st.attempts + 1, info, now)

    def _open_run(self, s: Session, key: str, attempt: int, info: RunInfo, now: datetime,
                  was_running: bool = True) -> int:
        """Abandon the job's previous running attempt (its owner died) and insert the run row of ``attempt``."""
        if was_running:
            s.execute(update(RunRow).where(RunRow.job_key == key, RunRow.status == "running")
                      .values(status="abandoned", finished_at=now, error="owner died or went silent"))
        s.add(RunRow(job_key=key, attempt=attempt, status="running", started_at=now, worker=info.worker,
                     device=info.device, host=info.host, pid=info.pid, git_commit=info.git_commit,
                     git_dirty=info.git_dirty, python_version=info.python_version,
                     torch_version=info.torch_version, bench_version=info.bench_version))
        return attempt

    def claim_next(self, owner: str, info: RunInfo, sweep: str | None = None, grace_s: float = 300.0,
                   max_attempts: int = 3) -> Claim | None:
        """Claim any ready job for a pull worker; None when nothing is claimable right now.

        Ready: pending (or running with a heartbeat older than ``grace_s`` by the server's clock), its parent
        done, fewer than ``max_attempts`` claims so far, and (with ``sweep``) part of that sweep.  The row is
        locked with ``FOR UPDATE SKIP LOCKED``, so concurrent workers never wait on or take the same job.  Jobs
        out of attempts are marked failed first (``give_up``) when nothing else is claimable.
        """
        for tries in range(2):
            with self.session_scope() as s:
                now = self._now(s)
                parent = aliased(JobRow)
                q = (select(JobRow.key, JobRow.stage, JobRow.attempts, JobRow.state)
                     .outerjoin(parent, parent.key == JobRow.parent_key)
                     .where(or_(JobRow.parent_key.is_(None), parent.state == "done"),
                            or_(JobRow.state == "pending",
                                and_(JobRow.state == "running",
                                     JobRow.heartbeat < now - timedelta(seconds=grace_s))),
                            JobRow.attempts < max_attempts)
                     .order_by(_DEEPEST_FIRST, JobRow.created_at, JobRow.key)
                     .limit(1).with_for_update(of=JobRow, skip_locked=True))
                if sweep is not None:
                    q = q.where(JobRow.key.in_(self._sweep_keys(sweep)))
                row = s.execute(q).first()
                if row is not None:
                    key, stage, attempts, state = row
                    s.execute(update(JobRow).where(JobRow.key == key).values(
                        state="running", owner=owner, heartbeat=now, attempts=attempts + 1))
                    return Claim(key, stage, self._open_run(s, key, attempts + 1, info, now, state == "running"))
            if tries == 0 and not self.give_up(grace_s, max_attempts, sweep):
                return None
        return None

    def give_up(self, grace_s: float, max_attempts: int, sweep: str | None = None) -> int:
        """Mark failed every job that has no claims left: pending, or running but stale, after ``max_attempts``
        claims.  Its last running attempt becomes 'abandoned'.  Returns how many jobs were given up."""
        with self.session_scope() as s:
            now = self._now(s)
            q = select(JobRow.key).where(
                JobRow.attempts >= max_attempts,
                or_(JobRow.state == "pending",
                    and_(JobRow.state == "running", JobRow.heartbeat < now - timedelta(seconds=grace_s))))
            if sweep is not None:
                q = q.where(JobRow.key.in_(self._sweep_keys(sweep)))
            keys = list(s.scalars(q.with_for_update(skip_locked=True)))
            if keys:
                s.execute(update(RunRow).where(RunRow.job_key.in_(keys), RunRow.status == "running")
                          .values(status="abandoned", finished_at=now, error="owner died or went silent"))
                s.execute(update(JobRow).where(JobRow.key.in_(keys)).values(state="failed", owner=None))
                for key in keys:     # the failure is visible in 'bench show' as the last run's error
                    last = s.scalars(select(RunRow).where(RunRow.job_key == key)
                                     .order_by(RunRow.attempt.desc()).limit(1)).first()
                    if last is not None:
                        last.error = f"gave up after {max_attempts} attempts: {last.error or 'no result'}"
            return len(keys)

    @staticmethod
    def _sweep_keys(sweep: str):
        return (select(SweepJobRow.job_key).join(SweepRow, SweepRow.id == SweepJobRow.sweep_id)
                .where(SweepRow.name == sweep))

    def heartbeat(self, keys: Iterable[str], owner: str) -> int:
        """Stamp the jobs ``owner`` still holds with the server's clock; returns how many it still holds."""
        keys = list(keys)
        if not keys:
            return 0
        with self.session_scope() as s:
            return s.execute(update(JobRow).where(JobRow.key.in_(keys), JobRow.owner == owner,
                                                  JobRow.state == "running").values(heartbeat=self._now(s))
                             .execution_options(synchronize_session=False)).rowcount

    def _run(self, s: Session, key: str, attempt: int) -> RunRow:
        return s.scalars(select(RunRow).where(RunRow.job_key == key, RunRow.attempt == attempt)).one()

    def finish_run(self, key: str, attempt: int, owner: str, artifacts: list[ArtifactRecord],
                   metrics: list[tuple[str, str, float | None, int | None]], curves: list[dict],
                   device: str | None, peak_mem_mb: float | None, duration_s: float) -> bool:
        """Record a success in one transaction: artifacts, metrics, curves, run status and job state.

        Returns False (and records nothing) when ``owner`` no longer holds this attempt: it went silent past
        the grace period and another worker took the job over; that worker's run will be the result.
        """
        with self.session_scope() as s:
            now = self._now(s)
            if not self._still_mine(s, key, attempt, owner, "done", now):
                return False
            run = self._run(s, key, attempt)
            for a in artifacts:
                s.execute(delete(ArtifactRow).where(ArtifactRow.job_key == key, ArtifactRow.kind == a.kind))
                s.add(ArtifactRow(job_key=key, kind=a.kind, path=a.path, sha256=a.sha256, bytes=a.bytes))
            for name, subset, value, count in metrics:
                s.add(MetricRow(run_id=run.id, name=name, subset=subset, value=_finite(value), count=count))
            for row in curves:
                step = int(row["step"])
                for name, value in row.items():
                    if name != "step":
                        s.add(CurveRow(run_id=run.id, step=step, name=name, value=_finite(value)))
            run.status, run.finished_at, run.duration_s = "succeeded", now, duration_s
            run.peak_mem_mb, run.device = peak_mem_mb, device or run.device
            return True

    def _still_mine(self, s: Session, key: str, attempt: int, owner: str | None, state: str,
                    now: datetime) -> bool:
        """Compare-and-swap the job from this running attempt to ``state``; False when it was taken over."""
        cond = [JobRow.key == key, JobRow.state == "running", JobRow.attempts == attempt]
        if owner is not None:
            cond.append(JobRow.owner == owner)
        return s.execute(update(JobRow).where(*cond).values(state=state, owner=None, heartbeat=now)
                         .execution_options(synchronize_session=False)).rowcount == 1

    def fail_run(self, key: str, attempt: int, error: str, traceback: str, duration_s: float | None) -> bool:
        """Record a failure (error and traceback); False when this attempt was taken over meanwhile."""
        with self.session_scope() as s:
            now = self._now(s)
            if not self._still_mine(s, key, attempt, None, "failed", now):
                return False
            run = self._run(s, key, attempt)
            run.status, run.finished_at, run.duration_s = "failed", now, duration_s
            run.error, run.traceback = error[:2000], traceback
            return True

    def release(self, key: str, attempt: int, reason: str) -> None:
        """Give a claimed job back (interrupted before it finished): its run is abandoned, the job pending."""
        with self.session_scope() as s:
            run = self._run(s, key, attempt)
            if run.status == "running":
                run.status, run.finished_at, run.error = "abandoned", self._now(s), reason
            s.execute(update(JobRow).where(JobRow.key == key, JobRow.state == "running", JobRow.attempts == attempt)
                      .values(state="pending", owner=None))

    def reset_jobs(self, keys: Iterable[str]) -> None:
        """Mark done jobs whose artifacts are missing or corrupt as pending again (they will re-run)."""
        keys = list(keys)
        if keys:
            with self.session_scope() as s:
                s.execute(update(JobRow).where(JobRow.key.in_(keys)).values(state="pending", owner=None))
                s.execute(delete(ArtifactRow).where(ArtifactRow.job_key.in_(keys)))
                # the old run and its metrics stay as history; only the new run will count as the result
                s.execute(update(RunRow).where(RunRow.job_key.in_(keys), RunRow.status == "succeeded")
                          .values(status="superseded", error="artifact missing or corrupt; recomputed"))

    def artifacts(self, keys: Iterable[str]) -> dict[str, dict[str, ArtifactRecord]]:
        keys = list(keys)
        out: dict[str, dict[str, ArtifactRecord]] = {k: {} for k in keys}
        with self.session_scope() as s:
            for chunk in range(0, len(keys), 500):
                for a in s.scalars(select(ArtifactRow).where(ArtifactRow.job_key.in_(keys[chunk:chunk + 500]))):
                    out[a.job_key][a.kind] = ArtifactRecord(a.kind, a.path, a.sha256, a.bytes)
        return out

    # -- reads for the CLI and reports ---------------------------------------------------------------------
    def sweeps(self) -> list[dict[str, Any]]:
        """Every sweep with its cell count and progress (cells done / failed / pending)."""
        out = []
        with self.session_scope() as s:
            for sw in s.scalars(select(SweepRow).order_by(SweepRow.id)):
                rows = s.execute(select(JobRow.state, func.count()).join(CellRow, CellRow.job_key == JobRow.key)
                                 .where(CellRow.sweep_id == sw.id).group_by(JobRow.state)).all()
                counts = {state: n for state, n in rows}
                out.append({"name": sw.name, "file": sw.file, "profile": sw.profile, "scale": sw.scale,
                            "cells": sum(counts.values()), "done": counts.get("done", 0),
                            "failed": counts.get("failed", 0), "running": counts.get("running", 0),
                            "pending": counts.get("pending", 0), "updated": sw.updated_at})
        return out

    def find_jobs(self, prefix: str) -> list[str]:
        with self.session_scope() as s:
            return list(s.scalars(select(JobRow.key).where(JobRow.key.like(f"{prefix}%")).limit(10)))

    def job_detail(self, key: str) -> dict[str, Any]:
        """Resolved config, parent chain, runs (with errors) and metrics of one job."""
        with self.session_scope() as s:
            job = s.get(JobRow, key)
            if job is None:
                raise KeyError(key)
            runs = []
            for r in s.scalars(select(RunRow).where(RunRow.job_key == key).order_by(RunRow.attempt)):
                ms = s.scalars(select(MetricRow).where(MetricRow.run_id == r.id)).all()
                runs.append({"attempt": r.attempt, "status": r.status, "host": r.host, "device": r.device,
                             "worker": r.worker, "started": r.started_at, "duration_s": r.duration_s,
                             "peak_mem_mb": r.peak_mem_mb, "git": r.git_commit, "dirty": r.git_dirty,
                             "torch": r.torch_version, "error": r.error, "traceback": r.traceback,
                             "metrics": {(m.name, m.subset): (m.value, m.count) for m in ms}})
            chain, cur = [], job.parent_key
            while cur:
                p = s.get(JobRow, cur)
                chain.append({"key": p.key, "stage": p.stage, "plugin": p.plugin, "state": p.state})
                cur = p.parent_key
            arts = [(a.kind, a.path, a.bytes) for a in s.scalars(select(ArtifactRow).where(ArtifactRow.job_key == key))]
            return {"key": job.key, "stage": job.stage, "plugin": job.plugin, "version": job.plugin_version,
                    "state": job.state, "config": job.config, "parents": chain, "runs": runs, "artifacts": arts}

    def succeeded_metrics(self, keys: Iterable[str]) -> dict[str, dict[tuple[str, str], tuple[float | None, int | None]]]:
        """(name, subset) -> (value, count) of the succeeded run of each job."""
        keys = list(keys)
        out: dict[str, dict] = {k: {} for k in keys}
        with self.session_scope() as s:
            for chunk in range(0, len(keys), 500):
                q = (select(RunRow.job_key, MetricRow.name, MetricRow.subset, MetricRow.value, MetricRow.count)
                     .join(MetricRow, MetricRow.run_id == RunRow.id)
                     .where(RunRow.job_key.in_(keys[chunk:chunk + 500]), RunRow.status == "succeeded"))
                for k, name, subset, value, count in s.execute(q):
                    out[k][(name, subset)] = (value, count)
        return out

    def succeeded_durations(self, keys: Iterable[str]) -> dict[str, float | None]:
        keys = list(keys)
        with self.session_scope() as s:
            return dict(s.execute(select(RunRow.job_key, RunRow.duration_s)
                                  .where(RunRow.job_key.in_(keys), RunRow.status == "succeeded")).all())

    def cells(self, sweep: str | None = None) -> list[dict[str, Any]]:
        """Cells (with sweep name, labels, config, evaluate key, the keys of the evaluate's ancestors and each
        one's (plugin, version))."""
        with self.session_scope() as s:
            q = select(SweepRow.name, SweepRow.scale, SweepRow.profile, CellRow).join(
                CellRow, CellRow.sweep_id == SweepRow.id)
            if sweep:
                q = q.where(SweepRow.name == sweep)
            rows = s.execute(q.order_by(SweepRow.id, CellRow.position)).all()
            parents, stages, states, plugins = {}, {}, {}, {}
            for key, parent, stage, state, plugin, version in s.execute(select(
                    JobRow.key, JobRow.parent_key, JobRow.stage, JobRow.state, JobRow.plugin, JobRow.plugin_version)):
                parents[key], stages[key], states[key], plugins[key] = parent, stage, state, (plugin, version)
            out = []
            for name, scale, profile, c in rows:
                chain, cur = {}, c.job_key
                while cur:
                    chain.setdefault(stages[cur], cur)         # the nearest job of each stage (not a surrogate)
                    cur = parents.get(cur)
                out.append({"sweep": name, "scale": scale, "profile": profile, "position": c.position,
                            "labels": c.labels, "config": c.config, "key": c.job_key, "chain": chain,
                            "state": states.get(c.job_key),
                            "versions": {stage: plugins[k] for stage, k in chain.items()}})
            return out

    def sweep_names(self) -> list[str]:
        with self.session_scope() as s:
            return list(s.scalars(select(SweepRow.name).order_by(SweepRow.id)))

    def counts(self) -> dict[str, int]:
        """Row counts per table (tests and ``bench ls --verbose``)."""
        with self.session_scope() as s:
            return {t.__tablename__: s.scalar(select(func.count()).select_from(t))
                    for t in (SweepRow, CellRow, JobRow, RunRow, MetricRow, CurveRow, ArtifactRow,
                              BaselineRow, BaselineValueRow)}

    def runs_of(self, key: str) -> list[dict[str, Any]]:
        with self.session_scope() as s:
            return [{"attempt": r.attempt, "status": r.status, "pid": r.pid, "host": r.host, "worker": r.worker,
                     "device": r.device, "git_commit": r.git_commit, "bench_version": r.bench_version,
                     "started_at": r.started_at, "finished_at": r.finished_at, "error": r.error}
                    for r in s.scalars(select(RunRow).where(RunRow.job_key == key).order_by(RunRow.attempt))]

    # -- what a pull worker needs to run a job it did not plan ---------------------------------------------
    def job_chain(self, key: str) -> list[dict[str, Any]]:
        """The job and its ancestors, root first: key, stage, plugin and the stage's own config each."""
        out = []
        with self.session_scope() as s:
            cur = key
            while cur:
                j = s.get(JobRow, cur)
                if j is None:
                    raise KeyError(cur)
                out.append({"key": j.key, "stage": j.stage, "plugin": j.plugin, "config": j.config})
                cur = j.parent_key
        return out[::-1]

    def progress(self, sweep: str | None = None) -> dict[str, int]:
        """Jobs of a sweep (None: of the whole database) by state (pending, running, done, failed), and in total."""
        q = select(JobRow.state, func.count())
        if sweep is not None:
            q = q.where(JobRow.key.in_(self._sweep_keys(sweep)))
        with self.session_scope() as s:
            rows = s.execute(q.group_by(JobRow.state)).all()
        out = {"pending": 0, "running": 0, "done": 0, "failed": 0, **dict(rows)}
        out["jobs"] = sum(n for st, n in out.items() if st in ("pending", "running", "done", "failed"))
        return out


# Ready jobs deepest stage first: a finished parent's child starts next (short ready-to-start latency, cells
# complete early, fewer artifacts waiting) instead of every root job running before any child.
_DEEPEST_FIRST = case({"evaluate": 0, "defend": 1, "prepare": 2, "train": 3, "poison": 4, "generate": 5},
                      value=JobRow.stage, else_=6)


def _insert_rows(s: Session, table, rows: list[dict]) -> None:
    for chunk in range(0, len(rows), 500):
        s.execute(_insert_ignore(s, table).values(rows[chunk:chunk + 500]))


def _insert_ignore(s: Session, table):
    """INSERT that skips rows whose key exists (another process may register the same jobs concurrently)."""
    name = s.get_bind().dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    elif name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:  # pragma: no cover - other backends rely on the pre-check above
        from sqlalchemy import insert
        return insert(table)
    return dialect_insert(table).on_conflict_do_nothing()


def _finite(v: float | None) -> float | None:
    if v is None:
        return None
    v = float(v)
    return None if v != v or v in (float("inf"), float("-inf")) else v


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    dbapi_conn.isolation_level = None      # let SQLAlchemy's "begin" event issue BEGIN IMMEDIATE itself
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def hostname() -> str:
    return socket.gethostname()


def stale_after(grace_s: float, clock: Callable[[], datetime] = utcnow) -> Callable[[JobState], bool]:
    """A running job is stale when its owner process on this host is gone, or its heartbeat is too old.

    ``clock`` gives "now" on the heartbeats' clock (``Storage.server_now`` for a shared server)."""
    host = hostname()

    def is_stale(st: JobState) -> bool:
        if st.owner:
            owner_host, _, pid = st.owner.rpartition(":")
            if owner_host == host and pid.isdigit() and not _pid_alive(int(pid)):
                return True
        return st.heartbeat is None or clock() - st.heartbeat > timedelta(seconds=grace_s)
    return is_stale


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (killed child not yet reaped) still answers kill(0); read its state where /proc exists
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
