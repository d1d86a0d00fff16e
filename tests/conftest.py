"""Shared test set-up: test-only plugins (BENCH_PLUGINS=testplugins) and an isolated workspace."""
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


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    ws = tmp_path / "ws"
    monkeypatch.setenv("BENCH_WORKSPACE", str(ws))
    monkeypatch.delenv("BENCH_DB", raising=False)
    return ws
