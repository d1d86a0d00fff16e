"""The backdoored model's own before-numbers, the change from them (Δ), and the validity gate.

Every defended cell has a *before* cell: the cell of the same backdoored model (same dataset, model, recipe,
attack and seed: the same train-stage job) with defense ``none``. From it:

- ``before_ba`` / ``before_asr`` and ``ba_delta`` / ``asr_delta`` = the cell's value minus the before value
  (the comparable quantity where our test data differ from the authors', e.g. the JPEG CIFAR-10 copy beside a
  released model's reported numbers);
- ``gate``: ``ok``, or :data:`NOT_TAKEN` when the backdoored model is not worth defending — its ASR before
  any defense is below ``asr_min`` (90 % by default) or its clean BA below ``ba_min`` (30 %: three times chance
  on the ten-class sets of the seeds) — or ``no before cell`` when the sweep has no ``none`` cell for the
  model (nothing to judge; such cells stay ranked). A clean model (attack ``none``) has nothing to take: ok.

A gated cell is shown, marked, in every table, and is never ranked best or second: a defense cannot "win" on a
backdoor that was never there. D-BR Table 2 applies the same rule ("we only report results on successful
attacks where ASR is higher than 85%", seed 001 Sec. 4.1); we use 90 % unless told otherwise.
"""
from __future__ import annotations

import json

import pandas as pd

ASR_MIN = 0.90
BA_MIN = 0.30
NOT_TAKEN = "attack did not take"
NO_BEFORE = "no before cell"
OK = "ok"
_NOT_MODEL = ("defense", "clean_ratio", "clean_stratified", "curves")   # config keys that do not change the model


def from_file(config: dict) -> bool:
    """A checkpoint cell: its model is its file (keyed by sha256), so its nominal recipe trains nothing."""
    return isinstance(config.get("model"), dict) and "checkpoint" in config["model"]


def model_id(frame: pd.DataFrame) -> pd.Series:
    """One string per row naming its backdoored model: the config without the defense-side keys when the
    frame has whole configs (a DB sweep), else the labels without defense and clean ratio (a committed CSV)."""
    if "config" in frame and len(frame) and all('"attack"' in c and '"seed"' in c for c in frame["config"].astype(str)):
        def ident(text: str) -> str:
            cfg = json.loads(text) if text else {}
            skip = _NOT_MODEL + (("recipe",) if from_file(cfg) else ())
            return json.dumps({k: v for k, v in cfg.items() if k not in skip}, sort_keys=True)
        return frame["config"].map(ident)
    cols = [c for c in ("dataset", "model", "recipe", "attack", "seed") if c in frame]
    return frame[cols].astype(str).agg("|".join, axis=1) if cols else pd.Series("", index=frame.index)


def with_before(frame: pd.DataFrame, asr_min: float = ASR_MIN, ba_min: float = BA_MIN) -> pd.DataFrame:
    """``frame`` plus before_ba, before_asr, ba_delta, asr_delta and gate (see the module docstring)."""
    frame = frame.copy()
    if frame.empty or "defense" not in frame:
        return frame.assign(gate=pd.Series(dtype=object))
    ident = model_id(frame)
    none = frame[frame["defense"] == "none"]
    for m in ("ba", "asr"):
        if m in frame:
            before = none.assign(_id=ident[none.index]).groupby("_id")[m].mean()
            frame[f"before_{m}"] = ident.map(before)
            frame[f"{m}_delta"] = frame[m] - frame[f"before_{m}"]
    has_before = ident.isin(set(ident[none.index]))
    clean = frame["attack"].eq("none") if "attack" in frame else pd.Series(False, index=frame.index)
    weak = pd.Series(False, index=frame.index)
    if "before_asr" in frame:
        weak |= frame["before_asr"] < asr_min
    if "before_ba" in frame:
        weak |= frame["before_ba"] < ba_min
    frame["gate"] = OK
    frame.loc[~has_before & ~clean, "gate"] = NO_BEFORE
    frame.loc[has_before & weak & ~clean, "gate"] = NOT_TAKEN
    return frame


def gated(frame: pd.DataFrame) -> pd.Series:
    """True where the cell's backdoored model did not take (a frame from :func:`with_before`)."""
    return frame["gate"].eq(NOT_TAKEN) if "gate" in frame else pd.Series(False, index=frame.index)

