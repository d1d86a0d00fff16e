"""Harness overhead (not a test): per-job cost of scheduling + DB + cache lookup, and grid expansion speed.

    python benchmarks/harness_overhead.py [--cells 200] [--grid 10000]

1. A sweep of no-op cells (synthetic 8x8 data, 0 training epochs, defense 'none') run in-process: the time per
   job is almost all harness (claim, task build, artifact write + sha256, DB writes). The same jobs executed
   directly through StageRunner (no scheduler, no DB) in the same run are the baseline; the ratio is printed.
2. A re-run of the finished sweep: the cost of finding 100 % of jobs cached.
3. Expanding (and resolving) a 10,000-cell grid.
Targets (issue 2): < 50 ms harness overhead per job, < 2 s for the 10,000-cell expansion.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def noop_sweep(cells: int) -> dict:
    return {"name": "overhead", "seeds": list(range(cells)), "grid": {
        "dataset": {"name": "synthetic", "n_train": 64, "n_test": 32, "size": 8},
        "model": {"name": "small_cnn", "width": 2}, "recipe": {"name": "quick", "epochs": 0},
        "attack": "none", "defense": "none", "clean_ratio": 0.1}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from bench.db.storage import Storage, default_url
    from bench.graph import build_graph
    from bench.runner import RunOptions, Scheduler, run_sweep
    from bench.stages import StageRunner
    from bench.sweep import build_sweep

    sweep = build_sweep(noop_sweep(args.cells), "bench.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        storage = Storage(default_url(ws))
        graph = build_graph(sweep.cells)
        n_jobs = len(graph.jobs)
        t0 = time.perf_counter()
        summary = run_sweep(sweep, storage, ws / "artifacts", RunOptions(workers=0, progress=False))
        full = time.perf_counter() - t0
        assert summary.ok and summary.ran == n_jobs
        t0 = time.perf_counter()
        again = run_sweep(sweep, storage, ws / "artifacts", RunOptions(workers=0, progress=False))
        cached = time.perf_counter() - t0
        assert again.ran == 0
        # baseline: the same stage work, executed directly (no scheduler, no database)
        runner = StageRunner(ws / "direct", "cpu")
        sched = Scheduler(graph, storage, ws / "artifacts", RunOptions(workers=0, progress=False))
        t0 = time.perf_counter()
        for job in graph.jobs.values():
            runner.run(sched.task(job))
        direct = time.perf_counter() - t0
    per_job = (full - direct) / n_jobs
    print(f"jobs: {n_jobs} ({args.cells} cells)")
    print(f"sweep (scheduler + DB + store): {full:.2f} s = {1000 * full / n_jobs:.1f} ms/job")
    print(f"direct stage execution       : {direct:.2f} s = {1000 * direct / n_jobs:.1f} ms/job")
    print(f"harness overhead             : {1000 * per_job:.1f} ms/job  (target < 50); ratio sweep/direct = "
          f"{full / direct:.2f}x")
    print(f"fully cached re-run          : {cached:.2f} s = {1000 * cached / n_jobs:.2f} ms/job")

    grid = {"name": "big", "seeds": list(range(10)), "grid": {
        "dataset": ["digits", "synthetic"], "model": "small_cnn", "recipe": "quick",
        "attack": [{"name": "badnets", "target": [0, 1, 2, 3]}, "none"],
        "defense": ["none", {"name": "ft", "lr": [0.01 * i for i in range(1, 8)], "epochs": [5, 10, 15, 20, 25, 30, 35]}],
        "clean_ratio": [0.05, 0.1]}}                  # 10 seeds x 2 x 5 x 50 x 2 = 10,000 cells
    t0 = time.perf_counter()
    big = build_sweep(grid, "big.yaml")
    t_expand = time.perf_counter() - t0
    t0 = time.perf_counter()
    g = build_graph(big.cells)
    t_graph = time.perf_counter() - t0
    print(f"grid: {len(big.cells)} cells expanded + resolved in {t_expand:.2f} s (target < 2 s); "
          f"job graph ({len(g.jobs)} jobs) in {t_graph:.2f} s")


if __name__ == "__main__":
    main()
