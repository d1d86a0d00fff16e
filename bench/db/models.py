"""Declarative tables. Uniqueness lives in the schema (unique keys), not in Python checks.

sweeps        one row per sweep name; its expanded document, profile and scale
cells         the sweep's cells: position, labels and the key of the cell's evaluate job
sweep_jobs    every job a sweep needs (cells' evaluate jobs and all their ancestors): what a pull worker
              started with ``--sweep NAME`` may claim, and what a launcher counts for progress
jobs          one row per content key (stage, parent, plugin, version, resolved config) + claim state
runs          every attempt at a job: status, worker, device, host, times, peak memory, code + environment
metrics       long format: (run, name, subset) -> value, count
curves        per-epoch values a defense recorded: (run, step, name) -> value
artifacts     (job, kind) -> path, sha256, bytes in the artifact store
baselines     named regression baselines and their values (per evaluate key and metric)
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA_VERSION = 1


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class SweepRow(Base):
    __tablename__ = "sweeps"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    file: Mapped[str] = mapped_column(Text)
    profile: Mapped[str | None] = mapped_column(String(100))
    scale: Mapped[str] = mapped_column(String(20), default="paper")
    document: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class CellRow(Base):
    __tablename__ = "cells"
    __table_args__ = (UniqueConstraint("sweep_id", "position"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    job_key: Mapped[str] = mapped_column(ForeignKey("jobs.key"), index=True)
    labels: Mapped[dict] = mapped_column(JSON)
    config: Mapped[dict] = mapped_column(JSON)
    # the digest of what the user wrote for the cell (bench.sweep.written_digest); NULL in a database written
    # before the column existed (Storage adds the column without a schema version bump)
    written: Mapped[str | None] = mapped_column(String(64), nullable=True, default=None)


class SweepJobRow(Base):
    """Membership of a job in a sweep (a job shared by two sweeps has two rows). Added without a schema version
    bump: ``create_all`` adds the table to an older database and Storage back-fills it from the cells."""

    __tablename__ = "sweep_jobs"
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True)
    job_key: Mapped[str] = mapped_column(ForeignKey("jobs.key"), primary_key=True, index=True)


class JobRow(Base):
    __tablename__ = "jobs"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    stage: Mapped[str] = mapped_column(String(20), index=True)
    parent_key: Mapped[str | None] = mapped_column(ForeignKey("jobs.key"), index=True)
    plugin: Mapped[str] = mapped_column(String(100))
    plugin_version: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    state: Mapped[str] = mapped_column(String(12), default="pending", index=True)  # pending|running|done|failed
    owner: Mapped[str | None] = mapped_column(String(200))
    heartbeat: Mapped[datetime | None] = mapped_column(DateTime)   # UTC, the database server's clock
    attempts: Mapped[int] = mapped_column(Integer, default=0)       # claims so far (= runs rows of the job)


class RunRow(Base):
    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("job_key", "attempt"),
                      # at most one succeeded run per job, enforced by the database itself
                      Index("one_success_per_job", "job_key", unique=True,
                            sqlite_where=text("status = 'succeeded'"), postgresql_where=text("status = 'succeeded'")))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_key: Mapped[str] = mapped_column(ForeignKey("jobs.key"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(12))          # running|succeeded|failed|abandoned|superseded
    worker: Mapped[str | None] = mapped_column(String(100))
    device: Mapped[str | None] = mapped_column(String(100))
    host: Mapped[str | None] = mapped_column(String(200))
    pid: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    duration_s: Mapped[float | None] = mapped_column(Float)
    peak_mem_mb: Mapped[float | None] = mapped_column(Float)
    git_commit: Mapped[str | None] = mapped_column(String(64))
    git_dirty: Mapped[bool | None] = mapped_column(Boolean)
    python_version: Mapped[str | None] = mapped_column(String(40))
    torch_version: Mapped[str | None] = mapped_column(String(40))
    bench_version: Mapped[str | None] = mapped_column(String(40))
    error: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)


class MetricRow(Base):
    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("run_id", "name", "subset"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    subset: Mapped[str] = mapped_column(String(100), default="")
    value: Mapped[float | None] = mapped_column(Float)
    count: Mapped[int | None] = mapped_column(Integer)


class CurveRow(Base):
    __tablename__ = "curves"
    __table_args__ = (UniqueConstraint("run_id", "step", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float | None] = mapped_column(Float)


class ArtifactRow(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_key", "kind"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_key: Mapped[str] = mapped_column(ForeignKey("jobs.key"), index=True)
    kind: Mapped[str] = mapped_column(String(50))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(Integer)


class BaselineRow(Base):
    __tablename__ = "baselines"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    sweep: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    description: Mapped[str | None] = mapped_column(Text)


class BaselineValueRow(Base):
    __tablename__ = "baseline_values"
    __table_args__ = (UniqueConstraint("baseline_id", "job_key", "metric"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    baseline_id: Mapped[int] = mapped_column(ForeignKey("baselines.id", ondelete="CASCADE"), index=True)
    job_key: Mapped[str] = mapped_column(String(64))
    metric: Mapped[str] = mapped_column(String(100))
    value: Mapped[float | None] = mapped_column(Float)
    tolerance: Mapped[float | None] = mapped_column(Float)
