"""No two bench modules import each other (at module level or inside a function): a cycle makes import order
matter (bench/cli <-> bench/launch/slurm.py and bench/data/datasets.py <-> bench/data/sources.py were two)."""
from __future__ import annotations

import ast
import itertools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imports() -> dict[str, set[str]]:
    out = {}
    for path in (ROOT / "bench").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bench"):
                deps |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("bench")}
        out[name] = deps
    return {m: {d for d in deps if d in out and d != m} for m, deps in out.items()}


def test_no_two_bench_modules_import_each_other():
    graph = imports()
    assert "bench.launch.slurm" in graph["bench.cli"] and "bench.data.datasets" in graph["bench.data.sources"]
    cycles = [(a, b) for a, b in itertools.combinations(sorted(graph), 2) if b in graph[a] and a in graph[b]]
    assert cycles == []
