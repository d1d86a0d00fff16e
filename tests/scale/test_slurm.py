"""``bench sweep --launcher slurm`` on a real single-node Slurm cluster with a PostgreSQL record: a small digits
sweep runs as a job array of ``bench worker`` tasks and every result lands in the database."""
from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from bench.cli import main
from bench.db.storage import Storage

pytestmark = pytest.mark.servers

DIGITS = {"name": "slurm_digits", "seeds": [0], "grid": {
    "dataset": {"name": "digits", "scale": 1, "train_limit": 600, "test_limit": 200},
    "model": {"name": "small_cnn", "width": 4}, "recipe": {"name": "quick", "epochs": 1},
    "attack": {"name": "badnets", "target": 0, "poison_rate": 0.1},
    "defense": ["none", {"name": "ft", "epochs": 1, "milestones": [], "batch_size": 32}],
    "clean_ratio": 0.05}}


def test_digits_sweep_completes_through_a_slurm_array(slurm_cluster, pg_url, tmp_path):
    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump(DIGITS))
    ws = tmp_path / "ws"
    result = CliRunner().invoke(main, ["sweep", str(path), "--launcher", "slurm", "--db", pg_url, "--workspace",
                                       str(ws), "--array-size", "2", "--time", "10", "--no-progress"])
    logs = "\n".join(p.read_text()[-1500:] for p in (ws / "slurm").rglob("*.out")) if (ws / "slurm").exists() else ""
    assert result.exit_code == 0, result.output + logs
    assert "submitted slurm array" in result.output and "6/6 jobs done, 0 failed" in result.output
    storage = Storage(pg_url)
    cells = storage.cells("slurm_digits")
    assert len(cells) == 2 and all(c["state"] == "done" for c in cells)
    metrics = storage.succeeded_metrics([c["key"] for c in cells])
    assert all({("ba", "test"), ("asr", "test")} <= set(m) for m in metrics.values()), metrics
    runs = [r for c in cells for k in c["chain"].values() for r in storage.runs_of(k)]
    assert all(r["status"] == "succeeded" and r["worker"].startswith("slurm-") for r in runs)
    ls = CliRunner().invoke(main, ["ls", "--db", pg_url])
    assert "slurm_digits" in ls.output and "2/2" in ls.output
    again = CliRunner().invoke(main, ["sweep", str(path), "--launcher", "slurm", "--db", pg_url, "--workspace",
                                      str(ws), "--no-progress"])
    assert again.exit_code == 0 and "nothing to run" in again.output          # all cached: nothing submitted
