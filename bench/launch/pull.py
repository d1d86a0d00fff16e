"""The pull worker (``bench worker``): claims ready jobs from a shared database and runs them here, one at a time.

Any machine that reaches the database and the artifact store (a shared filesystem path) can run one, and each
task of a Slurm job array runs one (bench/launch/slurm.py).  Per job:

1. claim it: ``Storage.claim_next`` (``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL) marks the job running
   and inserts its run row with this host, device and code version;
2. rebuild its ``Task`` from the database: the job's and its ancestors' stored configs and artifact records
   (the job graph lives in the ``jobs`` table: a remote worker needs no sweep file);
3. execute it with the ``StageRunner`` the scheduler's workers use (``bench.worker.execute``) while a thread
   stamps a heartbeat every ``heartbeat_s`` seconds with the database server's clock;
4. record the outcome through ``finish_run`` / ``fail_run``, which first check that the claim is still ours.

Signals: SIGUSR1 finishes the current job, then exits.  SIGTERM (what Slurm sends on pre-emption, at the time
limit and on ``scancel``), or a second SIGUSR1, releases the current job at once (its run becomes 'abandoned',
the job pending again for another worker) and exits.  A worker that dies without warning (SIGKILL, a lost
node) stops heartbeating; once its heartbeat is older than ``grace_s`` another worker claims the job again, up
to ``max_attempts`` claims per job, after which the job is marked failed.
"""
from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bench.db.storage import Claim, Storage, hostname
from bench.stages import Task


class Release(BaseException):
    """Raised in the main thread by SIGTERM while a job runs: give the job back and stop."""


@dataclass(frozen=True)
class WorkerOptions:
    sweep: str | None = None            # only jobs of this sweep (None: any job in the database)
    max_jobs: int | None = None         # stop after this many jobs (None: no limit)
    until_empty: bool = False           # stop when nothing is claimable and nothing is running
    device: str = "auto"
    data_root: str | None = None
    grace_s: float = 300.0              # heartbeat age after which a running job is re-queued
    heartbeat_s: float = 10.0
    max_attempts: int = 3               # claims per job before it is marked failed
    poll_s: float = 2.0                 # longest wait between claims while idle (it backs off up to this)
    name: str | None = None             # recorded as the run's worker (default: the Slurm task, else 'pull')


@dataclass
class WorkerReport:
    ran: int = 0
    failed: list[dict] = field(default_factory=list)
    released: int = 0
    lost: int = 0                       # finished, but another worker had taken the job over meanwhile
    reason: str = ""

    @property
    def jobs(self) -> int:
        return self.ran + len(self.failed) + self.lost


def task_from_db(storage: Storage, key: str) -> Task:
    """The job as a worker sees it, rebuilt from the database: merged configs, lineage and input artifacts."""
    rows = storage.job_chain(key)                      # root first, the job last
    chain: dict = {}
    for r in rows:
        chain.update(r["config"])                      # as graph.make_job merges: a child's keys win
    lineage: dict[str, str] = {}
    for r in reversed(rows[:-1]):
        lineage.setdefault(r["stage"], r["key"])       # nearest ancestor of each stage
    return Task(key, rows[-1]["stage"], chain, lineage, storage.artifacts(lineage.values()))


def worker_name() -> str:
    env = os.environ
    if "SLURM_ARRAY_JOB_ID" in env:
        return f"slurm-{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
    if "SLURM_JOB_ID" in env:
        return f"slurm-{env['SLURM_JOB_ID']}"
    return "pull"


def device_label(device) -> str:
    """'cpu', or 'cuda:0 (NVIDIA H100 80GB HBM3)': the device and, for a GPU, its model."""
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"[:100]
    return str(device)


