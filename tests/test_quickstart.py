"""The README's main job, as a user runs it: the quickstart sweep end to end (about 1 min of CPU)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from benchtest import REPO


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=1200, env={**os.environ})


def test_quickstart_plants_the_backdoor_and_keeps_accuracy(workspace):
    result = bench("sweep", "sweeps/quickstart.yaml", "--no-progress")       # one worker process, as a user
    assert result.returncode == 0, result.stdout + result.stderr
    assert "24 jobs ran, 0 cached, 0 failed" in result.stdout
    assert "(scale: full)" in result.stdout and "BA = clean accuracy" in result.stdout
    rows = json.loads(bench("export", "--sweep", "quickstart", "--format", "json").stdout)
    before = {(r["attack"], r["seed"]): r for r in rows if r["defense"] == "none"}
    for seed in (0, 1):
        clean, bd = before[("none", seed)], before[("badnets", seed)]
        assert bd["asr"] >= 0.90 and bd["asr_n"] == 324          # 360 test digits, 36 of them class 0
        assert abs(bd["ba"] - clean["ba"]) <= 0.05
    again = bench("sweep", "sweeps/quickstart.yaml", "--no-progress")
    assert "0 jobs ran, 24 cached" in again.stdout
