"""``bench report``, ``bench baseline`` and ``bench check``: each a docstring plus calls into bench.reports."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from bench.cli.options import db_option, storage_for, workspace_option

FORMATS = ("html", "tex", "csv")


def _formats(ctx, param, value: str) -> list[str]:
    out = [f.strip() for f in value.split(",") if f.strip()]
    for f in out:
        if f not in FORMATS:
            raise click.BadParameter(f"{f!r}; valid: {', '.join(FORMATS)} (comma-separated)")
    return out


def _figures(ctx, param, values) -> list[tuple[str, str]]:
    out = []
    for v in values:
        parts = dict(p.split("=", 1) for p in v.split(",") if "=" in p)
        if not {"x", "y"} <= set(parts):
            raise click.BadParameter(f"{v!r}; expected x=AXIS,y=METRIC[,COLUMN=VALUE...] (e.g. x=clean_ratio,y=asr)")
        x, y = parts.pop("x"), parts.pop("y")
        out.append((x, y, {k: _scalar(v) for k, v in parts.items()}))
    return out


def _scalar(text: str):
    from bench.config import load_yaml
    return load_yaml(text)


def _sweep_frame(storage, sweep: str):
    from bench.config import closest
    from bench.results import cells_frame

    names = storage.sweep_names()
    if sweep not in names:
        raise click.BadParameter(f"no sweep {sweep!r}; {closest(sweep, names)}", param_hint="'--sweep'")
    frame = cells_frame(storage, sweep)
    stale = frame["stale"].astype(bool) if not frame.empty else None
    if stale is not None and stale.any():
        why = sorted(set("; ".join(frame.loc[stale, "stale"]).split("; ")))
        click.echo(f"{sweep}: left out {int(stale.sum())} cells run with another plugin version "
                   f"({', '.join(why)}); re-run them to include them", err=True)
        frame = frame[~stale]
    return frame


@click.command()
@click.argument("target", metavar="SWEEP_OR_SPEC")
@click.option("--spec", default=None, help="Table spec (name in reports/specs or a .yaml path) for a sweep.")
@click.option("--sweep", "sweep_name", default=None, help="The sweep to read when SWEEP_OR_SPEC is a spec.")
@click.option("--format", "formats", default="html,tex,csv", show_default=True, callback=_formats,
              help="Comma-separated output formats: html, tex, csv.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("reports/out"),
              show_default=True, help="Output folder.")
@click.option("--figure", "figures", multiple=True, callback=_figures, metavar="x=AXIS,y=METRIC",
              help="An ablation figure: metric vs a column or config path (clean_ratio, defense.tau); extra "
                   "COLUMN=VALUE pairs filter the cells (defense=ft). Repeatable.")
@click.option("--reference", default=None, help="Paper numbers (reports/reference name or CSV); default: the spec's.")
@click.option("--curves", "curve_metrics", default=None, metavar="METRICS",
              help="Per-epoch curves of the defenses (sweeps with 'curves: true'), e.g. --curves ba,asr.")
@click.option("--scores", "score_hist", is_flag=True,
              help="Histograms of the per-sample scores of clean vs poisoned training samples (D-BR Fig. 3).")
@click.option("--tsne", "tsne_cells", multiple=True, metavar="COLUMN=VALUE,...",
              help="t-SNE of the penultimate features of the first cell matching the filter (e.g. "
                   "attack=badnets,defense=none,seed=0); poisoned samples in black. Repeatable.")
@click.option("--claims", "claims_file", default=None, metavar="NAME|FILE.yaml",
              help="Check a paper's claims (reports/claims/NAME.yaml) on the sweep; verdicts above the table.")
@workspace_option
@db_option
def report(target, spec, sweep_name, formats, out, figures, reference, curve_metrics, score_hist, tsne_cells,
           claims_file, workspace, db_url):
    """Render a sweep as a paper table (HTML, LaTeX, CSV), with paper vs ours and ablation figures.

    SWEEP_OR_SPEC is a sweep name (its spec: --spec, else reports/specs/SWEEP.yaml or the spec naming the
    sweep, else one group per defense) or a table spec (its sweep: --sweep, else the spec's 'sweep:').
    """
    from bench import reports as rp

    storage = storage_for(workspace, db_url, create=False)
    try:
        if target in storage.sweep_names():
            table_spec = rp.load_spec(spec) if spec else rp.spec_for_sweep(target)
            sweep_name = target
            frame = _sweep_frame(storage, sweep_name)
            table_spec = table_spec or rp.default_spec(frame, target)
        else:
            table_spec = rp.load_spec(target)
            sweep_name = sweep_name or table_spec.sweep
            if not sweep_name:
                raise click.BadParameter(f"spec {target!r} names no sweep; pass --sweep", param_hint="'--sweep'")
            frame = _sweep_frame(storage, sweep_name)
        table = rp.build_table(frame, table_spec, rp.provenance_of(frame, storage))
        verdicts = _claims(claims_file, frame) if claims_file else []
        ref_name = reference or table_spec.reference
        comparison = rp.paper_vs_ours(table, rp.load_reference(ref_name)) if ref_name else None
        out.mkdir(parents=True, exist_ok=True)
        stem = out / table_spec.name
        pngs = []
        for x, y, where in figures:
            paths = rp.ablation_figure(frame, x, y, out / f"{table_spec.name}_{y}_vs_{x.replace('.', '_')}",
                                       filters=where)
            pngs.append(paths[0])
            click.echo(f"wrote {paths[0]} and {paths[1].name}")
        for paths in _extra_figures(rp, storage, workspace, sweep_name, frame, out / table_spec.name,
                                    curve_metrics, score_hist, tsne_cells):
            pngs.append(paths[0])
            click.echo(f"wrote {paths[0]} and {paths[1].name}")
    except rp.SpecError as err:
        raise click.BadParameter(str(err), param_hint="'SWEEP_OR_SPEC'") from None
    written = _write(rp, table, comparison, pngs, formats, stem, verdicts)
    for p in written:
        click.echo(f"wrote {p}")
    _echo_claims(verdicts)
    if table.missing:
        click.echo(f"{table.missing} of {len(table.stats)} cells have no result (shown as —)")


def _extra_figures(rp, storage, workspace, sweep, frame, stem: Path, curve_metrics, score_hist, tsne_cells):
    """Curves, score histograms and t-SNE plots read from the database and the artifact store."""
    from bench.cli.options import artifacts_root

    if curve_metrics:
        metrics = [m.strip() for m in curve_metrics.split(",") if m.strip()]
        yield rp.curves_figure(rp.sweep_curves(storage, sweep), stem.parent / f"{stem.name}_curves", metrics)
    if score_hist:
        yield rp.score_histogram(rp.sweep_scores(storage, artifacts_root(workspace), sweep),
                                 stem.parent / f"{stem.name}_scores")
    for i, text in enumerate(tsne_cells):
        where = {k: _scalar(v) for k, v in (p.split("=", 1) for p in text.split(",") if "=" in p)}
        match = rp.apply_filters(frame, where)
        if match.empty:
            raise rp.SpecError(f"--tsne {text}: no cell of sweep {sweep!r} matches")
        key = match["key"].iloc[0]
        cell = next(c for c in storage.cells(sweep) if c["key"] == key)
        feats = rp.cell_features(storage, artifacts_root(workspace), cell)
        lab = cell["labels"]
        title = f"{lab.get('dataset')} / {lab.get('attack')} / {lab.get('defense')} / seed {lab.get('seed')}"
        yield rp.tsne_figure(feats["features"], feats["labels"], feats["poisoned"],
                             stem.parent / f"{stem.name}_tsne{i}", title=title)


def _write(rp, table, comparison, pngs, formats, stem: Path, verdicts=()) -> list[Path]:
    written = []
    if "html" in formats:
        written.append(stem.with_suffix(".html"))
        written[-1].write_text(rp.render_html(table, comparison, pngs, verdicts))
    if "tex" in formats:
        written.append(stem.with_suffix(".tex"))
        written[-1].write_text(rp.render_latex(table, verdicts))
    if "csv" in formats:
        written.append(stem.with_suffix(".csv"))
        written[-1].write_text(rp.table_csv(table))
        if comparison is not None and len(comparison):
            written.append(stem.parent / f"{stem.name}_vs_paper.csv")
            comparison.to_csv(written[-1], index=False)
        if verdicts:
            from bench.reports.claims import verdicts_frame
            written.append(stem.parent / f"{stem.name}_claims.csv")
            verdicts_frame(verdicts).to_csv(written[-1], index=False)
    return written


def _claims(claims_file: str, frame, scale: str | None = None):
    """The verdicts of a claims file on a cells frame (bad claims file: exit 2 with one line)."""
    from bench.reports.claims import ClaimError, evaluate, load_claims

    try:
        claims = load_claims(claims_file)
    except ClaimError as err:
        raise click.BadParameter(str(err), param_hint="'--claims'") from None
    return evaluate(claims, frame, scale)


def _echo_claims(verdicts) -> None:
    for v in verdicts:
        click.echo(f"[{v.verdict}] {v.claim.id} ({v.claim.source}; scale {v.claim.scale}): {v.numbers}"
                   + (f"  -- {v.reason}" if v.reason else ""))
    if verdicts:
        counts = {k: sum(v.verdict == k for v in verdicts) for k in ("holds", "fails", "not testable")}
        click.echo(f"{len(verdicts)} claims: " + ", ".join(f"{n} {k}" for k, n in counts.items()))


# -- baselines -------------------------------------------------------------------------------------------
@click.group()
def baseline():
    """Named regression baselines: save a sweep's values, export/import them as CSV."""


@baseline.command("save")
@click.argument("name")
@click.option("--sweep", "sweep_name", required=True, help="The sweep whose current values become the baseline.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the baseline as CSV (e.g. reports/baselines/NAME.csv).")
@workspace_option
@db_option
def baseline_save(name, sweep_name, out, workspace, db_url):
    """Store per cell (evaluate key) and metric the value and a tolerance (per-metric default, seed spread)."""
    from bench import reports as rp
    from bench.db.baselines import save_baseline

    storage = storage_for(workspace, db_url, create=False)
    values = rp.baseline_values(_sweep_frame(storage, sweep_name))
    if values.empty:
        raise click.ClickException(f"sweep {sweep_name!r} has no finished cells to store")
    n = save_baseline(storage, name, values.to_dict("records"), sweep=sweep_name)
    click.echo(f"baseline {name!r}: {n} values from sweep {sweep_name!r}")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        values.to_csv(out, index=False)
        click.echo(f"wrote {out}")


@baseline.command("export")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@workspace_option
@db_option
def baseline_export(name, file, workspace, db_url):
    """Write baseline NAME as CSV (key, cell labels, metric, value, tolerance) for committing to the repo."""
    storage = storage_for(workspace, db_url, create=False)
    frame = _stored_baseline(storage, name)
    file.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(file, index=False)
    click.echo(f"wrote {file} ({len(frame)} values)")


@baseline.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", default=None, help="Baseline name (default: the file's stem).")
@workspace_option
@db_option
def baseline_import(file, name, workspace, db_url):
    """Store a baseline CSV (as written by 'export' or 'save --out') in the database."""
    from bench.db.baselines import save_baseline

    frame = _read_baseline_csv(file)
    storage = storage_for(workspace, db_url)
    n = save_baseline(storage, name or file.stem, frame.to_dict("records"), description=f"imported from {file}")
    click.echo(f"baseline {name or file.stem!r}: {n} values")


def _stored_baseline(storage, name: str):
    from bench.config import closest
    from bench.db.baselines import baseline_names, load_baseline
    from bench.results import cells_frame

    try:
        info, frame = load_baseline(storage, name)
    except KeyError:
        raise click.BadParameter(f"no baseline {name!r}; {closest(name, baseline_names(storage))}",
                                 param_hint="'NAME'") from None
    if info["sweep"] and info["sweep"] in storage.sweep_names():     # add the cell labels for readers
        labels = cells_frame(storage, info["sweep"])
        cols = ["key", "dataset", "model", "recipe", "attack", "defense", "clean_ratio", "seed"]
        frame = frame.merge(labels[[c for c in cols if c in labels]].drop_duplicates("key"), on="key", how="left")
    from bench.reports import better_of
    return frame.assign(better=frame["metric"].map(better_of))


def _read_baseline_csv(file: Path):
    import pandas as pd

    frame = pd.read_csv(file, dtype={"key": str})
    missing = {"key", "metric", "value"} - set(frame.columns)
    if missing:
        raise click.BadParameter(f"{file}: missing columns {sorted(missing)}", param_hint="'--baseline'")
    return frame


# -- check -----------------------------------------------------------------------------------------------
@click.command()
@click.argument("sweep_arg", metavar="[SWEEP|RECORD.csv]", required=False)
@click.option("--sweep", "sweep_name", default=None, help="The sweep to check (or give it as SWEEP).")
@click.option("--baseline", "--against", "against", default=None, metavar="NAME|FILE.csv",
              help="A stored baseline name or a baseline CSV (reports/baselines/NAME.csv).")
@click.option("--claims", "claims_file", default=None, metavar="NAME|FILE.yaml",
              help="A paper's claims (reports/claims/NAME.yaml): one verdict per claim.")
@click.option("--scale", default=None, help="The scale of a RECORD.csv without a scale column (e.g. mini).")
@click.option("--verbose", is_flag=True, help="Print every value, not only the cells that moved.")
@workspace_option
@db_option
def check(sweep_arg, sweep_name, against, claims_file, scale, verbose, workspace, db_url):
    """Compare a sweep with a baseline (one verdict per cell: pass, warn, fail, insufficient) and/or check a
    paper's claims on it (holds, fails, not testable).

    A value fails when it is worse than the baseline by more than its tolerance in the metric's direction
    (ASR lower is better; BA, RA and detection metrics higher). The claims also run on a committed record
    (a baseline or export CSV given as RECORD.csv). Exit code 1 on any fail, 2 for bad input.
    """
    sweep_name = sweep_name or sweep_arg
    if not sweep_name:
        raise click.UsageError("name the sweep: bench check SWEEP --baseline NAME (or --claims FILE)")
    if not against and not claims_file:
        raise click.UsageError("give --baseline NAME|FILE.csv, --claims FILE, or both")
    record = Path(sweep_name)
    if record.suffix == ".csv":
        if against:
            raise click.BadParameter("a RECORD.csv takes --claims only", param_hint="'--baseline'")
        if not record.exists():
            raise click.BadParameter(f"{record}: no such record file", param_hint="'SWEEP'")
        from bench.reports.claims import record_from_csv
        storage, frame = None, record_from_csv(record)
    else:
        storage = storage_for(workspace, db_url, create=False)
        frame = _sweep_frame(storage, sweep_name)
    verdicts = _claims(claims_file, frame, scale) if claims_file else []
    failed = _check_baseline(storage, frame, against, verbose) if against else False
    _echo_claims(verdicts)
    sys.exit(1 if failed or any(v.verdict == "fails" for v in verdicts) else 0)


def _check_baseline(storage, frame, against: str, verbose: bool) -> bool:
    """Print the cells that moved against the baseline; True when any value fails."""
    import pandas as pd

    from bench import reports as rp
    from bench.reports.gate import NOT_TAKEN, with_before

    path = Path(against)
    if path.suffix == ".csv" and not path.exists():
        raise click.BadParameter(f"{path}: no such baseline file", param_hint="'--baseline'")
    base = _read_baseline_csv(path) if path.suffix == ".csv" else _stored_baseline(storage, against)
    result = rp.compare(frame, base)
    cells = rp.cell_verdicts(result)
    gate = with_before(frame).set_index("key")["gate"].to_dict() if len(frame) else {}
    cells["gate"] = cells["our_key"].map(lambda k: NOT_TAKEN if gate.get(k) == NOT_TAKEN else "")
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_colwidth", 120):
        shown = cells if verbose else cells[(cells["verdict"] != "pass") | (cells["gate"] != "")]
        if len(shown):
            click.echo(shown.drop(columns=["key", "our_key"]).assign(key=shown["key"].str[:12])
                       .to_string(index=False))
    counts = cells["verdict"].value_counts().to_dict()
    click.echo(f"{len(cells)} cells: " + ", ".join(f"{counts.get(v, 0)} {v}" for v in rp.VERDICT_ORDER)
               + (f"; {int((cells['gate'] != '').sum())} of them: {NOT_TAKEN}" if (cells["gate"] != "").any()
                  else ""))
    extra = rp.unmatched_cells(frame, result)
    if extra:
        click.echo(f"{len(extra)} cells of the sweep are not in the baseline (not checked)")
    return bool(counts.get("fail"))


COMMANDS = (report, baseline, check)
