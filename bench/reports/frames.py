"""The tidy cells frame (:func:`bench.results.cells_frame`, one row per cell) as reports read it: derived
columns, filters, variant rows, dotted config columns and the paper spelling of plugin names."""
from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

import pandas as pd

from bench.reports.gate import from_file
from bench.reports.specs import SpecError


def add_derived(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns the papers report that the runner stores in another form (seed 002 Table 1).

    poison_kept = 1 - flag_recall (share of poisoned images remaining); clean_kept = kept clean / all clean,
    from kept precision, |kept| and |flagged|, with n_poison = the count stored with flag_recall (else
    flag_precision * |flagged| / flag_recall, undefined when nothing poisoned was flagged). Without a defense
    (``defense == 'none'``) every image is kept: both are 1 (seed 002 Table 3's baseline row: 100 / 100).
    Then the model's own before-numbers, the Δ from them and the validity gate (:func:`gate.with_before`).
    """
    from bench.reports.gate import with_before

    frame = frame.copy()
    if "flag_recall" in frame:
        _fill(frame, "poison_kept", 1 - frame["flag_recall"])
        if {"kept_precision", "n_kept", "n_flagged"} <= set(frame):
            if "flag_recall_n" in frame:
                n_pois = frame["flag_recall_n"]
            else:
                n_pois = frame.get("flag_precision", math.nan) * frame["n_flagged"] / frame["flag_recall"]
            n_clean = frame["n_kept"] + frame["n_flagged"] - n_pois
            _fill(frame, "clean_kept", frame["kept_precision"] * frame["n_kept"] / n_clean)
    if "defense" in frame:
        none = frame["defense"] == "none"
        for col in ("poison_kept", "clean_kept"):
            frame[col] = frame[col].where(~none, 1.0) if col in frame else none.map({True: 1.0, False: math.nan})
    return with_before(frame)


def _fill(frame: pd.DataFrame, col: str, derived: pd.Series) -> None:
    """Set ``col`` from ``derived`` where that is defined, keeping values a record already carries."""
    frame[col] = derived.where(derived.notna(), frame[col]) if col in frame else derived


def apply_filters(frame: pd.DataFrame, filters: Mapping[str, Any]) -> pd.DataFrame:
    """Keep rows whose column equals the value (or is in the list); a dotted key reads the config JSON."""
    for col, want in filters.items():
        allowed = want if isinstance(want, list) else [want]
        frame = frame[_column(frame, col).isin(allowed)]
    return frame


def _apply_variants(frame: pd.DataFrame, variants: Mapping[str, Sequence[Mapping[str, Any]]]) -> pd.DataFrame:
    """Replace a row column by the label of the first matching variant; rows matching none are dropped.

    One attack plugin can fill several paper rows (BadNets all2one and all2all; Blend with two patterns):
    ``variants: {attack: [{label: BN-all2all, where: {attack: badnets, attack.label_mode: all2all}}, ...]}``.
    """
    for col, options in variants.items():
        label = pd.Series([None] * len(frame), index=frame.index, dtype=object)
        for opt in options:
            hit = pd.Series(True, index=frame.index)
            for key, want in opt["where"].items():
                hit &= _column(frame, key) == want
            label = label.where(label.notna() | ~hit, opt["label"])
        frame = frame.assign(**{col: label})
        frame = frame[frame[col].notna()]
    return frame


def _column(frame: pd.DataFrame, col: str) -> pd.Series:
    if col in frame:
        return frame[col]
    if "." in col and "config" in frame:
        def get(cfg: str) -> Any:
            cur: Any = json.loads(cfg)
            for part in col.split("."):
                cur = cur.get(part) if isinstance(cur, dict) else None
            return cur
        return frame["config"].map(get)
    raise SpecError(f"{col}: no such column; valid: {', '.join(map(str, frame.columns))}")


def _display(column: str, value: Any) -> str:
    """The paper spelling of a plugin name from its registry (``display_name``), else the value itself."""
    if column in ("attack", "defense", "dataset"):
        try:
            from bench.registry import REGISTRIES
            reg = REGISTRIES[column]
            if value in reg:
                return reg.get(value).display_name
        except Exception:      # a report must render even where plugins fail to import
            pass
    return str(value)


def config_differences(cells: pd.DataFrame) -> list[str]:
    """The config paths (``attack.poison_rate``, ``profile``) in which ``cells`` differ, the seed aside: empty
    when they are seeds of one configuration, or when the frame has no configs (a hand-made frame)."""
    if "config" not in cells or len(cells) < 2:
        return []
    configs = [json.loads(c) if isinstance(c, str) else dict(c) for c in cells["config"]]

    # trigger_seed None draws the trigger from the cell's seed (bench/triggers.py::trigger_generator). Where every
    # cell leaves it None, each seed draws its own trigger: seeds of one configuration. Where some cell fixes it,
    # a None is read as the seed it draws from: seed 0's default cell and a seed-1 cell with trigger_seed 0 poison
    # with one trigger and differ only in the seed; seed 1's own trigger is another attack.
    fixed = any(isinstance(c.get("attack"), dict) and c["attack"].get("trigger_seed") is not None for c in configs)

    def what_counts(c: dict) -> dict:
        out = {k: v for k, v in c.items() if k != "seed" and not (k == "recipe" and from_file(c))}
        attack = out.get("attack")
        if fixed and isinstance(attack, dict) and "trigger_seed" in attack and attack["trigger_seed"] is None:
            out["attack"] = {**attack, "trigger_seed": c.get("seed")}
        return out
    flat = [pd.json_normalize(what_counts(c), sep=".").iloc[0].astype(str).to_dict() for c in configs]
    return sorted({k for f in flat for k in f if len({g.get(k) for g in flat}) > 1})
