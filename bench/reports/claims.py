"""The papers' claims as executable checks (``reports/claims/<paper>.yaml``), evaluated on the tidy cells frame.

A claims file names its paper and default sweep and lists claims; each claim quotes the sentence it comes from
and states a check as data::

    - id: mcl-best-asr
      source: "Sec. 4.2, Table 1"
      quote: "On the Cifar-10 dataset, MCL achieves the best results on ASR ..."
      scale: any              # any | paper (only meaningful at the paper's scale)
      gated: true             # false: the metric never reads the backdoored model (see below)
      where: {dataset: cifar10, clean_ratio: 0.05}     # the cells it ranges over
      for_each: [attack]      # checked per value; require: all (default) | most | any of the parts
      check: {kind: rank, metric: asr, subject: {defense: mcl},
              among: {defense: [ft, nad, ibau, nc, mcl]}, at_most: 1}

Check kinds (metrics in stored fractions: 0.01 = 1 point; ``k`` = seed tolerance, default 1):

- ``threshold``: subject's metric ``op`` ``value``;
- ``compare``: subject's metric ``op`` other's metric (+ ``by``);
- ``difference``: (subject − other) ``op`` ``value`` (e.g. a BA drop from ``defense: none``);
- ``rank``: at most ``at_most − 1`` of the ``among`` groups are better than the subject (metric's direction).

Seed-aware tolerance: a quantity's per-seed values (paired by seed for a difference of two cells of the same
models) give mean and sample std; a claim **fails** only when it is violated by more than ``k`` std
(e.g. ``x < v`` fails when mean − k·std ≥ v), so seed noise never fails a claim; with one seed std = 0.
With ``alpha`` instead, a one-sided t-test over the seeds (H0: the claim holds) fails it at that level.
A claim's ``sweep`` names the sweep it is written for (documentation): it is evaluated on whatever record
it is given, where cells it does not find make it not testable.

A ``for_each`` part in which the subject has no cell is not a part of the claim (the record did not run it
there); ``all`` / ``most`` / ``any`` count the remaining parts.

Verdicts: ``holds``, ``fails``, ``not testable`` — a cell is missing, its attack did not take (the validity
gate, :mod:`bench.reports.gate`), a column is not in the record, or a paper-scale claim meets a smaller record
(the numbers are still shown). ``gated: false`` exempts a claim from the gate when its metric does not
depend on the backdoored model at all — seed 002's filters decide from a SimCLR encoder trained on the poisoned
set, never from the classifier, so the share of poison they keep means the same whether or not the classifier
learnt the backdoor. A typo in a claims file raises :class:`ClaimError`: one line with the file,
the key path and the closest valid name.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from bench.reports.frames import _column, add_derived, apply_filters, config_differences
from bench.reports.gate import gated
from bench.reports.specs import METRIC_DEFAULTS, REPORTS, SpecError, read_yaml

CLAIMS_DIR = REPORTS / "claims"
HOLDS, FAILS, UNTESTABLE = "holds", "fails", "not testable"
ABSENT = "missing cells (subject)"
KINDS = ("threshold", "compare", "difference", "rank")
OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
SCALES = ("any", "paper")
REQUIRE = ("all", "most", "any")
FILE_KEYS = ("paper", "seed", "sweep", "notes", "claims")
CLAIM_KEYS = ("id", "source", "quote", "scale", "gated", "sweep", "where", "for_each", "require", "check", "note")
CHECK_KEYS = {"threshold": ("kind", "metric", "subject", "op", "value", "k", "alpha"),
              "compare": ("kind", "metric", "subject", "other", "op", "by", "k", "alpha"),
              "difference": ("kind", "metric", "subject", "other", "op", "value", "k", "alpha"),
              "rank": ("kind", "metric", "subject", "among", "at_most", "k", "alpha")}
REQUIRED = {"threshold": ("metric", "subject", "op", "value"), "compare": ("metric", "subject", "other", "op"),
            "difference": ("metric", "subject", "other", "op", "value"), "rank": ("metric", "subject", "among")}
COLUMNS = ("dataset", "model", "recipe", "attack", "defense", "clean_ratio", "seed", "attack_variant",
           "defense_variant", "sweep", "scale", "profile")
PLUGIN_COLUMNS = ("dataset", "model", "recipe", "attack", "defense")
DERIVED_METRICS = ("ba_delta", "asr_delta", "before_ba", "before_asr", "n_flagged", "n_kept")


class ClaimError(SpecError):
    """A claims file that cannot be used (one line: file, key path, what would be valid)."""


@dataclass(frozen=True)
class Claim:
    id: str
    source: str
    quote: str
    check: Mapping[str, Any]
    scale: str = "any"
    sweep: str | None = None
    where: Mapping[str, Any] = field(default_factory=dict)
    for_each: tuple[str, ...] = ()
    require: str = "all"
    note: str = ""
    gated: bool = True


@dataclass(frozen=True)
class ClaimsFile:
    paper: str
    claims: tuple[Claim, ...]
    sweep: str | None = None
    path: str = ""


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    verdict: str
    numbers: str            # the numbers behind it, per part
    reason: str = ""


# -- loading and validation ----------------------------------------------------------------------------------
def claims_names() -> list[str]:
    return sorted(p.stem for p in CLAIMS_DIR.glob("*.yaml"))


def load_claims(name_or_path: str | Path) -> ClaimsFile:
    """Read and validate a claims file by name (``reports/claims/NAME.yaml``) or path.

    Raises:
        ClaimError: no such file, a YAML error, or an unknown / malformed key (with the closest valid name).
    """
    from bench.config import closest

    path = Path(name_or_path)
    if not path.suffix:
        path = CLAIMS_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise ClaimError(f"{name_or_path}: no such claims file; {closest(str(name_or_path), claims_names())}")
    try:
        doc = read_yaml(path)
    except SpecError as err:
        raise ClaimError(str(err)) from None
    return claims_from_dict(doc, str(path))


def claims_from_dict(doc: Any, where: str = "<claims>") -> ClaimsFile:
    _mapping(doc, where, "(top level)")
    _keys(doc, FILE_KEYS, where, "")
    items = doc.get("claims")
    if not isinstance(items, list) or not items:
        raise ClaimError(f"{where}: claims: expected a non-empty list of claims")
    claims, seen = [], set()
    for i, item in enumerate(items):
        path = f"claims[{i}]"
        _mapping(item, where, path)
        _keys(item, CLAIM_KEYS, where, path)
        for key in ("id", "source", "quote", "check"):
            if key not in item:
                raise ClaimError(f"{where}: {path}.{key}: missing (every claim has id, source, quote and check)")
        if item["id"] in seen:
            raise ClaimError(f"{where}: {path}.id: {item['id']!r} used twice")
        seen.add(item["id"])
        _choice(item.get("scale", "any"), SCALES, where, f"{path}.scale")
        _choice(item.get("require", "all"), REQUIRE, where, f"{path}.require")
        if not isinstance(item.get("gated", True), bool):
            raise ClaimError(f"{where}: {path}.gated: {item['gated']!r}; expected true or false")
        _selector(item.get("where", {}), where, f"{path}.where")
        for col in item.get("for_each", []):
            _column_name(col, where, f"{path}.for_each")
        _check(item["check"], where, f"{path}.check")
        claims.append(Claim(id=str(item["id"]), source=str(item["source"]), quote=str(item["quote"]).strip(),
                            check=dict(item["check"]), scale=item.get("scale", "any"), sweep=item.get("sweep"),
                            where=dict(item.get("where", {})), for_each=tuple(item.get("for_each", [])),
                            require=item.get("require", "all"), note=str(item.get("note", "")).strip(),
                            gated=item.get("gated", True)))
    return ClaimsFile(paper=str(doc.get("paper", "")), claims=tuple(claims), sweep=doc.get("sweep"), path=where)


def _check(check: Any, where: str, path: str) -> None:
    _mapping(check, where, path)
    kind = check.get("kind")
    _choice(kind, KINDS, where, f"{path}.kind")
    _keys(check, CHECK_KEYS[kind], where, path)
    for key in REQUIRED[kind]:
        if key not in check:
            raise ClaimError(f"{where}: {path}.{key}: missing (a {kind} check needs {', '.join(REQUIRED[kind])})")
    _choice(check["metric"], sorted(set(METRIC_DEFAULTS) | set(DERIVED_METRICS)), where, f"{path}.metric")
    if "op" in check:
        _choice(check["op"], tuple(OPS), where, f"{path}.op")
    for key in ("subject", "other", "among"):
        if key in check:
            _selector(check[key], where, f"{path}.{key}")
    for key in ("value", "by", "k", "at_most", "alpha"):
        if key in check and (not isinstance(check[key], (int, float)) or isinstance(check[key], bool)):
            raise ClaimError(f"{where}: {path}.{key}: expected a number, got {check[key]!r}")
    if "alpha" in check and not 0 < check["alpha"] < 1:
        raise ClaimError(f"{where}: {path}.alpha: {check['alpha']!r}; a test level in (0, 1), e.g. 0.05")
    if kind == "rank" and not (len(check["among"]) == 1 and isinstance(next(iter(check["among"].values())), list)):
        raise ClaimError(f"{where}: {path}.among: expected one column with a list of values, "
                         "e.g. {defense: [ft, nad, mcl]}")


def _selector(sel: Any, where: str, path: str) -> None:
    _mapping(sel, where, path)
    for col, want in sel.items():
        _column_name(col, where, path)
        if col in PLUGIN_COLUMNS:
            for v in want if isinstance(want, list) else [want]:
                _plugin(col, v, where, f"{path}.{col}")


def _column_name(col: str, where: str, path: str) -> None:
    stage = str(col).split(".", 1)[0]
    if col not in COLUMNS and not ("." in str(col) and stage in PLUGIN_COLUMNS):
        from bench.config import closest
        raise ClaimError(f"{where}: {path}: {col!r} is not a cell column; "
                         f"{closest(str(col), COLUMNS)} (or a config path such as defense.trigger_source)")


def _plugin(kind: str, value: Any, where: str, path: str) -> None:
    from bench.registry import REGISTRIES

    reg = REGISTRIES[kind]
    if value not in reg:
        from bench.config import closest
        raise ClaimError(f"{where}: {path}: unknown {kind} {value!r}; {closest(str(value), reg.names())}")


def _mapping(value: Any, where: str, path: str) -> None:
    if not isinstance(value, dict):
        raise ClaimError(f"{where}: {path}: expected a mapping, got {type(value).__name__}")


def _keys(doc: Mapping[str, Any], valid: Sequence[str], where: str, path: str) -> None:
    from bench.config import closest

    for key in doc:
        if key not in valid:
            raise ClaimError(f"{where}: {path + '.' if path else ''}{key}: unknown key; {closest(str(key), valid)}")


def _choice(value: Any, valid: Sequence[str], where: str, path: str) -> None:
    from bench.config import closest

    if value not in valid:
        raise ClaimError(f"{where}: {path}: {value!r}; {closest(str(value), valid)}")


# -- records -------------------------------------------------------------------------------------------------
def record_from_csv(path: str | Path) -> pd.DataFrame:
    """A committed record as a cells frame: a tidy ``bench export`` CSV as it is, or a regression-baseline CSV
    (key, labels, metric, value; ``reports/baselines/*.csv``) pivoted to one row per cell."""
    frame = pd.read_csv(path, dtype={"key": str})
    if {"metric", "value"} <= set(frame.columns):
        labels = [c for c in frame.columns if c not in ("metric", "value", "tolerance", "better")]
        frame = frame.pivot_table(index=labels, columns="metric", values="value", aggfunc="mean",
                                  dropna=False).reset_index()
        frame.columns.name = None
        frame = frame.dropna(subset=[c for c in frame.columns if c not in labels], how="all")
    return frame


# -- evaluation ----------------------------------------------------------------------------------------------
# A run without a profile is at the papers' scale: sweeps record it as "full" ("paper" in records before issue 16).
PAPER_SCALES = ("paper", "full")


def evaluate(claims: ClaimsFile | Sequence[Claim], frame: pd.DataFrame, scale: str | None = None) -> list[Verdict]:
    """Each claim's verdict on a cells frame (a DB sweep's ``cells_frame`` or :func:`record_from_csv`).

    ``scale``: the record's scale (default: the frame's ``scale`` column; 'unknown' without one).
    """
    items = claims.claims if isinstance(claims, ClaimsFile) else tuple(claims)
    frame = add_derived(frame)
    if scale is None:
        scales = sorted({str(s) for s in frame["scale"].dropna()}) if "scale" in frame else []
        scale = ", ".join(scales) or "unknown"
    return [_verdict(c, frame, scale) for c in items]


def _verdict(claim: Claim, frame: pd.DataFrame, scale: str) -> Verdict:
    try:
        cells = _select(frame, claim.where)
        _require(cells, claim.for_each)
        keys = {f"_each{i}": _column(cells, c) for i, c in enumerate(claim.for_each)}
        parts = list(cells.assign(**keys).groupby(list(keys), sort=False)) if keys else [((), cells)]
    except SpecError as err:
        return Verdict(claim, UNTESTABLE, "", f"not in this record: {err}")
    if not parts:
        return Verdict(claim, UNTESTABLE, "", "no cell matches 'where'")
    results = []
    for key, part in parts:
        name = "/".join(map(str, key if isinstance(key, tuple) else (key,)))
        verdict, numbers = _part(claim.check, part if claim.gated else part.drop(columns="gate", errors="ignore"))
        results.append((name, verdict, numbers))
    ran = [r for r in results if r[2] != ABSENT]       # a part where the subject was never run is no part
    if not ran:
        return Verdict(claim, UNTESTABLE, "", ABSENT)
    results = ran
    verdict = _combine([v for _, v, _ in results], claim.require)
    named = len(results) > 1

    def join(parts: list[tuple[str, str, str]], tag: bool) -> str:
        return "; ".join(f"{n + ': ' if named else ''}{text}{f' [{v}]' if tag and named else ''}"
                         for n, v, text in parts)
    numbers = join([r for r in results if r[1] != UNTESTABLE], True)
    reason = join([r for r in results if r[1] == UNTESTABLE], False)
    if claim.scale == "paper" and scale not in PAPER_SCALES:
        reason = "; ".join(x for x in (f"a paper-scale claim; this record is at {scale} scale "
                                       f"(would be: {verdict})", reason) if x)
        verdict = UNTESTABLE
    return Verdict(claim, verdict, numbers, reason)


def _combine(verdicts: list[str], require: str) -> str:
    n, holds, fails = len(verdicts), verdicts.count(HOLDS), verdicts.count(FAILS)
    if require == "all":
        return FAILS if fails else HOLDS if holds == n else UNTESTABLE
    if require == "most":
        return HOLDS if holds > n / 2 else FAILS if fails >= n / 2 else UNTESTABLE
    return HOLDS if holds else FAILS if fails == n else UNTESTABLE


def _part(check: Mapping[str, Any], cells: pd.DataFrame) -> tuple[str, str]:
    """(verdict, numbers) of one check on the cells of one part."""
    metric = check["metric"]
    try:
        subject = _select(cells, check["subject"])
    except SpecError as err:
        return UNTESTABLE, f"not in this record: {err}"
    if check["kind"] == "rank":
        return _rank(check, cells, subject, metric)
    problem = _untestable(subject, metric, "subject")
    if problem:
        return UNTESTABLE, problem
    op = check["op"]
    if check["kind"] == "threshold":
        values, bound, what = _per_seed(subject, metric), float(check["value"]), _label(check["subject"])
    else:
        other = _select(cells, check["other"])
        problem = _untestable(other, metric, "other")
        if problem:
            return UNTESTABLE, problem
        values = _paired(_per_seed(subject, metric), _per_seed(other, metric))
        bound = float(check.get("by", 0.0)) if check["kind"] == "compare" else float(check["value"])
        what = f"{_label(check['subject'])} − {_label(check['other'])}"
    ok = _holds(values, op, bound, check)
    return (HOLDS if ok else FAILS), f"{metric} {what} = {_pts(*_mean_std(values), len(values))} (need {op} {_p(bound)})"


def _rank(check, cells, subject, metric) -> tuple[str, str]:
    (col, values), = check["among"].items()
    problem = _untestable(subject, metric, "subject")
    if problem:
        return UNTESTABLE, problem
    at_most = int(check.get("at_most", 1))
    lower = METRIC_DEFAULTS.get(metric).better == "lower" if metric in METRIC_DEFAULTS else False
    mine = _per_seed(subject, metric)
    beaten_by = []
    for v in values:
        if check["subject"].get(col) == v:              # the subject itself
            continue
        comp = _select(cells, {col: v})
        problem = _untestable(comp, metric, str(v))
        if problem:
            return UNTESTABLE, problem
        theirs = _per_seed(comp, metric)
        # the competitor is better: 'subject − competitor is no worse than 0' is violated beyond seed noise
        if not _holds(_paired(mine, theirs), "<=" if lower else ">=", 0.0, check):
            beaten_by.append(f"{v} {_pts(*_mean_std(theirs), len(theirs))}")
    text = (f"{metric} {_label(check['subject'])} {_pts(*_mean_std(mine), len(mine))}; clearly better: "
            f"{', '.join(beaten_by) or 'none'} of {len(values) - 1} (need rank ≤ {at_most})")
    return (HOLDS if len(beaten_by) < at_most else FAILS), text


def _select(cells: pd.DataFrame, sel: Mapping[str, Any]) -> pd.DataFrame:
    """The cells matching ``sel``."""
    _require(cells, sel)
    return apply_filters(cells, sel)


def _require(cells: pd.DataFrame, columns: Sequence[str]) -> None:
    """A short SpecError for a column this record lacks (a config path in a CSV record without configs)."""
    for col in columns:
        if col not in cells and not ("." in col and "config" in cells):
            raise SpecError(f"no column {col!r}")


def _untestable(cells: pd.DataFrame, metric: str, who: str) -> str:
    if cells.empty:
        return ABSENT if who == "subject" else f"missing cells ({who})"
    if metric not in cells or cells[metric].dropna().empty:
        return f"no {metric} ({who})"
    if gated(cells).any():
        return f"attack did not take ({who})"
    differ = config_differences(cells)
    if differ:     # a mean over them would pass for a mean over seeds
        return f"{len(cells)} cells differ in {', '.join(differ[:3])}, not only in the seed ({who})"
    return ""


def _per_seed(cells: pd.DataFrame, metric: str) -> pd.Series:
    seed = cells["seed"] if "seed" in cells else pd.Series(0, index=cells.index)
    return cells.assign(_seed=seed).groupby("_seed")[metric].mean().dropna()


def _paired(a: pd.Series, b: pd.Series) -> pd.Series:
    """a − b per seed where both have the seed (the same backdoored models); else the difference of the means
    with the two spreads combined, as a two-point series with that mean and std."""
    common = a.index.intersection(b.index)
    if len(common):
        return (a[common] - b[common]).astype(float)
    mean = a.mean() - b.mean()
    std = math.hypot(*(s.std(ddof=1) if len(s) > 1 else 0.0 for s in (a, b)))
    return pd.Series([mean - std / math.sqrt(2), mean + std / math.sqrt(2)]) if std else pd.Series([mean])


def _mean_std(values: pd.Series) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _holds(values: pd.Series, op: str, bound: float, check: Mapping[str, Any]) -> bool:
    """The claim ``x op bound`` on per-seed values, unless the seeds show it violated: beyond ``k`` std of the
    mean (default), or — with ``alpha`` — by a one-sided t-test at that level (H0: the claim holds). With one
    seed, or no spread, the mean decides."""
    mean, std = _mean_std(values)
    upper = op in ("<", "<=")                   # the claim bounds x from above: a violation is x too high
    if "alpha" in check and len(values) > 1 and std > 0:
        from scipy import stats

        t = (mean - bound) / (std / math.sqrt(len(values)))
        p = stats.t.sf(t, len(values) - 1) if upper else stats.t.cdf(t, len(values) - 1)
        return OPS[op](mean, bound) or p >= float(check["alpha"])
    slack = float(check.get("k", 1.0)) * std
    return OPS[op](mean - slack, bound) if upper else OPS[op](mean + slack, bound)


def _label(sel: Mapping[str, Any]) -> str:
    return ",".join(f"{v}" if c in PLUGIN_COLUMNS else f"{c}={v}" for c, v in sel.items())


def _p(v: float) -> str:
    return f"{100 * v:.2f}"


def _pts(mean: float, std: float, n: int) -> str:
    return f"{_p(mean)}" + (f" ± {_p(std)}" if n > 1 else "") + f" (n={n})"


def verdicts_frame(verdicts: Sequence[Verdict]) -> pd.DataFrame:
    """One row per claim: id, source, scale, verdict, numbers (points), reason."""
    return pd.DataFrame([{"id": v.claim.id, "source": v.claim.source, "scale": v.claim.scale,
                          "verdict": v.verdict, "numbers": v.numbers, "reason": v.reason} for v in verdicts],
                        columns=["id", "source", "scale", "verdict", "numbers", "reason"])