class PullWorker:
    def __init__(self, storage: Storage, store_root: str | Path, opts: WorkerOptions,
                 log: Callable[[str], None] = lambda line: print(line, flush=True)):
        from bench.runner import run_info
        from bench.stages import StageRunner

        self.storage, self.opts, self.log = storage, opts, log
        threads = os.environ.get("SLURM_CPUS_PER_TASK")
        if threads and threads.isdigit():
            import torch
            torch.set_num_threads(int(threads))
        self.runner = StageRunner(store_root, None if opts.device == "auto" else opts.device, opts.data_root)
        self.owner = f"{hostname()}:{os.getpid()}"
        self.info = run_info(worker=opts.name or worker_name(), device=device_label(self.runner.device))
        self.stop: str | None = None                   # None | 'finish' | 'release'
        self.stop_signal = ""                          # the signal that set it, named in the run's record
        self._current: Claim | None = None
        self._recording = False
        self._lock = threading.Lock()
        self._done = threading.Event()

    # -- the loop ------------------------------------------------------------------------------------------
    def run(self) -> WorkerReport:
        """Claim and run jobs until a limit, a signal, or (``until_empty``) nothing is left to do."""
        report = WorkerReport()
        beat = threading.Thread(target=self._heartbeats, name="bench-heartbeat", daemon=True)
        beat.start()
        restore = self._install_signals()
        wait, o, seen_empty = 0.05, self.opts, False
        try:
            while self.stop is None:
                if o.max_jobs is not None and report.jobs >= o.max_jobs:
                    report.reason = f"ran {o.max_jobs} jobs (--max-jobs)"
                    break
                claim = self.storage.claim_next(self.owner, self.info, o.sweep, o.grace_s, o.max_attempts)
                if claim is None:
                    # empty = nothing claimable and nothing running whose end could make a job ready; asked
                    # twice in a row, since a job may finish between the claim and the count
                    if o.until_empty and not self.storage.progress(o.sweep)["running"]:
                        if seen_empty:
                            report.reason = "nothing left to run"
                            break
                        seen_empty = True
                        continue
                    seen_empty = False
                    time.sleep(wait)
                    wait = min(wait * 2, o.poll_s)
                    continue
                wait, seen_empty = 0.05, False
                if self.stop == "release":       # SIGTERM arrived during the claim: give the job straight back
                    self.storage.release(claim.key, claim.attempt,
                                         f"worker stopped: {self.stop_signal} before the job started")
                    report.released += 1
                    report.reason = "signal: released"
                    break
                self._run_one(claim, report)
            else:
                report.reason = f"signal: {'finished the current job' if self.stop == 'finish' else 'released'}"
        except Release:
            report.reason = "signal: released the current job"
        finally:
            self._done.set()
            beat.join(timeout=30)       # not mid-query when the interpreter shuts down
            restore()
        return report

    def _run_one(self, claim: Claim, report: WorkerReport) -> None:
        from bench.worker import execute

        self.log(f"run   {claim.stage:<8} {claim.key[:12]} attempt {claim.attempt}")
        with self._lock:
            self._current = claim
        try:
            if self.stop == "release":      # SIGTERM between the check after the claim and the line above
                raise Release(self.stop_signal)
            try:
                task = task_from_db(self.storage, claim.key)
            except Exception as err:  # recorded as the job's failure, like an error inside the stage
                msg = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(),
                       "duration_s": 0.0}
            else:
                msg = execute(self.runner, task, self.info.worker)
            self._recording = True
            self._record(claim, msg, report)
        except BaseException as err:
            if not self._recording:
                self.storage.release(claim.key, claim.attempt, f"worker stopped: {type(err).__name__} {err}")
                report.released += 1
                self.log(f"released {claim.stage} {claim.key[:12]} ({type(err).__name__})")
            raise
        finally:
            self._recording = False
            with self._lock:
                self._current = None

    def _record(self, claim: Claim, msg: dict, report: WorkerReport) -> None:
        if msg["ok"]:
            out = msg["outcome"]
            metrics = [(m.name, m.subset, m.value, m.count) for m in out.metrics]
            ok = self.storage.finish_run(claim.key, claim.attempt, self.owner, out.artifacts, metrics, out.curves,
                                         self.info.device, out.peak_mem_mb, out.duration_s)
            report.ran += ok
            state = "done" if ok else "lost"
        else:
            ok = self.storage.fail_run(claim.key, claim.attempt, msg["error"], msg["traceback"], msg.get("duration_s"))
            if ok:
                report.failed.append({"key": claim.key, "stage": claim.stage, "error": msg["error"]})
            state = f"FAILED {msg['error']}" if ok else "lost"
        if not ok:
            report.lost += 1        # went silent past the grace period; the worker that took over records it
        self.log(f"{state:<5} {claim.stage:<8} {claim.key[:12]}")

    # -- heartbeats and signals ----------------------------------------------------------------------------
    def _heartbeats(self) -> None:
        while not self._done.wait(self.opts.heartbeat_s):
            with self._lock:
                claim = self._current
            if claim is None:
                continue
            try:
                if not self.storage.heartbeat([claim.key], self.owner):
                    self.log(f"lost  {claim.stage:<8} {claim.key[:12]}: another worker took it over")
            except Exception as err:  # a database hiccup: the next beat retries; the grace period allows it
                self.log(f"heartbeat failed: {type(err).__name__}: {err}")

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def release(signum, frame):
            self.stop, self.stop_signal = "release", signal.Signals(signum).name
            if self._current is not None and not self._recording:
                raise Release(signal.Signals(signum).name)

        def finish(signum, frame):
            if self.stop is None:
                self.stop, self.stop_signal = "finish", signal.Signals(signum).name
                self.log("SIGUSR1: finishing the current job, then exiting (again: release it now)")
            else:
                release(signum, frame)

        old = {sig: signal.signal(sig, handler) for sig, handler in ((signal.SIGTERM, release),
                                                                       (signal.SIGUSR1, finish))}

        def restore() -> None:
            for sig, handler in old.items():
                signal.signal(sig, handler)
        return restore
