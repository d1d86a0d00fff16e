"""``bench sweep FILE --launcher slurm``: register the sweep's jobs, submit a Slurm job array through submitit whose
tasks each run ``bench worker``, and follow the sweep's progress in the database.

Slurm does the compute and PostgreSQL (any shared database URL) is the record; nothing here manages a cluster.
Each array task is one pull worker (bench/launch/pull.py) with ``--until-empty`` (and ``--max-jobs`` when
``jobs_per_task`` is set); tasks take jobs in any order the graph allows, so the array size is only how many
jobs run at once.  A task that is pre-empted, cancelled or hits its time limit gets SIGTERM from Slurm and
gives its job back; one killed outright leaves the job stale, and another task claims it after the grace
period.  Progress is read from the database, so ``bench ls --db URL`` shows it from any machine as well.
"""
from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bench.db.storage import Storage
from bench.launch.pull import WorkerOptions


@dataclass(frozen=True)
class SlurmOptions:
    folder: Path                        # submitit's scripts and logs (a shared path)
    partition: str | None = None
    gpus_per_task: int = 0
    cpus_per_task: int | None = None
    mem: str | None = None              # e.g. '16G'
    time_min: int = 60                  # each task's time limit
    array_size: int = 1                 # tasks (= workers at once)
    jobs_per_task: int | None = None    # each task's --max-jobs (None: until the sweep is empty)
    extra: dict[str, Any] = field(default_factory=dict)   # more sbatch options, e.g. {'account': 'x'}


def worker_task(db_url: str, store_root: str, worker: WorkerOptions) -> int:
    """What each array task runs (pickled by submitit): one pull worker in this process, as ``bench worker``
    runs it. The CLI builds the options; nothing here imports bench.cli, so the two modules stay acyclic."""
    from bench.launch.pull import PullWorker

    report = PullWorker(Storage(db_url), store_root, worker, log=print).run()
    print(f"worker exits: {report.reason}; {report.ran} jobs ran, {len(report.failed)} failed, "
          f"{report.released} released, {report.lost} taken over", flush=True)
    if report.failed:
        raise RuntimeError(f"bench worker: {len(report.failed)} jobs failed")
    return 0


def submit(db_url: str, store_root: str, worker: WorkerOptions, opts: SlurmOptions, name: str) -> list[Any]:
    """Submit ``opts.array_size`` tasks of one pull worker each (``worker``) as one job array; returns submitit
    jobs."""
    import submitit

    executor = submitit.SlurmExecutor(folder=opts.folder / "%j", max_num_timeout=0)
    params: dict[str, Any] = {"job_name": name, "time": opts.time_min, "nodes": 1, "ntasks_per_node": 1,
                              "array_parallelism": opts.array_size}
    if opts.partition:
        params["partition"] = opts.partition
    if opts.gpus_per_task:
        params["gpus_per_task"] = opts.gpus_per_task
    if opts.cpus_per_task:
        params["cpus_per_task"] = opts.cpus_per_task
    if opts.mem:
        params["mem"] = opts.mem
    if opts.extra:
        params["additional_parameters"] = dict(opts.extra)
    executor.update_parameters(**params)
    n = opts.array_size
    return executor.map_array(worker_task, [db_url] * n, [str(store_root)] * n, [worker] * n)


def tasks_left(jobs: list[Any]) -> int:
    """How many of the array's tasks Slurm still lists (pending or running); squeue, else submitit's view."""
    if not jobs:
        return 0
    array_id = str(jobs[0].job_id).split("_")[0]
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-j", array_id, "-o", "%i"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        out = None
    if out is not None and out.returncode == 0:
        return len(out.stdout.split())
    if out is not None and "Invalid job id" in out.stderr:
        return 0                         # the controller has already forgotten the finished array
    return sum(not j.done() for j in jobs)


def follow(storage: Storage, sweep: str, jobs: list[Any], progress: bool = True, poll_s: float = 2.0,
           echo: Callable[[str], None] = print) -> dict[str, int]:
    """Show the sweep's job progress until every array task has ended; returns the final job counts."""
    from tqdm import tqdm

    counts = storage.progress(sweep)
    bar = tqdm(total=counts["jobs"], disable=not progress, unit="job", dynamic_ncols=True, desc=sweep)
    try:
        while True:
            counts = storage.progress(sweep)
            bar.n = counts["done"] + counts["failed"]
            bar.set_postfix(running=counts["running"], failed=counts["failed"], refresh=False)
            bar.refresh()
            left = tasks_left(jobs)
            if left == 0:
                break
            time.sleep(poll_s)
    finally:
        bar.close()
    echo(f"slurm array {jobs[0].job_id.split('_')[0] if jobs else '-'} ended: {counts['done']}/{counts['jobs']} "
         f"jobs done, {counts['failed']} failed, {counts['pending']} pending, {counts['running']} running")
    return counts
