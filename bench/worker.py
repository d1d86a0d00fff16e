"""The long-lived worker process: one per device slot, pulling tasks from its queue until told to stop.

This module imports no torch at import time, so ``CUDA_VISIBLE_DEVICES`` and the thread count are set before
torch starts in the child.  A worker exits when its scheduler disappears (killed), so no orphan keeps running.
"""
from __future__ import annotations

import os
import queue
import traceback


def worker_main(slot: str, device: str, threads: int, store_root: str, data_root: str | None,
                tasks, results, parent_pid: int) -> None:
    """Entry point of a worker process (spawned)."""
    device = configure_threads(device, threads)
    from bench.stages import StageRunner

    runner = StageRunner(store_root, device, data_root)
    while True:
        try:
            task = tasks.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent_pid:      # the scheduler died (e.g. SIGKILL): stop, do not linger
                return
            continue
        if task is None:
            return
        results.put(execute(runner, task, slot))


def configure_threads(device: str, threads: int) -> str:
    """Set a fresh worker process up before torch starts: its GPU, its share of the CPU cores; returns the
    device name to use inside it."""
    if device.startswith("cuda:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
        device = "cuda"
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(max(1, threads))
    return device


def execute(runner, task, slot: str) -> dict:
    """Run one task and package the outcome (or the failure with its traceback) for the scheduler."""
    import time

    start = time.perf_counter()
    try:
        out = runner.run(task)
        return {"key": task.key, "slot": slot, "ok": True, "outcome": out}
    except Exception as err:  # the scheduler records it as a failed run; the sweep goes on
        return {"key": task.key, "slot": slot, "ok": False, "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc(), "duration_s": time.perf_counter() - start}
