"""The ``bench`` command line: a thin click group; each command is a docstring plus a library call.

Commands import torch inside their bodies so that ``bench --help`` is instant.  Every error a user can cause
(a bad option, sweep key, database URL, workspace, data root) prints one line and exits with code 2
(:class:`BenchGroup`); click's own three-line Usage/Try/Error form is not used.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from bench.cli.options import (
    artifacts_root,
    data_root_option,
    db_option,
    grace_option,
    heartbeat_option,
    max_attempts_option,
    only_option,
    profile_option,
    set_option,
    slurm_options,
    storage_for,
    sweep_name_option,
    workspace_option,
)


class BenchGroup(click.Group):
    """A click group whose user errors are one line: ``Error: bench sweep: <what is wrong>``, exit code 2.

    Handled here, for every command: click's usage errors, :class:`~bench.config.ConfigError` (bad sweep,
    spec or value) and database errors (:func:`bench.cli.options.storage_for` turns the ones it can foresee
    into usage errors naming ``--db`` or ``--workspace``; this catches the rest, e.g. a write refused later).
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        from sqlalchemy.exc import DBAPIError

        from bench.config import ConfigError

        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as err:
            sys.exit(err.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except click.ClickException as err:
            command = err.ctx.command_path if getattr(err, "ctx", None) else "bench"
            _one_line(f"{command}: {err.format_message()}", err.exit_code)
        except ConfigError as err:
            _one_line(str(err), 2)
        except DBAPIError as err:
            _one_line(f"database: {type(err.orig).__name__}: {err.orig}", 2)


def _one_line(message: str, code: int) -> None:
    click.echo("Error: " + " ".join(str(message).split()), err=True)
    sys.exit(code)


@click.group(cls=BenchGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="bdbench")
def main() -> None:
    """bdbench: run grids of backdoor attacks x defenses, store every result in SQL, report paper tables."""


def _load(file: str, sets, profile, only=()):
    from bench.config import ConfigError
    from bench.graph import build_graph
    from bench.sweep import load_sweep

    try:
        sweep = load_sweep(file, sets, profile, only=only)
        graph = build_graph(sweep.cells)
    except ConfigError as err:   # the graph refuses some cells (a checkpoint cell's defense): name the file too
        raise click.BadParameter(str(err if err.file else err.with_file(file)), param_hint="'SWEEP'") from None
    return sweep, graph


@main.command()
@click.argument("file", metavar="SWEEP", type=click.Path(dir_okay=False))
@set_option
@only_option
@profile_option
@workspace_option
@db_option
@data_root_option
@click.option("--dry-run", is_flag=True, help="Print the jobs per stage and how many are cached; run nothing.")
@click.option("--workers", type=int, default=None,
              help="Worker processes: default one per GPU, else one single-threaded worker per CPU core; 0 runs "
                   "jobs in this process (also single-threaded on CPU).")
@click.option("--threads", type=int, default=1, show_default=True,
              help="Intra-op threads per CPU worker.  1 keeps a job's result independent of the machine's cores; "
                   "more speeds up one long job on a large model (the run's device column records the count).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda.")
@click.option("--retry-failed", is_flag=True, help="Run jobs that failed in an earlier run again.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@slurm_options
def sweep(file, sets, only, profile, workspace, db_url, data_root, dry_run, workers, threads, device, retry_failed,
          progress, launcher, partition, gpus_per_task, cpus_per_task, mem, time_min, array_size, jobs_per_task, slurm_opts,
          wait, grace_s, max_attempts):
    """Run every cell of a sweep file (cached jobs are skipped).

    Exit code 0 when every job succeeded, 1 when any failed, 2 for bad input (nothing is written then).
    With --launcher slurm the jobs run in a Slurm job array of 'bench worker' tasks (see 'bench worker').
    """
    sw, graph = _load(file, sets, profile, only)
    if dry_run:
        _dry_run(sw, graph, workspace, db_url, data_root)
        return
    if launcher == "slurm":
        from bench.launch.slurm import SlurmOptions

        if retry_failed:
            raise click.BadParameter("needs the local launcher", param_hint="'--retry-failed'")
        extra = dict(_key_value(kv, "--slurm-opt") for kv in slurm_opts)
        ws = workspace.resolve()
        opts = SlurmOptions(folder=ws / "slurm", partition=partition, gpus_per_task=gpus_per_task,
                            cpus_per_task=cpus_per_task, mem=mem, time_min=time_min, array_size=array_size,
                            jobs_per_task=jobs_per_task, extra=extra)
        _sweep_on_slurm(sw, graph, ws, db_url, data_root, device, progress, wait, grace_s, max_attempts, opts)
        return
    from bench.results import cells_frame, summary_table
    from bench.runner import RunOptions, install_sigterm, run_sweep

    if workers is not None and workers < 0:
        raise click.BadParameter(f"{workers}: expected 0 (in this process) or more", param_hint="'--workers'")
    if threads < 1:
        raise click.BadParameter(f"{threads}: expected 1 or more", param_hint="'--threads'")
    _check_device(device)
    # the data checks read which jobs are done; a new workspace gets its database only once they passed
    storage = storage_for(workspace, db_url) if db_url or (workspace / "bench.db").exists() else None
    if storage:
        _same_profile(sw, storage)
    _preflight(sw, graph, storage.job_states(graph.jobs) if storage else {}, data_root)
    storage = storage or storage_for(workspace, db_url)
    install_sigterm()
    opts = RunOptions(workers=workers, device=device, retry_failed=retry_failed, data_root=data_root,
                      progress=progress, grace_s=grace_s, threads=threads)
    click.echo(f"sweep '{sw.name}': {len(sw.cells)} cells, {len(graph.jobs)} jobs (scale: {sw.scale})")
    if sw.overrides:
        said = f"overrides: {' '.join('--set ' + s for s in sw.overrides)}"
        if sw.name in storage.sweep_names():
            said += f"; these cells are added to sweep '{sw.name}' beside its earlier ones (variants show their options)"
        click.echo(said)
    summary = run_sweep(sw, storage, artifacts_root(workspace), opts)
    table = summary_table(cells_frame(storage, sw.name))
    if not table.empty:
        click.echo("BA = clean accuracy, ASR = attack success rate, RA = robust accuracy (triggered images "
                   "classified as their true label); mean ± std over seeds, in percent")
        click.echo(table.to_string(index=False))
    click.echo(f"{summary.ran} jobs ran, {summary.cached} cached, {len(summary.failed)} failed, "
               f"{summary.blocked} skipped (ancestor failed)")
    for f in summary.failed:
        error = "" if f.get("shown") else f"  {f['error']}"
        click.echo(f"  failed: {f['stage']} {f['plugin']} {f['key'][:12]}{error}  (bench show {f['key'][:12]})")
    sys.exit(0 if summary.ok else 1)


def _check_device(device: str) -> None:
    import re

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise click.BadParameter(f"{device!r}; valid: auto, cpu, cuda, cuda:N", param_hint="'--device'")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise click.BadParameter(f"{device!r}: no CUDA device is visible here; use --device cpu or auto",
                                     param_hint="'--device'")


def _same_profile(sw, storage) -> None:
    """A run of some cells (--only, --set) adds them to the stored sweep only at the profile it is stored at;
    at another profile it would replace the sweep's cell list, so it is refused before anything is written."""
    stored = next((s for s in storage.sweeps() if s["name"] == sw.name), None)
    if sw.partial and stored and (stored["profile"], stored["scale"]) != (sw.profile, sw.scale):
        raise click.BadParameter(
            f"{sw.profile or 'none'}: sweep '{sw.name}' is stored at profile {stored['profile'] or 'none'} and a run "
            f"of some of its cells at another profile would replace its cell list; use another --workspace (or run "
            f"the whole file to redefine the sweep)", param_hint="'--profile'")


def _preflight(sw, graph, states, data_root) -> None:
    """The data-dependent checks (dataset present, targets in range), before anything is written."""
    from bench.cli.preflight import check_data
    from bench.config import ConfigError

    try:
        check_data(sw.cells, states, graph, data_root)
    except ConfigError as err:
        raise err.with_file(sw.file) from None


def _key_value(text: str, hint: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{text!r}: expected KEY=VALUE", param_hint=f"'{hint}'")
    return key.strip().replace("-", "_"), value.strip()


def _sweep_on_slurm(sw, graph, workspace: Path, db_url, data_root, device, progress, wait, grace_s, max_attempts,
                    opts) -> None:
    """Register the jobs, submit the array of 'bench worker' tasks, follow the database until the array ends."""
    from bench.launch.pull import WorkerOptions
    from bench.launch.slurm import follow, submit
    from bench.results import cells_frame, summary_table
    from bench.runner import RunOptions, Scheduler, register

    storage = storage_for(workspace, db_url)
    _same_profile(sw, storage)
    register(sw, storage)
    states = storage.job_states(graph.jobs)
    Scheduler(graph, storage, artifacts_root(workspace), RunOptions()).verify_done(states)  # re-queue bad artifacts
    todo = storage.progress(sw.name)
    click.echo(f"sweep '{sw.name}': {len(sw.cells)} cells, {todo['jobs']} jobs, {todo['done']} done "
               f"(scale: {sw.scale}{', profile ' + sw.profile if sw.profile else ''})")
    if todo["done"] == todo["jobs"]:
        click.echo("nothing to run")
        return
    worker = WorkerOptions(sweep=sw.name, until_empty=True, device=device, grace_s=grace_s, max_attempts=max_attempts,
                           data_root=str(Path(data_root).resolve()) if data_root else None,
                           max_jobs=opts.jobs_per_task)
    jobs = submit(storage.url, str(artifacts_root(workspace)), worker, opts, f"bench-{sw.name}")
    array = str(jobs[0].job_id).split("_")[0]
    click.echo(f"submitted slurm array {array}: {opts.array_size} tasks of 'bench worker' (logs: {opts.folder})")
    if not wait:
        click.echo(f"follow it with: bench ls --db {storage.engine.url.render_as_string(hide_password=True)}")
        return
    counts = follow(storage, sw.name, jobs, progress=progress, echo=click.echo)
    table = summary_table(cells_frame(storage, sw.name))
    if not table.empty:
        click.echo(table.to_string(index=False))
    sys.exit(0 if counts["done"] == counts["jobs"] else 1)


@main.command()
@workspace_option
@db_option
@data_root_option
@click.option("--sweep", "sweep_name", default=None, help="Only jobs of this sweep (default: any job in the database).")
@click.option("--max-jobs", type=click.IntRange(min=1), default=None, help="Exit after this many jobs.")
@click.option("--until-empty", is_flag=True, help="Exit when no job is ready and none is running (else wait for work).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@grace_option
@heartbeat_option
@max_attempts_option
@click.option("--poll", "poll_s", type=click.FloatRange(min=0.05), default=2.0, show_default=True, metavar="SECONDS",
              help="Longest wait between claims while idle.")
@click.pass_context
def worker(ctx, workspace, db_url, data_root, sweep_name, max_jobs, until_empty, device, grace_s, heartbeat_s,
           max_attempts, poll_s):
    """Pull ready jobs from a shared database and run them here, one at a time.

    Start any number, on any machines that share the database (--db, e.g. postgresql+psycopg://host/db) and the
    artifact store (--workspace or BENCH_ARTIFACTS on a shared path). SIGUSR1: finish the current job, then exit;
    SIGTERM: give the current job back at once, then exit. Exit code 0, or 1 when a job it ran failed.
    """
    from bench.launch.pull import PullWorker, WorkerOptions

    _check_device(device)
    storage = storage_for(workspace, db_url)
    if sweep_name and sweep_name not in storage.sweep_names():
        from bench.config import closest
        raise click.BadParameter(f"no sweep {sweep_name!r}; {closest(sweep_name, storage.sweep_names())}",
                                 param_hint="'--sweep'")
    opts = WorkerOptions(sweep=sweep_name, max_jobs=max_jobs, until_empty=until_empty, device=device,
                         data_root=data_root, grace_s=grace_s, heartbeat_s=heartbeat_s, max_attempts=max_attempts,
                         poll_s=poll_s)
    w = PullWorker(storage, artifacts_root(workspace), opts, log=click.echo)
    click.echo(f"worker {w.owner} ({w.info.worker}, {w.info.device}, code {w.info.git_commit or w.info.bench_version})"
               f" on {storage.engine.url.render_as_string(hide_password=True)}"
               + (f", sweep '{sweep_name}'" if sweep_name else ""))
    report = w.run()
    click.echo(f"worker exits: {report.reason}; {report.ran} jobs ran, {len(report.failed)} failed, "
               f"{report.released} released, {report.lost} taken over")
    ctx.exit(1 if report.failed else 0)


def _dry_run(sw, graph, workspace: Path, db_url: str | None, data_root) -> None:
    """Jobs per stage: cached, failed earlier (run only with --retry-failed), to run; every cached job's
    artifacts are verified against their sha256, and a missing or corrupt one is named."""
    from bench.cli.preflight import broken_artifacts

    states, broken = {}, []
    if db_url or (workspace / "bench.db").exists():
        storage = storage_for(workspace, db_url, create=False)
        states = storage.job_states(graph.jobs)
        broken = broken_artifacts(storage, artifacts_root(workspace),
                                  [k for k, st in states.items() if st.state == "done"])
    _preflight(sw, graph, states, data_root)
    click.echo(f"sweep '{sw.name}': {len(sw.cells)} cells (scale: {sw.scale})")
    for stage, jobs in graph.by_stage().items():
        done = sum(1 for j in jobs if j.key in states and states[j.key].state == "done" and j.key not in broken)
        failed = sum(1 for j in jobs if j.key in states and states[j.key].state == "failed")
        click.echo(f"  {stage:<9} {len(jobs):>6} jobs  {done:>6} cached  {failed:>6} failed  "
                   f"{len(jobs) - done - failed:>6} to run")
    if any(st.state == "failed" for st in states.values()):
        click.echo("failed jobs run again only with --retry-failed")
    for k in broken:
        click.echo(f"{graph.jobs[k].stage} job {k[:12]}: stored artifact missing or corrupt; it runs again "
                   "when a job needs it")
    from bench.budget import job_lines

    lines = job_lines(graph)
    if lines:
        click.echo("  optimizer steps and samples seen per job (this scale / paper scale):\n" + "\n".join(lines))


@main.command(name="ls")
@workspace_option
@db_option
def ls_(workspace, db_url):
    """List sweeps and their progress (cells done / failed / running / pending)."""
    storage = storage_for(workspace, db_url, create=False)
    rows = storage.sweeps()
    if not rows:
        click.echo("no sweeps yet")
    for r in rows:
        click.echo(f"{r['name']:<24} {r['done']:>5}/{r['cells']:<5} done  {r['failed']:>4} failed  "
                   f"{r['running']:>3} running  {r['pending']:>5} pending  scale={r['scale']}  {r['file']}")


@main.command()
@click.argument("key")
@workspace_option
@db_option
@click.option("--traceback/--no-traceback", default=True, help="Print stored tracebacks of failed runs.")
def show(key, workspace, db_url, traceback):
    """Show a job (a key or unique key prefix): resolved config, parents, metrics and run history."""
    storage = storage_for(workspace, db_url, create=False)
    matches = storage.find_jobs(key)
    if len(matches) != 1:
        raise click.BadParameter(f"{len(matches)} jobs match {key!r}" + (": " + ", ".join(m[:16] for m in matches)
                                 if matches else ""), param_hint="'KEY'")
    d = storage.job_detail(matches[0])
    click.echo(f"{d['stage']} job {d['key']}  plugin={d['plugin']} v{d['version']}  state={d['state']}")
    for p in d["parents"]:
        click.echo(f"  parent {p['stage']:<8} {p['key'][:16]}  {p['plugin']}  {p['state']}")
    click.echo("config: " + json.dumps(d["config"], indent=2, sort_keys=True))
    for kind, path, size in d["artifacts"]:
        click.echo(f"artifact {kind}: {path} ({size} bytes)")
    for r in d["runs"]:
        click.echo(f"run #{r['attempt']} {r['status']}  host={r['host']} device={r['device']} "
                   f"worker={r['worker']} duration={_fmt(r['duration_s'])}s peak_mem={_fmt(r['peak_mem_mb'])}MB "
                   f"git={(r['git'] or '-')[:10]}{'+dirty' if r['dirty'] else ''} torch={r['torch']}")
        for (name, subset), (value, count) in sorted(r["metrics"].items()):
            click.echo(f"    {name:<18} {subset:<8} {_fmt(value)}" + (f"  (n={count})" if count is not None else ""))
        if r["error"]:
            click.echo(f"    error: {r['error']}")
            if traceback and r["traceback"]:
                click.echo("    " + r["traceback"].rstrip().replace("\n", "\n    "))
    if d["stage"] == "evaluate":
        from bench.results import job_gate
        click.echo(f"gate: {job_gate(storage, d['key'])}")


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}"


EXPORT_NOTE = ("rates (ba, asr, ra, precisions, recalls, auroc) are fractions in [0, 1], not percent, rounded to 6 "
               "decimals; <metric>_n is the count behind each rate; <stage>_s are wall seconds")


@main.command(epilog=EXPORT_NOTE[0].upper() + EXPORT_NOTE[1:] + ".")
@sweep_name_option
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "parquet"]), default="csv", show_default=True,
              help="parquet needs pyarrow (pip install -e '.[parquet]').")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Output file (default: stdout; parquet needs one).")
