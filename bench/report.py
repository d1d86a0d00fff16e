"""Reports: a table spec turns the tidy cells frame into a paper's table, rendered as HTML, LaTeX and CSV.

The path is always spec -> frames -> rendered text:

1. :func:`load_spec` reads ``reports/specs/NAME.yaml`` (rows, column groups, metrics with the direction in
   which each is better, filters, display labels, the reference CSV of the paper's numbers).
2. :func:`build_table` aggregates :func:`bench.results.cells_frame` over seeds (mean, std, n per cell) and
   marks the best (bold) and second-best (underline) group per row and metric in the metric's direction.
3. :func:`render_html` / :func:`render_latex` / :func:`table_csv` render it; :func:`paper_vs_ours` puts the
   transcribed paper numbers (``reports/reference/*.csv``) next to ours with the difference.

Regression checks (``bench baseline`` / ``bench check``) and the ablation figure live at the end.
Values in the database are fractions in [0, 1]; tables print them in percent (``MetricSpec.scale``).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

REPORTS = Path(__file__).resolve().parent.parent / "reports"
SPECS_DIR = REPORTS / "specs"
TEMPLATES_DIR = REPORTS / "templates"
REFERENCE_DIR = REPORTS / "reference"
MISSING = "—"
MISSING_NOTE = "† — : no finished run for this cell (not in the sweep, failed, or still pending)."


# ----------------------------------------------------------------------------------------------------------
# Table specs
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricSpec:
    """One metric column: its frame column, its header, and the direction in which it is better."""

    name: str                       # column of the cells frame (ba, asr, ra, flag_precision, ...)
    label: str = ""                 # header text (ASR, BA, ACC, CA)
    better: str = "higher"          # higher | lower | none (no marks)
    scale: float = 100.0            # stored fractions -> percent
    digits: int = 2


@dataclass(frozen=True)
class GroupSpec:
    """A column group: the cells matching ``where`` (e.g. ``{defense: ft}``); ``rank: false`` for 'Before'."""

    label: str
    where: Mapping[str, Any]
    rank: bool = True


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str = ""
    rows: tuple[str, ...] = ("dataset", "attack")
    groups: tuple[GroupSpec, ...] = ()        # empty: one group per value of ``group_by``, 'none' first
    group_by: str = "defense"
    metrics: tuple[MetricSpec, ...] = (MetricSpec("asr", "ASR", "lower"), MetricSpec("ba", "BA", "higher"))
    filters: Mapping[str, Any] = field(default_factory=dict)
    order: Mapping[str, Sequence[Any]] = field(default_factory=dict)     # row order per row column
    labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # display names per row column
    variants: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)  # see _apply_variants
    sweep: str | None = None
    reference: str | None = None             # CSV under reports/reference (paper numbers)
    caption: str = ""
    notes: tuple[str, ...] = ()              # extra footnotes (e.g. a paper row bdbench cannot fill yet)
    complete: bool = False                   # show every row of the reference CSV, '—' where we have none


METRIC_DEFAULTS = {
    "ba": MetricSpec("ba", "BA", "higher"), "asr": MetricSpec("asr", "ASR", "lower"),
    "ra": MetricSpec("ra", "RA", "higher"), "auroc": MetricSpec("auroc", "AUROC", "higher"),
    "flag_precision": MetricSpec("flag_precision", "Flag prec.", "higher"),
    "flag_recall": MetricSpec("flag_recall", "Flag rec.", "higher"),
    "kept_precision": MetricSpec("kept_precision", "Kept prec.", "higher"),
    "clean_kept": MetricSpec("clean_kept", "clean", "higher"),
    "poison_kept": MetricSpec("poison_kept", "backdoor", "lower"),
}
_SPEC_KEYS = set(TableSpec.__dataclass_fields__) | {"paper"}


class SpecError(ValueError):
    """A table spec that cannot be used (the message names the file, the key and what would be valid)."""


def load_spec(name_or_path: str | Path) -> TableSpec:
    """Read a table spec by name (``reports/specs/NAME.yaml``) or path.

    Raises:
        SpecError: unknown spec name or key, or a malformed entry.
    """
    from bench.config import closest, load_yaml

    path = Path(name_or_path)
    if not path.suffix:
        path = SPECS_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise SpecError(f"{name_or_path}: no such table spec; {closest(str(name_or_path), spec_names())}")
    doc = load_yaml(path.read_text(), str(path)) or {}
    return spec_from_dict(doc, str(path))


def spec_from_dict(doc: Mapping[str, Any], where: str = "<spec>") -> TableSpec:
    from bench.config import closest

    for key in doc:
        if key not in _SPEC_KEYS:
            raise SpecError(f"{where}: {key}: unknown key; {closest(key, _SPEC_KEYS)}")
    try:
        metrics = tuple(_metric(m) for m in doc.get("metrics", ["asr", "ba"]))
        groups = tuple(GroupSpec(g["label"], dict(g["where"]), bool(g.get("rank", True)))
                       for g in doc.get("groups", []))
    except (KeyError, TypeError) as err:
        raise SpecError(f"{where}: metrics/groups: malformed entry ({err})") from None
    for m in metrics:
        if m.better not in ("higher", "lower", "none"):
            raise SpecError(f"{where}: metrics.{m.name}.better: {m.better!r}; valid: higher, lower, none")
    return TableSpec(name=doc.get("name", Path(where).stem), title=doc.get("title", ""),
                     rows=tuple(doc.get("rows", ("dataset", "attack"))), groups=groups,
                     group_by=doc.get("group_by", "defense"), metrics=metrics, filters=doc.get("filters", {}),
                     order=doc.get("order", {}), labels=doc.get("labels", {}), variants=doc.get("variants", {}),
                     sweep=doc.get("sweep"),
                     reference=doc.get("reference"), caption=doc.get("caption", ""),
                     notes=tuple(doc.get("notes", ())), complete=bool(doc.get("complete", False)))


def _metric(m: str | Mapping[str, Any]) -> MetricSpec:
    if isinstance(m, str):
        return METRIC_DEFAULTS.get(m, MetricSpec(m, m))
    base = METRIC_DEFAULTS.get(m["name"], MetricSpec(m["name"], m["name"]))
    return MetricSpec(**{**base.__dict__, **m})


def spec_names() -> list[str]:
    return sorted(p.stem for p in SPECS_DIR.glob("*.yaml"))


def spec_for_sweep(sweep: str) -> TableSpec | None:
    """The spec named after the sweep, or the spec whose ``sweep:`` names it (None: use a generic layout)."""
    if (SPECS_DIR / f"{sweep}.yaml").exists():
        return load_spec(sweep)
    for name in spec_names():
        spec = load_spec(name)
        if spec.sweep == sweep:
            return spec
    return None


# ----------------------------------------------------------------------------------------------------------
# Aggregation: cells frame -> table
# ----------------------------------------------------------------------------------------------------------
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

    @property
    def missing(self) -> int:
        return sum(v is None for v in self.stats.values())


def add_derived(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns the papers report that the runner stores in another form (seed 002 Table 1).

    poison_kept = 1 - flag_recall (share of poisoned images remaining); clean_kept = kept clean / all clean,
    from kept precision, |kept| and |flagged|, with n_poison = the count stored with flag_recall (else
    flag_precision * |flagged| / flag_recall, undefined when nothing poisoned was flagged). Without a defense
    (``defense == 'none'``) every image is kept: both are 1 (seed 002 Table 3's baseline row: 100 / 100).
    """
    frame = frame.copy()
    if "flag_recall" in frame:
        frame["poison_kept"] = 1 - frame["flag_recall"]
        if {"kept_precision", "n_kept", "n_flagged"} <= set(frame):
            if "flag_recall_n" in frame:
                n_pois = frame["flag_recall_n"]
            else:
                n_pois = frame.get("flag_precision", math.nan) * frame["n_flagged"] / frame["flag_recall"]
            n_clean = frame["n_kept"] + frame["n_flagged"] - n_pois
            frame["clean_kept"] = frame["kept_precision"] * frame["n_kept"] / n_clean
    if "defense" in frame:
        none = frame["defense"] == "none"
        for col in ("poison_kept", "clean_kept"):
            frame[col] = frame[col].where(~none, 1.0) if col in frame else none.map({True: 1.0, False: math.nan})
    return frame


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


