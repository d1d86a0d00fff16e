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
    "--data-root", type=click.Path(file_okay=False), envvar="BENCH_DATA_ROOT", default=None,
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
    """Open the database (the schema check runs here) -- after all input was validated."""
    from bench.db.storage import Storage, default_url

    if db_url is None:
        if not create and not (workspace / "bench.db").exists():
            raise click.ClickException(f"no database in {workspace} (run 'bench sweep' first, or pass --db)")
        workspace.mkdir(parents=True, exist_ok=True)
    return Storage(db_url or default_url(workspace), create=create)


def artifacts_root(workspace: Path) -> Path:
    return Path(os.environ.get("BENCH_ARTIFACTS", workspace / "artifacts"))