@workspace_option
@db_option
def export(sweep_name, fmt, out, workspace, db_url):
    """Export one tidy row per cell (labels, BA/ASR/RA with counts, defense metrics, stage times, config),
    with the model's before-numbers, the change from them and the validity gate (bench.reports.gate).

    BA: accuracy on the clean test set. ASR: attack success rate, the share of triggered non-target test images
    classified as the target. RA: robust accuracy, the share of those triggered images classified as their
    true label. The config column is the cell's resolved configuration (a JSON object in --format json).
    """
    import importlib.util

    from bench.reports.gate import with_before
    from bench.results import cells_frame

    if fmt == "parquet":
        if not out:
            raise click.BadParameter("parquet needs --out FILE", param_hint="'--out'")
        if importlib.util.find_spec("pyarrow") is None:
            raise click.BadParameter("parquet needs pyarrow: pip install -e '.[parquet]' (or use csv or json)",
                                     param_hint="'--format'")
    if out and not Path(out).resolve().parent.is_dir():
        raise click.BadParameter(f"{out}: its folder does not exist", param_hint="'--out'")
    storage = storage_for(workspace, db_url, create=False)
    if sweep_name and sweep_name not in storage.sweep_names():
        from bench.config import closest
        raise click.BadParameter(f"no sweep {sweep_name!r}; {closest(sweep_name, storage.sweep_names())}",
                                 param_hint="'--sweep'")
    frame = _rounded(with_before(cells_frame(storage, sweep_name)))
    click.echo(f"bench export: {EXPORT_NOTE}", err=True)
    if fmt == "parquet":
        frame.to_parquet(out, index=False)
    elif fmt == "json":
        if "config" in frame:
            frame["config"] = frame["config"].map(json.loads)      # an object, not an escaped string
        text = frame.to_json(orient="records", indent=1, double_precision=10)
        Path(out).write_text(text) if out else click.echo(text)
    else:
        text = frame.to_csv(index=False)
        Path(out).write_text(text) if out else click.echo(text, nl=False)


