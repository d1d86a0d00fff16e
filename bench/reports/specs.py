"""Table specs: ``reports/specs/NAME.yaml`` read into a :class:`TableSpec` (rows, column groups, metrics with the
direction in which each is better, filters, display labels, the reference CSV of the paper's numbers), and the
transcribed paper tables under ``reports/reference``."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

REPORTS = Path(__file__).resolve().parents[2] / "reports"
SPECS_DIR = REPORTS / "specs"
TEMPLATES_DIR = REPORTS / "templates"
REFERENCE_DIR = REPORTS / "reference"
MISSING = "—"
MISSING_NOTE = "† — : no finished run for this cell (not in the sweep, failed, or still pending)."
GATED_MARK = "‡"
GATED_NOTE = ("‡ attack did not take: the backdoored model's ASR before any defense is below 90 % (or its BA "
              "below 30 %); shown, never ranked.")


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
    "trusted_precision": MetricSpec("trusted_precision", "Trusted prec.", "higher"),   # D-BR/D-ST: D-hat_c
    "clean_kept": MetricSpec("clean_kept", "clean", "higher"),
    "poison_kept": MetricSpec("poison_kept", "backdoor", "lower"),
    "ba_delta": MetricSpec("ba_delta", "ΔBA", "none"), "asr_delta": MetricSpec("asr_delta", "ΔASR", "none"),
}
_SPEC_KEYS = set(TableSpec.__dataclass_fields__) | {"paper"}


def read_yaml(path: Path) -> Any:
    """The one YAML reader of reports (specs, claims): bench.config's YAML 1.2 loader (``1e-4`` is a float); a
    syntax error names the file, line and column."""
    from bench.config import ConfigError, load_yaml

    try:
        return load_yaml(Path(path).read_text(), str(path)) or {}
    except ConfigError as err:
        raise SpecError(str(err)) from None


class SpecError(ValueError):
    """A table spec that cannot be used (the message names the file, the key and what would be valid)."""


def load_spec(name_or_path: str | Path) -> TableSpec:
    """Read a table spec by name (``reports/specs/NAME.yaml``) or path.

    Raises:
        SpecError: unknown spec name or key, or a malformed entry.
    """
    from bench.config import closest

    path = Path(name_or_path)
    if not path.suffix:
        path = SPECS_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise SpecError(f"{name_or_path}: no such table spec; {closest(str(name_or_path), spec_names())}")
    doc = read_yaml(path)
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


def load_reference(name_or_path: str | Path) -> pd.DataFrame:
    """A transcribed paper table: paper, table, dataset, attack, defense, metric, value (percent), note."""
    path = Path(name_or_path)
    if not path.suffix:
        path = REFERENCE_DIR / f"{name_or_path}.csv"
    ref = pd.read_csv(path, keep_default_na=False, dtype={"value": float})
    return ref

