"""Reports: a table spec turns the tidy cells frame into a paper's table, rendered as HTML, LaTeX and CSV; the
papers' claims are checked on the same frame.

The path is always spec -> frames -> rendered text, one module per concern:

- :mod:`~bench.reports.specs`: ``reports/specs/NAME.yaml`` -> :class:`TableSpec`; the reference CSVs.
- :mod:`~bench.reports.frames`: the cells frame as reports read it (derived and Δ columns, filters, variants).
- :mod:`~bench.reports.gate`: the validity gate (a cell whose attack did not take is never ranked).
- :mod:`~bench.reports.tables`: aggregation over seeds (mean, std, n) and best / second-best marks.
- :mod:`~bench.reports.render`: HTML and LaTeX through Jinja2; :mod:`~bench.reports.reference`: paper vs ours.
- :mod:`~bench.reports.figures`: ablation, curves, score histograms, t-SNE.
- :mod:`~bench.reports.regression`: ``bench baseline`` / ``bench check --against``.
- :mod:`~bench.reports.claims`: the papers' claims as data (``reports/claims/*.yaml``) and their verdicts.

Values in the database are fractions in [0, 1]; tables print them in percent (``MetricSpec.scale``).
"""
from bench.reports.figures import (
    ablation_figure,
    cell_features,
    curves_figure,
    method_color,
    score_histogram,
    sweep_curves,
    sweep_scores,
    tsne_figure,
)
from bench.reports.frames import add_derived, apply_filters
from bench.reports.reference import paper_vs_ours
from bench.reports.regression import (
    CHECKED,
    DEFAULT_TOLERANCE,
    DETECTION_TOLERANCE,
    SEED_SPREAD,
    VERDICT_ORDER,
    baseline_values,
    better_of,
    cell_verdicts,
    compare,
    unmatched_cells,
)
from bench.reports.render import METRIC_DEFINITIONS, latex_escape, render_html, render_latex
from bench.reports.specs import (
    METRIC_DEFAULTS,
    MISSING,
    MISSING_NOTE,
    REFERENCE_DIR,
    REPORTS,
    SPECS_DIR,
    TEMPLATES_DIR,
    GroupSpec,
    MetricSpec,
    SpecError,
    TableSpec,
    load_reference,
    load_spec,
    spec_for_sweep,
    spec_from_dict,
    spec_names,
)
from bench.reports.tables import (
    Stat,
    Table,
    build_table,
    cell_parts,
    cell_text,
    default_groups,
    default_spec,
    provenance_of,
    rank_marks,
    table_csv,
    table_frame,
)

__all__ = [
    "CHECKED", "DEFAULT_TOLERANCE", "DETECTION_TOLERANCE", "METRIC_DEFAULTS", "MISSING", "MISSING_NOTE",
    "REFERENCE_DIR", "REPORTS", "SEED_SPREAD", "SPECS_DIR", "TEMPLATES_DIR", "VERDICT_ORDER", "GroupSpec",
    "MetricSpec", "SpecError", "Stat", "Table", "TableSpec", "ablation_figure", "add_derived", "apply_filters",
    "baseline_values", "better_of", "build_table", "cell_features", "cell_parts", "cell_text", "cell_verdicts",
    "compare", "curves_figure", "default_groups", "default_spec", "latex_escape", "load_reference", "load_spec",
    "METRIC_DEFINITIONS", "method_color", "paper_vs_ours", "provenance_of", "rank_marks", "render_html", "render_latex",
    "score_histogram", "spec_for_sweep", "spec_from_dict", "spec_names", "sweep_curves", "sweep_scores",
    "table_csv", "table_frame", "tsne_figure", "unmatched_cells",
]