def _rounded(frame):
    """Float noise off: rates (float32 ratios such as 0.9972222447) to 6 decimals, seconds to 3."""
    for col in frame.select_dtypes("float").columns:
        frame[col] = frame[col].round(3 if col.endswith("_s") else 6)
    return frame


@main.command()
@click.argument("kind", required=False, type=click.Choice(["dataset", "model", "recipe", "attack", "defense"]))
def plugins(kind):
    """List registered datasets, models, recipes, attacks and defenses with their options and defaults."""
    from bench.config import defaults_of
    from bench.registry import REGISTRIES

    for k, reg in REGISTRIES.items():
        if kind and k != kind:
            continue
        click.echo(f"{k}s:")
        for e in reg.entries():
            extra = ""
            if k == "defense":
                extra = f"  [{e.obj.paradigm}; needs {', '.join(sorted(e.obj.needs)) or 'nothing'}]"
            summary = e.doc.splitlines()[0] if e.doc else ""
            click.echo(f"  {e.name} (v{e.version}, '{e.display_name}'){extra}  {summary}")
            for field_name, (tp, default) in defaults_of(e.config).items():
                if isinstance(e.obj, e.config):
                    default = getattr(e.obj, field_name)
                click.echo(f"      {field_name}: {tp} = {json.dumps(default, default=str)}")


@main.group()
def db():
    """Database maintenance."""


@db.command()
@workspace_option
@db_option
def upgrade(workspace, db_url):
    """Bring a database to this bdbench's schema version."""
    from sqlalchemy import create_engine, inspect, text

    from bench.db.models import SCHEMA_VERSION
    from bench.db.storage import default_url

    url = db_url or default_url(workspace)
    engine = create_engine(url)
    if "meta" not in inspect(engine).get_table_names():
        raise click.ClickException(f"{url}: not a bdbench database")
    with engine.connect() as c:
        found = int(c.execute(text("select value from meta where key='schema_version'")).scalar() or 0)
    if found == SCHEMA_VERSION:
        click.echo(f"{url}: already at schema version {SCHEMA_VERSION}")
        return
    raise click.ClickException(f"{url}: no upgrade path from schema version {found} to {SCHEMA_VERSION}")


if __name__ == "__main__":  # pragma: no cover
    main()
from bench.cli.report import COMMANDS as _REPORT_COMMANDS  # noqa: E402, I001  (report, baseline, check)
for _command in _REPORT_COMMANDS: main.add_command(_command)  # noqa: E701
