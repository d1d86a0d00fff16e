"""Aggregation: a cells frame -> a :class:`Table` in a spec's layout (mean, std and n over seeds per cell),
best / second-best marks in each metric's direction, and the tidy per-cell table (CSV)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

import pandas as pd

from bench.reports.frames import (
    _apply_variants,
    _column,
    _display,
    add_derived,
    apply_filters,
    config_differences,
)
from bench.reports.gate import NOT_TAKEN
from bench.reports.gate import gated as gated_rows
from bench.reports.specs import (
    GATED_MARK,
    MISSING,
    GroupSpec,
    MetricSpec,
    SpecError,
    TableSpec,
    load_reference,
)


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float          # sample std over seeds (nan when n == 1)
    n: int


@dataclass
class Table:
    """A rendered-ready table: row keys, groups, and per (row, group, metric) a Stat (or None) and a mark."""

    spec: TableSpec
    rows: list[tuple]
    groups: list[GroupSpec]
    stats: dict[tuple[int, int, str], Stat | None]
    marks: dict[tuple[int, int, str], str]            # "best" | "second"
    provenance: dict[str, Any]
    common_n: int = 1
    gated: set[tuple[int, int]] = field(default_factory=set)   # (row, group) whose attack did not take

    @property
    def missing(self) -> int:
        return sum(v is None for v in self.stats.values())


def default_spec(frame: pd.DataFrame, name: str) -> TableSpec:
    """A layout for a sweep without a spec: rows = dataset x attack (+ every other label that varies, seeds
    aside), one group per defense ('none' = Before, unranked), ASR and BA."""
    def finest(col: str) -> str:      # ft[lr=0.1] beside ft where a `--set` variant ran, else the plain name
        var = f"{col}_variant"
        return var if var in frame and frame[var].nunique(dropna=False) > frame[col].nunique(dropna=False) else col

    varying = [c for c in ("model", finest("recipe"), "profile", "clean_ratio")
               if c in frame and frame[c].nunique(dropna=False) > 1]
    return TableSpec(name=name, title=f"Sweep {name}", rows=("dataset", finest("attack"), *varying),
                     group_by=finest("defense"))


def default_groups(frame: pd.DataFrame, by: str = "defense") -> tuple[GroupSpec, ...]:
    """One group per value of ``by`` in first-seen order; 'none' first, labelled 'Before' and not ranked."""
    values = list(dict.fromkeys(frame[by].tolist())) if by in frame else []
    values.sort(key=lambda v: v != "none")
    return tuple(GroupSpec("Before" if v == "none" else _display(by, v), {by: v}, rank=v != "none")
                 for v in values)


def build_table(frame: pd.DataFrame, spec: TableSpec, provenance: Mapping[str, Any] | None = None) -> Table:
    """Aggregate a cells frame into ``spec``'s layout: mean/std/n over seeds, best and second-best marks."""
    frame = _apply_variants(apply_filters(add_derived(frame), spec.filters), spec.variants)
    groups = list(spec.groups or default_groups(frame, spec.group_by))
    keyed = frame.assign(_row=list(zip(*[_column(frame, c) for c in spec.rows]))) if len(frame) else \
        frame.assign(_row=[])
    rows = _ordered_rows(keyed["_row"].tolist() + _reference_rows(spec, frame), spec)
    stats: dict[tuple[int, int, str], Stat | None] = {}
    gated: set[tuple[int, int]] = set()
    for gi, g in enumerate(groups):
        sub = keyed
        for col, want in g.where.items():
            sub = sub[_column(sub, col) == want]
        by_row = {r: part for r, part in sub.groupby("_row", sort=False)} if len(sub) else {}
        for r, part in by_row.items():
            _one_configuration(part, r, g.label)
        for ri, r in enumerate(rows):
            if r in by_row and gated_rows(by_row[r]).any():
                gated.add((ri, gi))
            for m in spec.metrics:
                part = by_row.get(r)
                values = part[m.name].dropna() if part is not None and m.name in part else pd.Series([], dtype=float)
                stats[(ri, gi, m.name)] = _stat(values)
    ns = [s.n for s in stats.values() if s is not None]
    prov = dict(provenance) if provenance is not None else provenance_of(frame)
    table = Table(spec, rows, groups, stats, {}, prov,
                  common_n=max(set(ns), key=ns.count) if ns else 1, gated=gated)
    table.marks = rank_marks(table)
    return table


def _one_configuration(part: pd.DataFrame, row: tuple, group: str) -> None:
    """A table entry is a mean over seeds; cells that differ in anything but the seed (a `--set` variant, another
    profile, a second clean ratio) averaged into one entry would pass for seeds, so they are refused."""
    differ = config_differences(part)
    if differ:
        raise SpecError(f"row {'/'.join(map(str, row))}, column {group}: {len(part)} cells differ in "
                        f"{', '.join(differ[:4])}{' ...' if len(differ) > 4 else ''}, not only in the seed; a table "
                        f"entry averages seeds - keep one configuration with the spec's filters or variants")