def default_spec(frame: pd.DataFrame, name: str) -> TableSpec:
    """A layout for a sweep without a spec: rows = dataset x attack (+ every other label that varies, seeds
    aside), one group per defense ('none' = Before, unranked), ASR and BA."""
    varying = [c for c in ("model", "recipe", "clean_ratio")
               if c in frame and frame[c].nunique(dropna=False) > 1]
    return TableSpec(name=name, title=f"Sweep {name}", rows=("dataset", "attack", *varying))


def default_groups(frame: pd.DataFrame, by: str = "defense") -> tuple[GroupSpec, ...]:
    """One group per value of ``by`` in first-seen order; 'none' first, labelled 'Before' and not ranked."""
    values = list(dict.fromkeys(frame[by].tolist())) if by in frame else []
    values.sort(key=lambda v: v != "none")
    return tuple(GroupSpec("Before" if v == "none" else _display(by, v), {by: v}, rank=v != "none")
                 for v in values)


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


def build_table(frame: pd.DataFrame, spec: TableSpec, provenance: Mapping[str, Any] | None = None) -> Table:
    """Aggregate a cells frame into ``spec``'s layout: mean/std/n over seeds, best and second-best marks."""
    frame = _apply_variants(apply_filters(add_derived(frame), spec.filters), spec.variants)
    groups = list(spec.groups or default_groups(frame, spec.group_by))
    keyed = frame.assign(_row=list(zip(*[_column(frame, c) for c in spec.rows]))) if len(frame) else \
        frame.assign(_row=[])
    rows = _ordered_rows(keyed["_row"].tolist() + _reference_rows(spec, frame), spec)
    stats: dict[tuple[int, int, str], Stat | None] = {}
    for gi, g in enumerate(groups):
        sub = keyed
        for col, want in g.where.items():
            sub = sub[_column(sub, col) == want]
        by_row = {r: part for r, part in sub.groupby("_row", sort=False)} if len(sub) else {}
        for ri, r in enumerate(rows):
            for m in spec.metrics:
                part = by_row.get(r)
                values = part[m.name].dropna() if part is not None and m.name in part else pd.Series([], dtype=float)
                stats[(ri, gi, m.name)] = _stat(values)
    ns = [s.n for s in stats.values() if s is not None]
    prov = dict(provenance) if provenance is not None else provenance_of(frame)
    table = Table(spec, rows, groups, stats, {}, prov,
                  common_n=max(set(ns), key=ns.count) if ns else 1)
    table.marks = rank_marks(table)
    return table


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
    than two candidates; 'second' only with at least three (with two it would just mark the loser).
    """
    marks: dict[tuple[int, int, str], str] = {}
    for m in table.spec.metrics:
        if m.better == "none":
            continue
        sign = -1.0 if m.better == "higher" else 1.0
        for ri in range(len(table.rows)):
            cand = {gi: round(s.mean * m.scale, m.digits) for gi, g in enumerate(table.groups)
                    if g.rank and (s := table.stats[(ri, gi, m.name)]) is not None and not math.isnan(s.mean)}
            if len(cand) < 2:
                continue
            levels = sorted(set(cand.values()), key=lambda v: sign * v)
            for gi, v in cand.items():
                if v == levels[0]:
                    marks[(ri, gi, m.name)] = "best"
                elif len(cand) >= 3 and len(levels) > 1 and v == levels[1]:
                    marks[(ri, gi, m.name)] = "second"
    return marks


# ----------------------------------------------------------------------------------------------------------
# Views shared by the renderers
# ----------------------------------------------------------------------------------------------------------
def cell_parts(table: Table, ri: int, gi: int, metric: MetricSpec) -> dict[str, Any]:
    """Strings for one cell: mean, std (or ''), n (only when it differs from the table's usual n), mark."""
    s = table.stats[(ri, gi, metric.name)]
    if s is None:
        return {"missing": True, "mean": MISSING, "std": "", "n": "", "mark": ""}
    f = f"{{:.{metric.digits}f}}"
    return {"missing": False, "mean": f.format(s.mean * metric.scale),
            "std": "" if math.isnan(s.std) else f.format(s.std * metric.scale),
            "n": str(s.n) if s.n != table.common_n else "", "mark": table.marks.get((ri, gi, metric.name), "")}


def cell_text(parts: Mapping[str, Any]) -> str:
    text = parts["mean"] + (f" ± {parts['std']}" if parts["std"] else "")
    return text + (f" (n={parts['n']})" if parts["n"] else "")


def _view(table: Table) -> dict[str, Any]:
    spec = table.spec
    rows = []
    for ri, key in enumerate(table.rows):
        labels = [spec.labels.get(c, {}).get(str(v), _display(c, v)) for c, v in zip(spec.rows, key)]
        cells = [dict(cell_parts(table, ri, gi, m), group=g.label, metric=m.label or m.name)
                 for gi, g in enumerate(table.groups) for m in spec.metrics]
        rows.append({"labels": labels, "cells": cells})
    for i in range(len(rows) - 1, 0, -1):          # blank a repeated leading label (the paper's layout)
        if rows[i]["labels"][:1] == rows[i - 1]["labels"][:1]:
            rows[i]["show_first"] = False
    notes = []
    if table.common_n > 1:
        notes.append(f"mean ± std over seeds (n = {table.common_n} per cell; (n=k) marks a cell with another count).")
    if table.missing:
        notes.append(MISSING_NOTE)
    notes.extend(spec.notes)
    directions = ", ".join(f"{m.label or m.name} {'↑' if m.better == 'higher' else '↓'}"
                           for m in spec.metrics if m.better != "none")
    notes.append(f"Bold: best, underlined: second best per row among the defenses ({directions}).")
    headers = [spec.labels.get("headers", {}).get(c, c.replace("_", " ").capitalize()) for c in spec.rows]
    return {"title": spec.title or spec.name, "caption": spec.caption, "row_headers": headers,
            "groups": [g.label for g in table.groups], "metrics": [m.label or m.name for m in spec.metrics],
            "rows": rows, "notes": notes, "provenance": table.provenance}


def table_frame(table: Table) -> pd.DataFrame:
    """One tidy row per (row, group, metric): mean, std, n, mark and the printed text (percent)."""
    out = []
    for ri, key in enumerate(table.rows):
        for gi, g in enumerate(table.groups):
            for m in table.spec.metrics:
                s = table.stats[(ri, gi, m.name)]
                parts = cell_parts(table, ri, gi, m)
                out.append({**dict(zip(table.spec.rows, key)), "group": g.label, "metric": m.name,
                            "mean": None if s is None else round(s.mean * m.scale, 6),
                            "std": None if s is None or math.isnan(s.std) else round(s.std * m.scale, 6),
                            "n": 0 if s is None else s.n, "mark": parts["mark"], "text": cell_text(parts)})
    return pd.DataFrame(out)


def table_csv(table: Table) -> str:
    return table_frame(table).to_csv(index=False)


# ----------------------------------------------------------------------------------------------------------
# Rendering: Jinja2 (HTML autoescaped; LaTeX with its own delimiters and escape filter)
# ----------------------------------------------------------------------------------------------------------
_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_RE = re.compile("|".join(re.escape(k) for k in _LATEX_ESCAPES))


def latex_escape(value: Any) -> str:
    """Escape LaTeX's special characters (\\ & % $ # _ { } ~ ^) so a label prints as written."""
    text = _LATEX_RE.sub(lambda m: _LATEX_ESCAPES[m.group(0)], str(value))
    return text.replace("±", r"$\pm$").replace("—", "---").replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$").replace("†", r"\dag{}")


def _html_env():
    import jinja2
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
                              autoescape=jinja2.select_autoescape(["html", "html.j2"]), trim_blocks=True,
                              lstrip_blocks=True, undefined=jinja2.StrictUndefined)


