"""The scheduler: owns the database writes, hands ready jobs to long-lived workers, survives being killed.

* Ready = every parent done.  A job is claimed in the database by compare-and-swap before it is dispatched,
  so two ``bench sweep`` processes on one database never run the same job; a job another live process holds
  is waited for, a job whose owner died (same host: its pid is gone; else: heartbeat older than the grace) is
  taken over and its old run marked abandoned.
* Workers: one process per device slot (one per GPU; on CPU ``--workers N`` with the cores split between
  them), or ``workers=0`` to run in-process (tests, debugging).  A job that raises is recorded as failed with
  its traceback and its descendants are skipped; the rest of the sweep goes on.
* Before a done job's artifacts are used again they are verified against their recorded sha256; a missing or
  corrupt artifact puts the job back to pending.

This is the single-writer scheduler of one ``bench sweep`` process (the default, on SQLite or any database).
Scale-out across machines uses pull workers instead (``bench worker``, bench/launch/pull.py): each claims ready
jobs from a shared database itself; both paths execute jobs through the same ``StageRunner`` and record them
through the same ``Storage`` calls.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import platform
import queue
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.db.storage import RunInfo, Storage, hostname, stale_after
from bench.graph import Graph, Job, build_graph
from bench.stages import Task
from bench.store import ArtifactStore
from bench.sweep import Sweep


@dataclass
class RunOptions:
    workers: int | None = None          # CPU worker processes (None: 1 per GPU, else 1); 0 = in-process
    device: str = "auto"                # auto | cpu | cuda
    retry_failed: bool = False
    grace_s: float = 300.0              # heartbeat age after which another host's job counts as stale
    heartbeat_s: float = 10.0
    data_root: str | None = None
    progress: bool = True
    threads: int = 1                    # intra-op threads per CPU worker (1: results independent of the cores)


@dataclass
class Summary:
    jobs: int = 0
    cached: int = 0                     # already done before this run
    ran: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    blocked: int = 0                    # not run because an ancestor failed
    by_stage: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked


def run_info(worker: str = "", device: str = "") -> RunInfo:
    """Host, pid, device and code version (git commit, else the package version) stored with every run."""
    import torch

    from bench import __version__
    commit, dirty = code_version()
    return RunInfo(worker=worker, device=device, host=hostname(), pid=os.getpid(), git_commit=commit,
                   git_dirty=dirty, python_version=platform.python_version(), torch_version=torch.__version__,
                   bench_version=__version__)


def code_version() -> tuple[str | None, bool | None]:
    """(git commit, dirty flag) of the checkout bench runs from, or (None, None) outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip() != ""
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def device_slots(opts: RunOptions) -> list[tuple[str, str, int]]:
    """(slot name, device, threads) per worker.

    CPU: one single-threaded worker per usable core (``--workers N``: N of them).  Jobs run side by side instead
    of splitting each small operation over threads, and a job's result does not depend on the core count (see
    :func:`bench.train.cpu_threads`).  ``--threads T`` gives each CPU worker T threads instead: for one long job
    on a large model (WRN-16-1 at paper scale trains 1.95x faster with two threads than one on 2 cores), at the
    cost of that independence; the run's ``device`` column records the count.  GPU: one worker per device, the
    cores split between them.
    """
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    use_cuda = opts.device.startswith("cuda") or (opts.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        n = torch.cuda.device_count()
        count = n if opts.workers is None else min(max(opts.workers, 1), n)
        threads = max(1, cores // max(count, 1))
        return [(f"gpu{i}", f"cuda:{i}", threads) for i in range(count)]
    threads = max(1, opts.threads)
    count = max(1, cores // threads) if opts.workers is None else max(opts.workers, 0)
    return [(f"cpu{i}", "cpu", threads) for i in range(count)]


class Scheduler:
    def __init__(self, graph: Graph, storage: Storage, store_root: str | Path, opts: RunOptions):
        self.graph, self.storage, self.opts = graph, storage, opts
        self.store = ArtifactStore(store_root)
        self.store_root = str(store_root)
        self.owner = f"{hostname()}:{os.getpid()}"
        self.children = graph.children()
        self.lineage = {k: self._lineage(k) for k in graph.jobs}
        self.info = run_info()
        self.is_stale = stale_after(opts.grace_s, storage.server_now)
        self.requeued: list[str] = []      # done jobs put back to pending (artifact missing or corrupt)

    def _lineage(self, key: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for anc in self.graph.ancestors(key):
            out.setdefault(self.graph.jobs[anc].stage, anc)
        return out

    # -- planning --------------------------------------------------------------------------------------------
    def verify_done(self, states: dict) -> None:
        """Re-queue done jobs whose artifacts a pending job will read but which are missing or corrupt."""
        needed = {self.graph.jobs[k].parent for k, st in states.items()
                  if st.state != "done" and self.graph.jobs[k].parent}
        needed |= {a for k in list(needed) for a in self.graph.ancestors(k)}
        needed = {k for k in needed if states[k].state == "done"}
        arts = self.storage.artifacts(needed)
        bad = [k for k in needed if not arts[k] or not all(self.store.verify(r) for r in arts[k].values())]
        self.requeued += bad
        if bad:
            self.storage.reset_jobs(bad)
            for k in bad:
                states[k] = self.storage.job_states([k])[k]

    def task(self, job: Job) -> Task:
        lineage = self.lineage[job.key]
        inputs = self.storage.artifacts(lineage.values())
        return Task(job.key, job.stage, job.chain, lineage, inputs)

    # -- the loop --------------------------------------------------------------------------------------------
    def run(self) -> Summary:
        import torch
        from tqdm import tqdm

        keys = list(self.graph.jobs)
        states = self.storage.job_states(keys)
        self.verify_done(states)
        summary = Summary(jobs=len(keys))
        summary.cached = sum(1 for k in keys if states[k].state == "done")
        done = {k for k in keys if states[k].state == "done"}
        failed: set[str] = set()
        blocked: set[str] = set()
        mine: dict[str, tuple[int, str, float]] = {}       # key -> (attempt, slot, start)
        slots = device_slots(self.opts) if len(done) < len(keys) else []     # nothing to run: no processes
        pool = WorkerPool(slots, self.store_root, self.opts.data_root) if slots else None
        inline = None
        if pool is None:
            from bench.stages import StageRunner
            inline = StageRunner(self.store_root, None if self.opts.device == "auto" else self.opts.device,
                                 self.opts.data_root)
        for k in self.requeued:
            print(f"{self.graph.jobs[k].stage} job {k[:12]}: its stored artifact is missing or corrupt; it runs again",
                  file=sys.stderr)
        todo = len(keys) - len(done)        # no bar at all when everything is cached
        bar = tqdm(total=todo, disable=not self.opts.progress or todo == 0, unit="job", dynamic_ncols=True,
                   desc="sweep")
        last_beat = last_poll = time.monotonic()
        retry = self.opts.retry_failed
        try:
            while True:
                open_keys = [k for k in keys if k not in done and k not in failed and k not in blocked]
                if not open_keys:
                    break
                progressed = False
                for k in open_keys:
                    if k in mine:
                        continue
                    parent = self.graph.jobs[k].parent
                    if parent in failed or parent in blocked:
                        blocked.add(k)
                        bar.update(1)
                        progressed = True
                        continue
                    if parent and parent not in done:
                        continue
                    st = states[k]
                    if st.state == "done":
                        done.add(k)
                        bar.update(1)
                        progressed = True
                        continue
                    if st.state == "failed" and not retry:
                        failed.add(k)
                        summary.failed.append({"key": k, "stage": self.graph.jobs[k].stage,
                                               "plugin": self.graph.jobs[k].plugin, "error": "failed earlier "
                                               "(use --retry-failed)"})
                        bar.update(1)
                        progressed = True
                        continue
                    slot = pool.free_slot() if pool else "inline"
                    if slot is None:
                        break
                    info = RunInfo(**{**self.info.__dict__, "worker": slot,
                                      "device": pool.device_of(slot) if pool else str(inline.device)})
                    attempt = self.storage.try_claim(k, self.owner, info, retry, self.is_stale)
                    if attempt is None:
                        continue            # another process holds it; we poll its state below
                    mine[k] = (attempt, slot, time.monotonic())
                    job = self.graph.jobs[k]
                    task = self.task(job)
                    if pool:
                        pool.submit(slot, task)
                    else:
                        from bench.train import cpu_threads
                        from bench.worker import execute
                        threads = self.opts.threads if inline.device.type == "cpu" else torch.get_num_threads()
                        with cpu_threads(threads):
                            msg = execute(inline, task, "inline")
                        self._record(msg, mine, done, failed, summary, bar)
                    progressed = True
                if pool and mine:
                    try:
                        msg = pool.results.get(timeout=0.2)
                        pool.release(msg["slot"])
                        self._record(msg, mine, done, failed, summary, bar)
                        progressed = True
                    except queue.Empty:
                        for key, slot in pool.dead_slots(mine):
                            self._record({"key": key, "slot": slot, "ok": False, "duration_s": None,
                                          "error": "worker process died (killed or out of memory)",
                                          "traceback": ""}, mine, done, failed, summary, bar)
                now = time.monotonic()
                if now - last_beat > self.opts.heartbeat_s:
                    self.storage.heartbeat(mine, self.owner)
                    last_beat = now
                if not progressed and not mine:
                    time.sleep(0.5)      # everything open is held by other processes: poll the database
                if now - last_poll > 0.5 or not progressed:
                    fresh = self.storage.job_states([k for k in open_keys if k not in mine])
                    states.update(fresh)
                    last_poll = now
                bar.set_postfix(done=len(done), failed=len(failed), running=len(mine), refresh=False)
        except BaseException:
            for k, (attempt, _, _) in mine.items():
                self.storage.release(k, attempt, "scheduler interrupted")
            raise
        finally:
            bar.close()
            if pool:
                pool.close()
        summary.blocked = len(blocked)
        for job in self.graph.jobs.values():
            row = summary.by_stage.setdefault(job.stage, {"jobs": 0, "done": 0})
            row["jobs"] += 1
            row["done"] += job.key in done
        return summary

    def _record(self, msg: dict, mine: dict, done: set, failed: set, summary: Summary, bar) -> None:
        key = msg["key"]
        attempt, _, start = mine.pop(key)
        job = self.graph.jobs[key]
        if msg["ok"]:
            out = msg["outcome"]
            metrics = [(m.name, m.subset, m.value, m.count) for m in out.metrics]
            if not self.storage.finish_run(key, attempt, self.owner, out.artifacts, metrics, out.curves,
                                           out.device, out.peak_mem_mb, out.duration_s):
                bar.write(f"{job.stage} {key[:12]}: taken over by another process while it ran; its result counts")
                return              # the job is open again for this loop: it polls the other owner's result
            done.add(key)
            summary.ran += 1
        else:
            if not self.storage.fail_run(key, attempt, msg["error"], msg["traceback"], msg.get("duration_s")):
                return              # taken over meanwhile (see above)
            failed.add(key)
            summary.failed.append({"key": key, "stage": job.stage, "plugin": job.plugin, "error": msg["error"],
                                   "shown": self.opts.progress})
            if self.opts.progress:          # said once now; the summary then lists only the key
                bar.write(f"FAILED {job.stage} {job.plugin} {key[:12]}: {msg['error']}")
        bar.update(1)


class WorkerPool:
    """One spawned process per slot, each with its own task queue; results come back on one queue."""

    def __init__(self, slots: list[tuple[str, str, int]], store_root: str, data_root: str | None):
        from bench.worker import worker_main

        ctx = mp.get_context("spawn")
        self.results = ctx.Queue()
        self.procs: dict[str, Any] = {}
        self.queues: dict[str, Any] = {}
        self.devices = {}
        self.busy: dict[str, bool] = {}
        for slot, device, threads in slots:
            q = ctx.Queue()
            p = ctx.Process(target=worker_main, name=f"bench-{slot}", daemon=True,
                            args=(slot, device, threads, store_root, data_root, q, self.results, os.getpid()))
            p.start()
            self.procs[slot], self.queues[slot], self.devices[slot], self.busy[slot] = p, q, device, False

    def device_of(self, slot: str) -> str:
        return self.devices[slot]

    def free_slot(self) -> str | None:
        return next((s for s, b in self.busy.items() if not b and self.procs[s].is_alive()), None)

    def submit(self, slot: str, task: Task) -> None:
        self.busy[slot] = True
        self.queues[slot].put(task)

    def release(self, slot: str) -> None:
        self.busy[slot] = False

    def dead_slots(self, mine: dict) -> list[tuple[str, str]]:
        out = []
        for key, (_, slot, _) in list(mine.items()):
            if not self.procs[slot].is_alive():
                out.append((key, slot))
                self.busy[slot] = True      # the slot is gone
        return out

    def close(self) -> None:
        for q in self.queues.values():
            try:
                q.put(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 5
        for p in self.procs.values():
            p.join(timeout=max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.terminate()


def register(sweep: Sweep, storage: Storage) -> Graph:
    """Register the sweep, its jobs and cells in the database (nothing runs); returns its job graph."""
    graph = build_graph(sweep.cells)
    storage.register_sweep(sweep.name, sweep.file, sweep.profile, sweep.scale, sweep.document,
                           graph.jobs.values(),
                           [(cell.label(), cell.as_dict(), key, cell.written) for cell, key in graph.cells],
                           merge=sweep.partial)
    return graph


def run_sweep(sweep: Sweep, storage: Storage, store_root: str | Path, opts: RunOptions) -> Summary:
    """Register the sweep and its jobs in the database, then run every job that is not done."""
    return Scheduler(register(sweep, storage), storage, store_root, opts).run()


def install_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so running jobs are released, not left to go stale."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    if sys.platform != "win32":
        signal.signal(signal.SIGTERM, handler)
