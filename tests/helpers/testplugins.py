"""Plugins that exist only for the tests (loaded through BENCH_PLUGINS=testplugins)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from bench.defense import Defense, DefenseConfig, DefenseContext, DefenseResult
from bench.registry import register_defense


@dataclass(frozen=True)
class ExplodeConfig(DefenseConfig):
    message: str = "boom"


@register_defense("explode")
class Explode(Defense):
    """Always raises: failure isolation."""

    Config = ExplodeConfig
    needs = frozenset({"backdoored_model"})

    def run(self, ctx: DefenseContext) -> DefenseResult:
        raise RuntimeError(self.cfg.message)


@dataclass(frozen=True)
class SleepConfig(DefenseConfig):
    seconds: float = 0.5


@register_defense("sleep")
class Sleep(Defense):
    """Returns the model unchanged after a pause (gives crash tests a window); logs its pid."""

    Config = SleepConfig
    needs = frozenset({"backdoored_model"})

    def run(self, ctx: DefenseContext) -> DefenseResult:
        log = os.environ.get("BENCH_TEST_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{os.getpid()} {self.cfg.seconds} {ctx.seed}\n")
        time.sleep(self.cfg.seconds)
        return DefenseResult(model=ctx.model)
