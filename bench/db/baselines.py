"""Named regression baselines in the database (tables ``baselines`` / ``baseline_values``), and the run
provenance a report prints. Functions over a :class:`~bench.db.storage.Storage`; each opens its own session.

A baseline holds, per evaluate-job key (a cell including its seed: the key is the content hash of the whole
configuration, so the same cell in another sweep or workspace has the same key) and metric, a value and a
tolerance, both in the metric's stored unit (fractions: 0.01 = 1 point).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import pandas as pd
from sqlalchemy import delete, select

from bench.db.models import BaselineRow, BaselineValueRow, RunRow
from bench.db.storage import Storage, utcnow


def save_baseline(storage: Storage, name: str, values: Iterable[Mapping[str, Any]], sweep: str | None = None,
                  description: str | None = None) -> int:
    """Store (or replace) baseline ``name``: rows with key, metric, value, tolerance. Returns the count."""
    rows = [dict(job_key=str(v["key"]), metric=str(v["metric"]), value=_float(v.get("value")),
                 tolerance=_float(v.get("tolerance"))) for v in values]
    with storage.session_scope() as s:
        old = s.scalars(select(BaselineRow).where(BaselineRow.name == name)).first()
        if old is not None:
            s.execute(delete(BaselineValueRow).where(BaselineValueRow.baseline_id == old.id))
            s.delete(old)
            s.flush()
        row = BaselineRow(name=name, sweep=sweep, created_at=utcnow(), description=description)
        s.add(row)
        s.flush()
        s.add_all(BaselineValueRow(baseline_id=row.id, **r) for r in rows)
    return len(rows)


def load_baseline(storage: Storage, name: str) -> tuple[dict[str, Any], pd.DataFrame]:
    """(info: name, sweep, created, description; frame: key, metric, value, tolerance).

    Raises:
        KeyError: no baseline of that name.
    """
    with storage.session_scope() as s:
        row = s.scalars(select(BaselineRow).where(BaselineRow.name == name)).first()
        if row is None:
            raise KeyError(name)
        info = {"name": row.name, "sweep": row.sweep, "created": row.created_at, "description": row.description}
        values = s.execute(select(BaselineValueRow.job_key, BaselineValueRow.metric, BaselineValueRow.value,
                                  BaselineValueRow.tolerance).where(BaselineValueRow.baseline_id == row.id)
                           .order_by(BaselineValueRow.id)).all()
    return info, pd.DataFrame(values, columns=["key", "metric", "value", "tolerance"])


def baseline_names(storage: Storage) -> list[str]:
    with storage.session_scope() as s:
        return list(s.scalars(select(BaselineRow.name).order_by(BaselineRow.name)))


def run_commits(storage: Storage, keys: Iterable[str]) -> dict[str, str | None]:
    """The git commit of the succeeded run of each job (for a report's provenance footer)."""
    keys = list(keys)
    out: dict[str, str | None] = {}
    with storage.session_scope() as s:
        for chunk in range(0, len(keys), 500):
            q = select(RunRow.job_key, RunRow.git_commit).where(RunRow.job_key.in_(keys[chunk:chunk + 500]),
                                                               RunRow.status == "succeeded")
            out.update(dict(s.execute(q).all()))
    return out


def _float(v: Any) -> float | None:
    if v is None or (isinstance(v, float) and v != v):
        return None
    return float(v)


def run_curves(storage: Storage, keys: Iterable[str]) -> pd.DataFrame:
    """The per-epoch curves (``ctx.curves.record``) of each job's succeeded run: key, step, name, value."""
    from bench.db.models import CurveRow

    keys = list(keys)
    rows: list[tuple] = []
    with storage.session_scope() as s:
        for chunk in range(0, len(keys), 500):
            q = select(RunRow.job_key, CurveRow.step, CurveRow.name, CurveRow.value) \
                .join(CurveRow, CurveRow.run_id == RunRow.id) \
                .where(RunRow.job_key.in_(keys[chunk:chunk + 500]), RunRow.status == "succeeded") \
                .order_by(RunRow.job_key, CurveRow.step, CurveRow.name)
            rows.extend(s.execute(q).all())
    return pd.DataFrame(rows, columns=["key", "step", "name", "value"])
