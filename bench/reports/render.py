"""Rendering with Jinja2: one self-contained HTML page (autoescaped) and a booktabs LaTeX table (own delimiters
and an escape filter), from the same view of a :class:`~bench.reports.tables.Table`; the provenance footer."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from bench.reports.frames import _display
from bench.reports.specs import GATED_NOTE, MISSING, MISSING_NOTE, TEMPLATES_DIR
from bench.reports.tables import Table, cell_parts

# What the standard metrics mean (README's definitions), printed under every table that shows them.
METRIC_DEFINITIONS = {
    "ba": "BA: accuracy on the clean test set.",
    "asr": "ASR: attack success rate, the share of triggered test images whose true label is not the target that "
           "the model classifies as the target (all2all: as (y+1) mod C).",
    "ra": "RA: robust accuracy, the share of those triggered images classified as their true label.",
}


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
    if table.gated:
        notes.append(GATED_NOTE)
    notes.extend(spec.notes)
    directions = ", ".join(f"{m.label or m.name} {'↑' if m.better == 'higher' else '↓'}"
                           for m in spec.metrics if m.better != "none")
    notes.append(f"Bold: best, underlined: second best per row among the defenses ({directions}).")
    notes.extend(METRIC_DEFINITIONS[m.name] for m in spec.metrics if m.name in METRIC_DEFINITIONS)
    headers = [spec.labels.get("headers", {}).get(c, c.replace("_", " ").capitalize()) for c in spec.rows]
    return {"title": spec.title or spec.name, "caption": spec.caption, "row_headers": headers,
            "groups": [g.label for g in table.groups], "metrics": [m.label or m.name for m in spec.metrics],
            "rows": rows, "notes": notes, "provenance": table.provenance}


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_RE = re.compile("|".join(re.escape(k) for k in _LATEX_ESCAPES))


def latex_escape(value: Any) -> str:
    """Escape LaTeX's special characters (\\ & % $ # _ { } ~ ^) so a label prints as written."""
    text = _LATEX_RE.sub(lambda m: _LATEX_ESCAPES[m.group(0)], str(value))
    return text.replace("±", r"$\pm$").replace("—", "---").replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$").replace("†", r"\dag{}").replace("‡", r"\ddag{}") \
        .replace("≤", r"$\le$").replace("−", "-").replace("“", "``").replace("”", "''")


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


def render_html(table: Table, comparison: pd.DataFrame | None = None, figures: Sequence[Path] = (),
                claims: Sequence[Any] = ()) -> str:
    """One self-contained HTML page: the claims with their verdicts (:func:`bench.reports.claims.evaluate`)
    above the table, the table, the paper-vs-ours view, figures inlined as PNG data URIs."""
    import base64

    comp = _comparison_view(comparison) if comparison is not None and len(comparison) else None
    imgs = [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()} for p in figures]
    return _html_env().get_template("table.html.j2").render(t=_view(table), comparison=comp, figures=imgs,
                                                            claims=_claims_view(claims))


def render_latex(table: Table, claims: Sequence[Any] = ()) -> str:
    """A booktabs ``table`` environment (needs \\usepackage{booktabs}), then the claims as a compact list."""
    return _latex_env().get_template("table.tex.j2").render(t=_view(table), claims=_claims_view(claims))


def _claims_view(verdicts: Sequence[Any]) -> list[dict[str, str]]:
    return [{"id": v.claim.id, "source": v.claim.source, "quote": v.claim.quote, "scale": v.claim.scale,
             "verdict": v.verdict, "css": v.verdict.replace(" ", "-"), "numbers": v.numbers, "reason": v.reason}
            for v in verdicts]


def _comparison_view(comp: pd.DataFrame) -> list[dict[str, str]]:
    def f(v: Any) -> str:
        return MISSING if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.2f}"
    return [{"row": " / ".join(str(r[c]) for c in comp.columns[:comp.columns.get_loc("group")]),
             "group": r["group"], "metric": r["metric"], "paper": f"{r['paper']:.2f}",
             "ours": MISSING if pd.isna(r["ours"]) else f"{r['ours']:.2f}", "diff": f(r["diff"]),
             "n": str(r["n"])} for _, r in comp.iterrows()]

