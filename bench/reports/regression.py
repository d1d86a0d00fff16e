"""Regression checks (``bench baseline`` / ``bench check --against``): per-cell baseline values with a
tolerance, and the verdict of a sweep against them."""
from __future__ import annotations

from typing import Any, Iterable

import pandas as pd

from bench.reports.specs import METRIC_DEFAULTS, MISSING, MetricSpec

DEFAULT_TOLERANCE = {"ba": 0.01, "asr": 0.03, "ra": 0.03}     # fractions (0.01 = 1 point)
DETECTION_TOLERANCE = 0.05
CHECKED = ("ba", "asr", "ra", "flag_precision", "flag_recall", "kept_precision", "auroc")
SEED_SPREAD = 2.0           # tolerance >= SEED_SPREAD x the std over seeds of the cell's baseline values
VERDICT_ORDER = ("fail", "insufficient", "warn", "pass")
SETTINGS = ("sweep", "scale", "profile")    # what the labels do not say: a label match needs these equal too


def better_of(metric: str) -> str:
    return METRIC_DEFAULTS.get(metric, MetricSpec(metric)).better


def baseline_values(frame: pd.DataFrame, metrics: Iterable[str] = CHECKED) -> pd.DataFrame:
    """Per evaluate key and metric: value and tolerance (default per metric, widened by the seed spread).

    Returns a frame with key, the cell labels, sweep, scale, profile, metric, value, tolerance, better.
    """
    from bench.results import LABELS

    rows = []
    cell = [c for c in LABELS if c != "seed"]
    for _, group in frame.groupby(cell, dropna=False, sort=False):
        for m in metrics:
            if m not in group:
                continue
            vals = group[m].dropna()
            spread = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
            tol = max(DEFAULT_TOLERANCE.get(m, DETECTION_TOLERANCE), SEED_SPREAD * spread)
            for _, r in group.iterrows():
                if pd.notna(r[m]):
                    rows.append({"key": r["key"], **{c: r[c] for c in LABELS},
                                 **{c: r.get(c) for c in SETTINGS}, "metric": m,
                                 "value": float(r[m]), "tolerance": round(tol, 6), "better": better_of(m)})
    out = pd.DataFrame(rows, columns=["key", *LABELS, *SETTINGS, "metric", "value", "tolerance", "better"])
    # one evaluate job can serve several cells (defense 'none' ignores the clean ratio): store it once
    return out.sort_values("tolerance", ascending=False, kind="stable").drop_duplicates(["key", "metric"]) \
        .sort_index().reset_index(drop=True)


def compare(frame: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """One row per baseline value: ours, delta (ours - baseline), tolerance and a verdict.

    Verdicts: pass (|delta| <= tolerance), warn (better by more than the tolerance: refresh the baseline),
    fail (worse by more than the tolerance, in the metric's direction), insufficient (the cell has no value
    now, or the baseline has none): never a silent pass.

    A baseline value is matched to the sweep's cell by its key (the content hash of the cell's whole
    configuration); where no cell has that key any more (a plugin gained an option, so every key moved) and
    the baseline carries the cell labels (dataset, model, recipe, attack, defense, clean_ratio, seed, as
    ``bench baseline save --out`` / ``export`` write them), by those labels when exactly one cell has them —
    and only within the same sweep, scale and profile (columns ``SETTINGS``, which new baselines carry): a
    cell of another sweep or profile with the same labels has other settings (epochs, data size) and is
    never paired. ``matched`` says how (key / labels / ''), ``our_key`` which cell of the sweep was used.
    """
    from bench.results import LABELS

    ours, by_labels = {}, {}
    cols = [*LABELS, *(c for c in SETTINGS if c in baseline and c in frame)]
    labelled = all(c in baseline for c in LABELS) and all(c in frame for c in LABELS)
    if labelled:
        counts = pd.Series([_labels_of(r, cols) for _, r in frame.iterrows()]).value_counts()
        unique = {k for k, n in counts.items() if n == 1}
    for _, r in frame.iterrows():
        for m in baseline["metric"].unique():
            if m in r and pd.notna(r[m]):
                ours[(r["key"], m)] = (float(r[m]), r["key"])
                if labelled and (lab := _labels_of(r, cols)) in unique:
                    by_labels[(lab, m)] = (float(r[m]), r["key"])
    out = []
    for _, b in baseline.iterrows():
        now, our_key, how = *ours.get((b["key"], b["metric"]), (None, None)), "key"
        if now is None and labelled:     # the cell's key moved (a new plugin option): match on its labels
            now, our_key, how = *by_labels.get((_labels_of(b, cols), b["metric"]), (None, None)), "labels"
        tol = b["tolerance"] if pd.notna(b.get("tolerance")) else DEFAULT_TOLERANCE.get(b["metric"], DETECTION_TOLERANCE)
        verdict, delta = "insufficient", None
        if now is not None and pd.notna(b["value"]):
            delta = now - float(b["value"])
            sign = -1.0 if better_of(b["metric"]) == "lower" else 1.0
            worse = -sign * delta
            verdict = "pass" if abs(delta) <= tol + 1e-12 else ("fail" if worse > 0 else "warn")
        out.append({**{k: b[k] for k in b.index if k not in ("value", "tolerance", "better")},
                    "baseline": b["value"], "ours": now, "delta": delta, "tolerance": tol, "verdict": verdict,
                    "our_key": our_key, "matched": how if our_key else ""})
    return pd.DataFrame(out)


def unmatched_cells(frame: pd.DataFrame, result: pd.DataFrame) -> list[str]:
    """Keys of the sweep's cells that no baseline value was compared with (by key or by labels)."""
    used = set(result["our_key"].dropna()) if "our_key" in result else set()
    return sorted(set(frame["key"]) - used) if "key" in frame else []


def _labels_of(row: Any, cols: Iterable[str]) -> tuple:
    return tuple(None if row.get(c) is None or pd.isna(row[c]) else
                 (float(row[c]) if c == "clean_ratio" else str(row[c])) for c in cols)


def cell_verdicts(result: pd.DataFrame) -> pd.DataFrame:
    """The worst verdict per cell (evaluate key), with the metrics that moved."""
    rows = []
    for key, part in result.groupby("key", sort=False):
        worst = min(part["verdict"], key=VERDICT_ORDER.index)
        moved = [f"{r.metric} {_pts(r.baseline)}→{_pts(r.ours)} ({r.verdict}, tol {_pts(r.tolerance)})"
                 for r in part.itertuples() if r.verdict != "pass"]
        first = part.iloc[0]
        rows.append({"key": key, **{c: first.get(c) for c in ("dataset", "attack", "defense", "clean_ratio", "seed")},
                     "verdict": worst, "moved": "; ".join(moved), "our_key": first.get("our_key")})
    return pd.DataFrame(rows)


def _pts(v: Any) -> str:
    return MISSING if v is None or pd.isna(v) else f"{100 * float(v):.2f}"

