"""Shared test set-up: test-only plugins (BENCH_PLUGINS=testplugins), an isolated workspace, and the CPU thread
count every test starts with."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

HELPERS = Path(__file__).parent / "helpers"
sys.path.insert(0, str(HELPERS))
os.environ["BENCH_PLUGINS"] = "testplugins"
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HELPERS), os.environ.get("PYTHONPATH", "")]))
torch.set_num_threads(2)

# CPU float sums round differently with another thread count, and test modules used to set it at import (1 in
# tests/attacks, 2 elsewhere), so a test's numbers depended on which tests ran before it.  Each test now starts
# with the count its thresholds were measured with, whatever the order (the session's backdoored digits model is
# trained with 2 threads by tests/helpers/defensetest.py either way).  Sweeps run jobs single-threaded anyway.
THREADS = {"attacks": 1}


@pytest.fixture(autouse=True)
def _thread_count(request):
    torch.set_num_threads(THREADS.get(request.path.parent.name, 2))


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    ws = tmp_path / "ws"
    monkeypatch.setenv("BENCH_WORKSPACE", str(ws))
    monkeypatch.delenv("BENCH_DB", raising=False)
    return ws
