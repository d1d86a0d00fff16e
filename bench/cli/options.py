"""Options shared by several commands, each defined once (pip-tools style) and stacked as decorators."""
from __future__ import annotations

import os
from pathlib import Path

import click

workspace_option = click.option(
    "--workspace", type=click.Path(file_okay=False, path_type=Path), envvar="BENCH_WORKSPACE",
    default="bench-workspace", show_default=True,
    help="Folder for the database and the artifact store (env BENCH_WORKSPACE).")
db_option = click.option(
    "--db", "db_url", envvar="BENCH_DB", default=None,
    help="SQLAlchemy URL of the results database (env BENCH_DB); default: sqlite in the workspace.")
data_root_option = click.option(
    "--data-root", type=click.Path(exists=True), envvar="BENCH_DATA_ROOT", default=None,
    help="Where datasets live: torchvision layout, ImageFolder trees or .tar.xz archives (env BENCH_DATA_ROOT).")
set_option = click.option(
    "--set", "sets", multiple=True, metavar="KEY=VALUE",
    help="Override a sweep key (seeds=[0,1], grid.clean_ratio=0.1) or an option (defense.ft.epochs=3). Repeatable.")
only_option = click.option(
    "--only", "only", multiple=True, metavar="KEY=VALUE",
    help="Run only the cells matching every KEY=VALUE (dataset=cifar10, attack.name=[badnets,blend]). Repeatable.")
profile_option = click.option(
    "--profile", default=None, metavar="NAME", help="Apply sweeps/profiles/NAME.yaml (e.g. mini for CPU-scale runs).")
sweep_name_option = click.option("--sweep", "sweep_name", default=None, help="Only this sweep (by name).")


def storage_for(workspace: Path, db_url: str | None, create: bool = True):
    """Open the database (the schema check runs here) -- after all input was validated.

    With ``create`` (a command that writes) the database must also accept a write.  Every way this can fail
    (a malformed URL, a server that does not answer, a read-only file or folder, another schema) is a one-line
    usage error naming --db or --workspace.
    """
    from sqlalchemy.exc import ArgumentError, DBAPIError

    from bench.db.storage import SchemaMismatch, Storage, default_url

    if db_url is None:
        if workspace.exists() and not workspace.is_dir():
            raise click.BadParameter(f"{workspace} is a file, not a folder", param_hint="'--workspace'")
        if not create and not (workspace / "bench.db").exists():
            raise click.BadParameter(f"no database in {workspace} (run 'bench sweep' first, or pass --db)",
                                     param_hint="'--workspace'")
        try:
            workspace.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise click.BadParameter(f"{workspace}: cannot create it ({err.strerror})",
                                     param_hint="'--workspace'") from None
    url = db_url or default_url(workspace)
    hint = "'--db'" if db_url else "'--workspace'"
    try:
        storage = Storage(url, create=create)
        if create:
            storage.check_writable()
        return storage
    except SchemaMismatch as err:
        raise click.BadParameter(str(err), param_hint=hint) from None
    except ArgumentError as err:
        raise click.BadParameter(f"{db_url!r} is not a database URL ({err}); expected e.g. "
                                 "sqlite:///path/bench.db or postgresql+psycopg://user@host/db", param_hint=hint) from None
    except DBAPIError as err:
        raise click.BadParameter(f"{_shown(url)}: {type(err.orig).__name__}: {err.orig}", param_hint=hint) from None
    except ImportError as err:
        raise click.BadParameter(f"{_shown(url)}: its driver is not installed ({err}); for PostgreSQL: "
                                 "pip install -e '.[postgres]'", param_hint=hint) from None


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def artifacts_root(workspace: Path) -> Path:
    return Path(os.environ.get("BENCH_ARTIFACTS", workspace / "artifacts"))


# -- scale-out: pull workers (bench worker) and the Slurm launcher (bench sweep --launcher slurm) ------------
grace_option = click.option(
    "--grace", "grace_s", type=click.FloatRange(min=1), default=300.0, show_default=True, metavar="SECONDS",
    help="A running job whose heartbeat (database clock) is older than this is re-queued.")
max_attempts_option = click.option(
    "--max-attempts", type=click.IntRange(min=1), default=3, show_default=True,
    help="Claims per job before a job that keeps dying (stale or released) is marked failed.")
heartbeat_option = click.option(
    "--heartbeat", "heartbeat_s", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
    metavar="SECONDS", help="Seconds between heartbeats of a running job.")

_SLURM = [
    click.option("--launcher", type=click.Choice(["local", "slurm"]), default="local", show_default=True,
                 help="local: run here (scheduler + worker processes). slurm: submit a job array of 'bench worker' "
                      "tasks on a shared database (--db) and artifact store (--workspace on a shared path)."),
    click.option("--partition", default=None, help="[slurm] Partition to submit to."),
    click.option("--gpus-per-task", type=click.IntRange(min=0), default=0, show_default=True, help="[slurm] GPUs per task."),
    click.option("--cpus-per-task", type=click.IntRange(min=1), default=None, help="[slurm] CPUs per task."),
    click.option("--mem", default=None, metavar="SIZE", help="[slurm] Memory per task, e.g. 16G."),
    click.option("--time", "time_min", type=click.IntRange(min=1), default=60, show_default=True, metavar="MINUTES",
                 help="[slurm] Time limit per task; a task at its limit gives its job back."),
    click.option("--array-size", type=click.IntRange(min=1), default=1, show_default=True,
                 help="[slurm] Array tasks (workers running at once)."),
    click.option("--jobs-per-task", type=click.IntRange(min=1), default=None,
                 help="[slurm] Each task stops after this many jobs (default: when the sweep has nothing left)."),
    click.option("--slurm-opt", "slurm_opts", multiple=True, metavar="KEY=VALUE",
                 help="[slurm] Any other sbatch option, e.g. account=proj or qos=high. Repeatable."),
    click.option("--wait/--no-wait", default=True, help="[slurm] Follow progress until the array ends, or return at once."),
    grace_option,
    max_attempts_option,
]


def slurm_options(f):
    """The launcher switch and the Slurm knobs of ``bench sweep`` (stacked in the order listed)."""
    for option in reversed(_SLURM):
        f = option(f)
    return f