def _latex_env():
    import jinja2
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)), autoescape=False,
                             block_start_string=r"\BLOCK{", block_end_string="}",
                             variable_start_string=r"\VAR{", variable_end_string="}",
                             comment_start_string=r"\#{", comment_end_string="}", line_comment_prefix="%#",
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["tex"] = latex_escape
    return env


def render_html(table: Table, comparison: pd.DataFrame | None = None, figures: Sequence[Path] = ()) -> str:
    """One self-contained HTML page: the table, the paper-vs-ours view, figures inlined as PNG data URIs."""
    import base64

    comp = _comparison_view(comparison) if comparison is not None and len(comparison) else None
    imgs = [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()} for p in figures]
    return _html_env().get_template("table.html.j2").render(t=_view(table), comparison=comp, figures=imgs)


def render_latex(table: Table) -> str:
    """A booktabs ``table`` environment (needs \\usepackage{booktabs})."""
    return _latex_env().get_template("table.tex.j2").render(t=_view(table))


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


# ----------------------------------------------------------------------------------------------------------
# Paper vs ours
# ----------------------------------------------------------------------------------------------------------
def load_reference(name_or_path: str | Path) -> pd.DataFrame:
    """A transcribed paper table: paper, table, dataset, attack, defense, metric, value (percent), note."""
    path = Path(name_or_path)
    if not path.suffix:
        path = REFERENCE_DIR / f"{name_or_path}.csv"
    ref = pd.read_csv(path, keep_default_na=False, dtype={"value": float})
    return ref