def _reference_rows(spec: TableSpec, frame: pd.DataFrame) -> list[tuple]:
    """With ``complete: true``: every (dataset, attack) row the paper reports (its reference CSV, 'Avg' rows
    aside), as row keys, so that a row we cannot fill (a method not implemented yet) still shows as '—'.

    The reference spells rows as printed; they are mapped back through the spec's ``labels`` and the display
    names of the values present in the frame (a variant label is its own key).
    """
    if not spec.complete or not spec.reference or tuple(spec.rows) != ("dataset", "attack"):
        return []
    ref = load_reference(spec.reference)
    back: dict[str, dict[str, Any]] = {}
    for col in spec.rows:
        inv = {str(_display(col, v)): v for v in (frame[col].dropna().unique() if col in frame else [])}
        inv.update({str(d): raw for raw, d in spec.labels.get(col, {}).items()})
        back[col] = inv
    keys = []
    for ds, atk in ref.loc[ref["attack"] != "Avg", ["dataset", "attack"]].itertuples(index=False):
        keys.append((back["dataset"].get(ds, ds), back["attack"].get(atk, atk)))
    return keys


def _stat(values: pd.Series) -> Stat | None:
    if values.empty:
        return None
    return Stat(float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan, len(values))


def _ordered_rows(keys: list[tuple], spec: TableSpec) -> list[tuple]:
    unique = list(dict.fromkeys(keys))

    def rank(key: tuple) -> tuple:
        out = []
        for col, v in zip(spec.rows, key):
            order = list(spec.order.get(col, []))
            out.append(order.index(v) if v in order else len(order))
        return tuple(out)
    return sorted(unique, key=rank)          # stable: unlisted values keep their first-seen order


def rank_marks(table: Table) -> dict[tuple[int, int, str], str]:
    """Per row and metric, over the ranked groups: 'best' for the best mean, 'second' for the runner-up.

    Means are compared as printed (rounded to the metric's digits), so ties share a mark. No marks with fewer
    than two candidates; 'second' only with at least three (with two it would just mark the loser). A gated
    cell (its attack did not take, :mod:`bench.reports.gate`) is never a candidate.
    """
    marks: dict[tuple[int, int, str], str] = {}
    for m in table.spec.metrics:
        if m.better == "none":
            continue
        sign = -1.0 if m.better == "higher" else 1.0
        for ri in range(len(table.rows)):
            cand = {gi: round(s.mean * m.scale, m.digits) for gi, g in enumerate(table.groups)
                    if g.rank and (ri, gi) not in table.gated and (s := table.stats[(ri, gi, m.name)]) is not None and not math.isnan(s.mean)}
            if len(cand) < 2:
                continue
            levels = sorted(set(cand.values()), key=lambda v: sign * v)
            for gi, v in cand.items():
                if v == levels[0]:
                    marks[(ri, gi, m.name)] = "best"
                elif len(cand) >= 3 and len(levels) > 1 and v == levels[1]:
                    marks[(ri, gi, m.name)] = "second"
    return marks


def cell_parts(table: Table, ri: int, gi: int, metric: MetricSpec) -> dict[str, Any]:
    """Strings for one cell: mean, std (or ''), n (only when it differs from the table's usual n), mark, and
    whether its attack did not take (gated)."""
    s = table.stats[(ri, gi, metric.name)]
    if s is None:
        return {"missing": True, "mean": MISSING, "std": "", "n": "", "mark": "", "gated": False}
    f = f"{{:.{metric.digits}f}}"
    return {"missing": False, "mean": f.format(s.mean * metric.scale),
            "std": "" if math.isnan(s.std) else f.format(s.std * metric.scale),
            "n": str(s.n) if s.n != table.common_n else "", "mark": table.marks.get((ri, gi, metric.name), ""),
            "gated": (ri, gi) in table.gated}


def cell_text(parts: Mapping[str, Any]) -> str:
    text = parts["mean"] + (f" ± {parts['std']}" if parts["std"] else "")
    return text + (f" (n={parts['n']})" if parts["n"] else "") + (f" {GATED_MARK}" if parts["gated"] else "")


def table_frame(table: Table) -> pd.DataFrame:
    """One tidy row per (row, group, metric): mean, std, n, mark, gate and the printed text (percent)."""
    out = []
    for ri, key in enumerate(table.rows):
        for gi, g in enumerate(table.groups):
            for m in table.spec.metrics:
                s = table.stats[(ri, gi, m.name)]
                parts = cell_parts(table, ri, gi, m)
                out.append({**dict(zip(table.spec.rows, key)), "group": g.label, "metric": m.name,
                            "mean": None if s is None else round(s.mean * m.scale, 6),
                            "std": None if s is None or math.isnan(s.std) else round(s.std * m.scale, 6),
                            "n": 0 if s is None else s.n, "mark": parts["mark"],
                            "gate": NOT_TAKEN if parts["gated"] else "", "text": cell_text(parts)})
    return pd.DataFrame(out)


def table_csv(table: Table) -> str:
    return table_frame(table).to_csv(index=False)


def provenance_of(frame: pd.DataFrame, storage: Any = None) -> dict[str, Any]:
    """Sweep, scale, profile, the git commit(s) the runs were made with, and the report's date."""
    commits: list[str] = []
    if storage is not None and "key" in frame and len(frame):
        from bench.db.baselines import run_commits
        commits = sorted({c for c in run_commits(storage, frame["key"].tolist()).values() if c})
    def uniq(col: str) -> str:
        vals = sorted({str(v) for v in frame[col].dropna()}) if col in frame else []
        return ", ".join(vals) or "-"
    return {"sweep": uniq("sweep"), "scale": uniq("scale"), "profile": uniq("profile"),
            "commit": ", ".join(c[:10] for c in commits) or "-", "cells": int(len(frame)),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
