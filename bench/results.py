"""Results as tidy tables: one row per sweep cell, built from the database (for export, the CLI and reports)."""
from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from bench.db.storage import Storage
from bench.graph import STAGES, stale_stages

LABELS = ("dataset", "model", "recipe", "attack", "defense", "clean_ratio", "seed")


def cells_frame(storage: Storage, sweep: str | None = None) -> pd.DataFrame:
    """One row per cell: labels, state, BA/ASR/RA (+ counts), defense metrics, stage wall times, key, config."""
    cells = storage.cells(sweep)
    eval_keys = [c["key"] for c in cells]
    defend_keys = [c["chain"].get("defend") for c in cells if c["chain"].get("defend")]
    all_keys = sorted({k for c in cells for k in c["chain"].values()})
    evals = storage.succeeded_metrics(eval_keys)
    defends = storage.succeeded_metrics(defend_keys)
    durations = storage.succeeded_durations(all_keys)
    rows = []
    for c in cells:
        row: dict[str, Any] = {"sweep": c["sweep"], "cell": c["position"], "scale": c["scale"],
                               "profile": c["profile"], **{k: c["labels"].get(k) for k in LABELS},
                               "state": c["state"]}
        for (name, _subset), (value, count) in sorted(evals.get(c["key"], {}).items()):
            row[name] = value
            row[f"{name}_n"] = count
        for (name, _subset), (value, count) in sorted(defends.get(c["chain"].get("defend"), {}).items()):
            row.setdefault(name, value)
            row.setdefault(f"{name}_n", count)           # e.g. flag_recall_n = the number of poisoned images
        for stage in STAGES:
            key = c["chain"].get(stage)
            row[f"{stage}_s"] = durations.get(key) if key else None
        row["stale"] = "; ".join(stale_stages(c["versions"]))   # ran another plugin version than this checkout registers
        row["key"] = c["key"]
        row["config"] = json.dumps(c["config"], sort_keys=True)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        for kind in ("recipe", "attack", "defense"):
            specs = [json.loads(c).get(kind) for c in frame["config"]]
            if all(isinstance(s, dict) and "name" in s for s in specs):
                frame[f"{kind}_variant"] = variant_labels(specs)
            else:                                          # a checkpoint cell's nominal recipe, say
                frame[f"{kind}_variant"] = frame[kind]
    return frame


def variant_labels(specs: list[dict[str, Any]]) -> list[str]:
    """``ft`` or ``ft[lr=0.1]``: a plugin's name plus the options that vary among the cells using it."""
    varying: dict[str, list[str]] = {}
    for name in {s["name"] for s in specs}:
        same = [s for s in specs if s["name"] == name]
        keys = sorted({k for s in same for k in s if k != "name"})
        varying[name] = [k for k in keys if len({json.dumps(s.get(k), sort_keys=True) for s in same}) > 1]
    out = []
    for s in specs:
        opts = ",".join(f"{k}={_short(s.get(k))}" for k in varying[s["name"]])
        out.append(f"{s['name']}[{opts}]" if opts else s["name"])
    return out


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return json.dumps(v, separators=(",", ":")) if isinstance(v, (list, dict)) else str(v)


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds of BA/ASR/RA per (dataset, attack, defense, clean_ratio), in percent; a ``gate``
    column names the rows whose backdoor did not take (bench.reports.gate)."""
    if frame.empty:
        return frame
    from bench.reports.gate import gated, with_before

    frame = with_before(frame)
    metrics = [m for m in ("ba", "asr", "ra") if m in frame]
    # a row averages seeds, never configurations: a recipe or profile that differs between cells splits the row
    varying = [c for c in ("profile", "recipe_variant") if c in frame and frame[c].nunique(dropna=False) > 1]
    keys = ["dataset", "model", *varying, "attack_variant", "defense_variant", "clean_ratio"]
    grouped = frame.groupby(keys, sort=False, dropna=False)
    out = grouped[metrics].agg(["mean", "std", "count"]) if metrics else grouped.size().to_frame("n")
    table = pd.DataFrame(index=out.index)
    for m in metrics:
        table[m.upper()] = [_pm(mu, sd, n) for mu, sd, n in zip(out[(m, "mean")], out[(m, "std")], out[(m, "count")])]
    if metrics:
        table["n"] = out[(metrics[0], "count")].astype(int)
    not_taken = frame.assign(_gated=gated(frame)).groupby(keys, sort=False, dropna=False)["_gated"].any()
    if not_taken.any():
        table["gate"] = not_taken.map({True: "attack did not take", False: ""})
    return table.reset_index().rename(columns={"recipe_variant": "recipe", "attack_variant": "attack",
                                               "defense_variant": "defense"})


def _pm(mu: float, sd: float, n: int) -> str:
    if n == 0 or mu is None or (isinstance(mu, float) and math.isnan(mu)):
        return "—"
    if n == 1 or sd is None or math.isnan(sd):
        return f"{100 * mu:.1f}"
    return f"{100 * mu:.1f} ± {100 * sd:.1f}"


def job_gate(storage: Storage, key: str) -> str:
    """The validity gate of the cell an evaluate job serves, read from the sweeps that hold it (``bench show``)."""
    from bench.reports.gate import NO_BEFORE, with_before

    for sweep in storage.sweep_names():
        frame = cells_frame(storage, sweep)
        if "key" in frame and (frame["key"] == key).any():
            return str(with_before(frame).loc[frame["key"] == key, "gate"].iloc[0])
    return NO_BEFORE