def paper_vs_ours(table: Table, reference: pd.DataFrame) -> pd.DataFrame:
    """Both numbers and ours - paper (points) for every cell of ``table`` the paper also reports.

    Our rows are matched to the paper's through the spec's display labels (``labels`` / the group labels),
    so the reference CSV keeps the paper's spelling ('Cifar-10', 'BadNets', 'I-BAU').
    """
    view, spec = _view(table), table.spec
    ref = reference.set_index(["dataset", "attack", "defense", "metric"])["value"].to_dict()
    out = []
    for ri, row in enumerate(view["rows"]):
        labels = dict(zip(spec.rows, row["labels"]))
        for gi, g in enumerate(table.groups):
            for m in spec.metrics:
                paper = ref.get((labels.get("dataset"), labels.get("attack"), g.label, m.name))
                s = table.stats[(ri, gi, m.name)]
                ours = None if s is None else s.mean * m.scale
                if paper is None:
                    continue
                out.append({**labels, "group": g.label, "metric": m.name, "paper": paper, "ours": ours,
                            "diff": None if ours is None else ours - paper, "n": 0 if s is None else s.n})
    return pd.DataFrame(out)


def _comparison_view(comp: pd.DataFrame) -> list[dict[str, str]]:
    def f(v: Any) -> str:
        return MISSING if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.2f}"
    return [{"row": " / ".join(str(r[c]) for c in comp.columns[:comp.columns.get_loc("group")]),
             "group": r["group"], "metric": r["metric"], "paper": f"{r['paper']:.2f}",
             "ours": MISSING if pd.isna(r["ours"]) else f"{r['ours']:.2f}", "diff": f(r["diff"]),
             "n": str(r["n"])} for _, r in comp.iterrows()]


