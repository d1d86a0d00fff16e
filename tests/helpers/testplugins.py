"""Plugins that exist only for the tests (loaded through BENCH_PLUGINS=testplugins)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from bench.attack import Attack, AttackConfig
from bench.defense import Defense, DefenseConfig, DefenseContext, DefenseResult
from bench.registry import register_attack, register_defense


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


@dataclass(frozen=True)
class ToyGeneratedConfig(AttackConfig):
    strength: float = 0.5            # a generator field: another value trains another generator
    gen_epochs: int = 2              # a generator field with a schedule (bench/budget.py scales it in the tests)
    gen_batch_size: int = 32
    poison_rate: float = 0.2


@register_attack("toy_generated")
class ToyGenerated(Attack):
    """A blend whose pattern comes from a 'trained' generator stage: a seeded random pattern, drawn once.

    Each ``train_generator`` call appends a line to $BENCH_TEST_LOG, so tests count how often it trained.
    """

    Config = ToyGeneratedConfig
    generator_fields = ("strength", "gen_epochs", "gen_batch_size")

    def __init__(self, cfg, info, seed):
        super().__init__(cfg, info, seed)
        self.pattern: torch.Tensor | None = None

    def train_generator(self, train, device, surrogate=None):
        log = os.environ.get("BENCH_TEST_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"generate {self.seed} {self.cfg.strength}\n")
        c, h, w = train.images.shape[1:]
        pattern = torch.rand(c, h, w, generator=torch.Generator().manual_seed(self.seed))
        return {"pattern": pattern}, {"pattern_mean": float(pattern.mean())}

    def load_generator(self, state):
        self.pattern = state["pattern"]

    def apply_trigger(self, x_u8, train):
        if self.pattern is None:
            raise RuntimeError("toy_generated: no generator loaded")
        a = self.cfg.strength
        return ((1 - a) * x_u8.float() + a * 255 * self.pattern).round().clamp(0, 255).to(torch.uint8)
