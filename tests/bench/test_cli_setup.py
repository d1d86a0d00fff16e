"""A newcomer's setup: README's commands are CI's commands, plain `pytest` from a fresh copy finds the real
packages (not the test folders named like them), and a plugin registry never stays half-loaded."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from benchtest import REPO

from bench.registry import Registry


def readme_setup_commands() -> list[str]:
    block = re.search(r"## Setup\s+```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block, "README.md has no bash block under '## Setup'"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_ci_runs_the_readme_setup_commands_word_for_word():
    commands = readme_setup_commands()
    assert commands[-1] == "pytest"
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    tail = [line for line in ci if line and not line.startswith("#")][-len(commands):]
    assert tail == commands


def test_plain_pytest_from_a_copy_imports_the_packages_not_the_test_folders(tmp_path):
    """`pytest` (the console script, not `python -m pytest`) on tests/attacks from a copy of the checkout: with
    the folder tests/attacks on sys.path, `import attacks` found it and every attack test failed."""
    exe = shutil.which("pytest", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if exe is None:
        pytest.skip("no `pytest` console script on PATH")
    copy = tmp_path / "clone"
    ignore = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "bench-workspace", ".pytest_cache")
    for name in ("bench", "attacks", "defenses", "tests", "sweeps", "reports"):
        shutil.copytree(REPO / name, copy / name, ignore=ignore)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, copy / name)
    # a probe beside the attack tests: it passes only if both packages come from the copy (not from the folder
    # tests/attacks, nor from wherever an editable install points)
    (copy / "tests" / "attacks" / "test_zz_probe.py").write_text(
        "from pathlib import Path\nimport attacks\nimport bench\n\n\ndef test_the_copy_is_imported():\n"
        f"    root = Path({str(copy.resolve())!r})\n"
        "    assert Path(attacks.__file__).resolve() == root / 'attacks' / '__init__.py'\n"
        "    assert Path(bench.__file__).resolve() == root / 'bench' / '__init__.py'\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BENCH_PLUGINS", "PYTEST_ADDOPTS")}
    env["BENCH_WORKSPACE"] = str(tmp_path / "ws")
    done = subprocess.run([exe, "tests/attacks/test_badnets.py", "tests/attacks/test_zz_probe.py", "-p",
                           "no:cacheprovider"], cwd=copy, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "failed" not in done.stdout and "error" not in done.stdout.lower()


def test_a_registry_whose_first_load_fails_is_not_left_half_loaded(tmp_path, monkeypatch):
    (tmp_path / "half_a.py").write_text(
        "from conftest_reg import REG\n@REG.register('one')\ndef one(): pass\n")
    (tmp_path / "half_b.py").write_text("raise ImportError('broken plugin module')\n")
    (tmp_path / "conftest_reg.py").write_text(
        "from bench.registry import Registry\nREG = Registry('thing', ('half_a', 'half_b'))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import conftest_reg

    reg: Registry = conftest_reg.REG
    for _ in range(2):                  # the second use retries and fails again, instead of answering ['one']
        with pytest.raises(ImportError, match="broken plugin module"):
            reg.names()
    (tmp_path / "half_b.py").write_text("from conftest_reg import REG\n@REG.register('two')\ndef two(): pass\n")
    sys.modules.pop("half_b", None)
    assert reg.names() == ["one", "two"]
    for name in ("half_a", "half_b", "conftest_reg"):
        sys.modules.pop(name, None)