# ----------------------------------------------------------------------------------------------------------
# Figures (Agg backend, deterministic files, one fixed colour per method)
# ----------------------------------------------------------------------------------------------------------
_METHOD_ORDER = ("none", "ft", "nad", "ibau", "nc", "mcl", "anp", "mcr", "abl", "dbr", "dst", "dbd", "fp",
                 "ac", "ss", "lfd", "ssl_cleanse", "mesa")
_PALETTE = ("#4d4d4d", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#d62728", "#8c564b", "#e377c2", "#17becf",
            "#bcbd22", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#ff9896", "#c49c94", "#f7b6d2", "#9edae5")


def method_color(name: str) -> str:
    """The one colour of a method in every figure (known methods: a fixed slot; others: a stable hash)."""
    if name in _METHOD_ORDER:
        return _PALETTE[_METHOD_ORDER.index(name)]
    return _PALETTE[int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(_PALETTE)]


def ablation_figure(frame: pd.DataFrame, x: str, y: str, out_stem: Path, hue: str = "defense",
                    filters: Mapping[str, Any] | None = None, scale: float = 100.0) -> list[Path]:
    """Metric ``y`` against ``x`` (a frame column or a dotted config path such as ``defense.tau``): one panel
    per (dataset, attack), one line per ``hue`` value in its fixed colour, error bars = std over seeds.

    Writes OUT_STEM.png and OUT_STEM.pdf (no timestamps in either, so reruns give identical files).

    Raises:
        SpecError: ``y`` is not a metric of the frame, or ``x`` is neither a column nor a config path.
    """
    plt = _pyplot()
    data = apply_filters(add_derived(frame), filters or {})
    if y not in data:
        raise SpecError(f"y={y}: no such metric in the sweep; valid: ba, asr, ra or a defense metric")
    data = data.assign(_x=_column(data, x)).dropna(subset=[y, "_x"])
    panels = list(dict.fromkeys(zip(data["dataset"], data["attack"]))) or [("", "")]
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.8 * ncols, 3.0 * nrows), dpi=120, squeeze=False)
    label = METRIC_DEFAULTS.get(y, MetricSpec(y, y)).label or y
    for ax, (ds, atk) in zip(axes.flat, panels):
        part = data[(data["dataset"] == ds) & (data["attack"] == atk)]
        categories = _categories(data["_x"])
        for name, line in part.groupby(hue, sort=True):
            agg = line.groupby("_x")[y].agg(["mean", "std"]).sort_index()
            xs = [categories.index(v) for v in agg.index] if categories else agg.index.astype(float)
            ax.errorbar(xs, agg["mean"] * scale, yerr=agg["std"].fillna(0) * scale,
                        label=_display(hue, name), color=method_color(str(name)), marker="o", capsize=3)
        if categories:           # a categorical axis (LfD Fig. 4: the teacher) keeps the first-seen order
            ax.set_xticks(range(len(categories)), [_display("model", c) for c in categories], fontsize=7)
        ax.set_title(f"{_display('dataset', ds)} / {_display('attack', atk)}", fontsize=9)
        ax.set_xlabel(x)
        ax.set_ylabel(f"{label} (%)" if scale == 100 else label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    return _save(fig, out_stem)


def _categories(values: pd.Series) -> list[Any]:
    """The x values in first-seen order when they are not all numbers (else [] for a numeric axis)."""
    vals = list(dict.fromkeys(values.tolist()))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
    return [] if numeric else vals


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams["svg.hashsalt"] = "bdbench"
    return plt


def _save(fig: Any, out_stem: Path) -> list[Path]:
    """OUT_STEM.png and OUT_STEM.pdf without timestamps or version strings, so reruns give identical files."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem.with_suffix(".png"), out_stem.with_suffix(".pdf")]
    fig.savefig(paths[0], metadata={"Software": None})
    fig.savefig(paths[1], metadata={"CreationDate": None, "Producer": None, "Creator": None})
    plt.close(fig)
    return paths


def sweep_curves(storage: Any, sweep: str) -> pd.DataFrame:
    """Per-epoch curves of a sweep's defend jobs (sweeps with ``curves: true``), with the cell labels:
    dataset, attack, defense, defense_variant, seed, step, name, value."""
    from bench.db.baselines import run_curves
    from bench.results import variant_labels

    cells = [c for c in storage.cells(sweep) if c["chain"].get("defend")]
    if not cells:
        return pd.DataFrame(columns=["dataset", "attack", "defense", "defense_variant", "seed", "step", "name",
                                     "value"])
    variants = variant_labels([c["config"]["defense"] for c in cells])
    labels = pd.DataFrame([{"key": c["chain"]["defend"], "dataset": c["labels"].get("dataset"),
                            "attack": c["labels"].get("attack"), "defense": c["labels"].get("defense"),
                            "defense_variant": v, "seed": c["labels"].get("seed")} for c, v in zip(cells, variants)])
    curves = run_curves(storage, labels["key"].unique().tolist())
    return labels.drop_duplicates("key").merge(curves, on="key").drop(columns=["key"])


def curves_figure(curves: pd.DataFrame, out_stem: Path, metrics: Sequence[str] = ("ba", "asr"),
                  hue: str = "defense_variant", scale: float = 100.0) -> list[Path]:
    """Per-epoch curves (D-BR Fig. 5, LfD Fig. 1 and 5): one panel per (dataset, attack) and metric, one line
    per ``hue`` value in its method colour, mean over seeds with a ±std band.

    Raises:
        SpecError: none of ``metrics`` was recorded.
    """
    plt = _pyplot()
    data = curves[curves["name"].isin(metrics)]
    if data.empty:
        have = sorted(set(curves["name"])) if len(curves) else []
        raise SpecError(f"no curves for {', '.join(metrics)}; recorded: {', '.join(have) or 'none'} "
                        "(run the sweep with 'curves: true')")
    names = [m for m in metrics if m in set(data["name"])]
    panels = list(dict.fromkeys(zip(data["dataset"], data["attack"])))
    fig, axes = plt.subplots(len(panels), len(names), figsize=(3.8 * len(names), 2.8 * len(panels)), dpi=120,
                             squeeze=False)
    for row, (ds, atk) in enumerate(panels):
        for col, m in enumerate(names):
            ax = axes[row][col]
            part = data[(data["dataset"] == ds) & (data["attack"] == atk) & (data["name"] == m)]
            for name, line in part.groupby(hue, sort=True):
                base = str(line["defense"].iloc[0]) if "defense" in line else str(name)
                agg = line.groupby("step")["value"].agg(["mean", "std"]).sort_index()
                mean, std = agg["mean"] * scale, agg["std"].fillna(0) * scale
                color = method_color(base) if name == base else method_color(str(name))
                ax.plot(agg.index, mean, label=str(name), color=color)
                ax.fill_between(agg.index, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)
            label = METRIC_DEFAULTS.get(m, MetricSpec(m, m)).label or m
            ax.set_title(f"{_display('dataset', ds)} / {_display('attack', atk)}: {label}", fontsize=9)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
            ax.set_ylabel(f"{label} (%)" if scale == 100 else label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    return _save(fig, out_stem)


def sweep_scores(storage: Any, store_root: str | Path, sweep: str, limit: int = 12) -> list[dict[str, Any]]:
    """The per-sample suspicion scores of a sweep's defend jobs that returned them, with ground truth:
    [{title, defense, scores (1-D array), poisoned (bool array)}], first ``limit`` cells."""
    import numpy as np

    from bench.attack import POISONED
    from bench.store import ArtifactStore

    store = ArtifactStore(store_root)
    out = []
    for c in storage.cells(sweep):
        defend, poison = c["chain"].get("defend"), c["chain"].get("poison")
        if not defend or not poison:
            continue
        arts = storage.artifacts([defend, poison])
        if "scores" not in arts[defend] or "poison" not in arts[poison]:
            continue
        scores = store.get(arts[defend]["scores"])["scores"]
        if scores is None:
            continue
        kind = store.get(arts[poison]["poison"])["kind"]
        lab = c["labels"]
        out.append({"title": f"{_display('attack', lab.get('attack'))} / {_display('defense', lab.get('defense'))}"
                             f" / seed {lab.get('seed')}", "defense": lab.get("defense"),
                    "scores": np.asarray(scores.detach().cpu().double()),
                    "poisoned": np.asarray((kind == POISONED).cpu())})
        if len(out) >= limit:
            break
    return out


def score_histogram(panels: Sequence[Mapping[str, Any]], out_stem: Path, bins: int = 50,
                    xlabel: str = "score (higher = more suspicious)") -> list[Path]:
    """Histograms of a defense's per-sample scores for clean vs poisoned training samples (D-BR Fig. 3: the
    FCT of clean and poisoned samples), one panel per entry of :func:`sweep_scores`; densities, shared bins."""
    import numpy as np

    if not panels:
        raise SpecError("no defense in the sweep returned per-sample scores (e.g. dbr, dst, ac, ss, ssl_cleanse)")
    plt = _pyplot()
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.8 * ncols, 2.8 * nrows), dpi=120, squeeze=False)
    for ax, p in zip(axes.flat, panels):
        scores, poisoned = np.asarray(p["scores"], dtype=float), np.asarray(p["poisoned"], dtype=bool)
        finite = np.isfinite(scores)
        edges = np.histogram_bin_edges(scores[finite], bins=bins)
        ax.hist(scores[finite & ~poisoned], bins=edges, density=True, alpha=0.6, color="#1f77b4", label="clean")
        ax.hist(scores[finite & poisoned], bins=edges, density=True, alpha=0.6, color="#d62728", label="poisoned")
        ax.set_title(p.get("title", ""), fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    return _save(fig, out_stem)


def cell_features(storage: Any, store_root: str | Path, cell: Mapping[str, Any], stage: str = "defend",
                  per_class: int = 50, max_poisoned: int = 200, seed: int = 0,
                  data_root: str | None = None) -> dict[str, Any]:
    """Penultimate features (``bench.train.embed``) of a cell's model (``stage``: defend = after the defense,
    train = the backdoored model) on its poisoned training set: up to ``per_class`` clean images per class and
    ``max_poisoned`` poisoned ones, drawn with a seeded generator. ``cell`` is an entry of Storage.cells().

    Returns {features (N x D array), labels (original class), poisoned (bool)}.

    Raises:
        SpecError: the cell has no finished job of that stage (or its artifacts are gone).
    """
    import numpy as np
    import torch

    from bench.attack import POISONED, PoisonedSet
    from bench.models import create_from_spec
    from bench.stages import StageRunner
    from bench.train import embed

    runner = StageRunner(store_root, device="cpu", data_root=data_root)
    keys = {s: k for s, k in cell["chain"].items() if s in (stage, "poison")}
    arts = storage.artifacts(list(keys.values())) if len(keys) == 2 else {}
    if len(keys) < 2 or "poison" not in arts[keys["poison"]] or "model" not in arts[keys[stage]]:
        raise SpecError(f"cell {cell['key'][:12]}: no finished {stage} and poison jobs with artifacts")
    bundle = runner.dataset(cell["config"]["dataset"])
    poisoned = PoisonedSet.from_dict(runner.store.get(arts[keys["poison"]]["poison"]))
    saved = runner.store.get(arts[keys[stage]]["model"])
    model = create_from_spec(saved["spec"], bundle.info())
    model.load_state_dict(saved["state_dict"])
    model.eval()
    train = poisoned.apply(bundle.train)
    is_p = poisoned.kind == POISONED
    gen = torch.Generator().manual_seed(seed)
    pick = []
    for cls in torch.unique(bundle.train.labels):
        idx = torch.nonzero((bundle.train.labels == cls) & ~is_p).flatten()
        pick.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    pidx = torch.nonzero(is_p).flatten()
    pick.append(pidx[torch.randperm(len(pidx), generator=gen)[:max_poisoned]])
    idx = torch.cat(pick)
    feats = embed(model, train.images[idx])
    return {"features": np.asarray(feats.detach().cpu().double()), "labels": np.asarray(bundle.train.labels[idx]),
            "poisoned": np.asarray(is_p[idx])}


def tsne_figure(features: Any, labels: Any, poisoned: Any, out_stem: Path, title: str = "",
                seed: int = 0) -> list[Path]:
    """t-SNE (scikit-learn, seeded) of penultimate features: clean samples coloured by class, poisoned
    samples in black (MCL Fig. 1/3, LfD Fig. 7)."""
    import numpy as np
    from sklearn.manifold import TSNE

    plt = _pyplot()
    x = np.asarray(features, dtype=np.float64)
    labels, poisoned = np.asarray(labels), np.asarray(poisoned, dtype=bool)
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    fig, ax = plt.subplots(figsize=(4.5, 4.2), dpi=120)
    cmap = plt.get_cmap("tab10" if len(np.unique(labels)) <= 10 else "tab20")
    for i, cls in enumerate(np.unique(labels)):
        m = (labels == cls) & ~poisoned
        ax.scatter(emb[m, 0], emb[m, 1], s=6, color=cmap(i % cmap.N), label=str(cls))
    ax.scatter(emb[poisoned, 0], emb[poisoned, 1], s=8, color="black", label="poisoned")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, markerscale=2, loc="best", ncol=2)
    return _save(fig, out_stem)


# ----------------------------------------------------------------------------------------------------------
# Regression checks: baseline values and verdicts
# ----------------------------------------------------------------------------------------------------------
DEFAULT_TOLERANCE = {"ba": 0.01, "asr": 0.03, "ra": 0.03}     # fractions (0.01 = 1 point)
DETECTION_TOLERANCE = 0.05
CHECKED = ("ba", "asr", "ra", "flag_precision", "flag_recall", "kept_precision", "auroc")
SEED_SPREAD = 2.0           # tolerance >= SEED_SPREAD x the std over seeds of the cell's baseline values
VERDICT_ORDER = ("fail", "insufficient", "warn", "pass")


def better_of(metric: str) -> str:
    return METRIC_DEFAULTS.get(metric, MetricSpec(metric)).better


def baseline_values(frame: pd.DataFrame, metrics: Iterable[str] = CHECKED) -> pd.DataFrame:
    """Per evaluate key and metric: value and tolerance (default per metric, widened by the seed spread).

    Returns a frame with key, dataset, attack, defense, clean_ratio, seed, metric, value, tolerance, better.
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
                    rows.append({"key": r["key"], **{c: r[c] for c in LABELS}, "metric": m,
                                 "value": float(r[m]), "tolerance": round(tol, 6), "better": better_of(m)})
    out = pd.DataFrame(rows, columns=["key", *LABELS, "metric", "value", "tolerance", "better"])
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
    ``bench baseline save --out`` / ``export`` write them), by those labels when exactly one cell has them.
    """
    from bench.results import LABELS

    ours, by_labels = {}, {}
    labelled = all(c in baseline for c in LABELS) and all(c in frame for c in LABELS)
    if labelled:
        counts = pd.Series([_labels_of(r) for _, r in frame.iterrows()]).value_counts()
        unique = {k for k, n in counts.items() if n == 1}
    for _, r in frame.iterrows():
        for m in baseline["metric"].unique():
            if m in r and pd.notna(r[m]):
                ours[(r["key"], m)] = float(r[m])
                if labelled and (lab := _labels_of(r)) in unique:
                    by_labels[(lab, m)] = float(r[m])
    out = []
    for _, b in baseline.iterrows():
        now = ours.get((b["key"], b["metric"]))
        if now is None and labelled:     # the cell's key moved (a new plugin option): match on its labels
            now = by_labels.get((_labels_of(b), b["metric"]))
        tol = b["tolerance"] if pd.notna(b.get("tolerance")) else DEFAULT_TOLERANCE.get(b["metric"], DETECTION_TOLERANCE)
        verdict, delta = "insufficient", None
        if now is not None and pd.notna(b["value"]):
            delta = now - float(b["value"])
            sign = -1.0 if better_of(b["metric"]) == "lower" else 1.0
            worse = -sign * delta
            verdict = "pass" if abs(delta) <= tol + 1e-12 else ("fail" if worse > 0 else "warn")
        out.append({**{k: b[k] for k in b.index if k not in ("value", "tolerance", "better")},
                    "baseline": b["value"], "ours": now, "delta": delta, "tolerance": tol, "verdict": verdict})
    return pd.DataFrame(out)


def _labels_of(row: Any) -> tuple:
    from bench.results import LABELS
    return tuple(None if pd.isna(row[c]) else (float(row[c]) if c == "clean_ratio" else str(row[c]))
                 for c in LABELS)


def cell_verdicts(result: pd.DataFrame) -> pd.DataFrame:
    """The worst verdict per cell (evaluate key), with the metrics that moved."""
    rows = []
    for key, part in result.groupby("key", sort=False):
        worst = min(part["verdict"], key=VERDICT_ORDER.index)
        moved = [f"{r.metric} {_pts(r.baseline)}→{_pts(r.ours)} ({r.verdict}, tol {_pts(r.tolerance)})"
                 for r in part.itertuples() if r.verdict != "pass"]
        first = part.iloc[0]
        rows.append({"key": key, **{c: first.get(c) for c in ("dataset", "attack", "defense", "clean_ratio", "seed")},
                     "verdict": worst, "moved": "; ".join(moved)})
    return pd.DataFrame(rows)


def _pts(v: Any) -> str:
    return MISSING if v is None or pd.isna(v) else f"{100 * float(v):.2f}"
