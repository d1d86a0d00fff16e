"""Typed config parsing: the checks every plugin's options go through."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from bench.config import ConfigError, parse, to_plain, with_overrides


@dataclass(frozen=True)
class Demo:
    betas: tuple[float, float] = (0.9, 0.999)
    steps: tuple[int, ...] = (2, 10)
    mode: Literal["a", "b"] = "a"
    limit: Optional[int] = None
    lr: float = 0.1


def test_fixed_length_tuple_keeps_order_and_types():
    cfg = parse(Demo, {"betas": [0.5, 1], "steps": [3]})
    assert cfg.betas == (0.5, 1.0) and isinstance(cfg.betas[1], float) and cfg.steps == (3,)
    assert parse(Demo, to_plain(cfg)) == cfg                    # round trip through stored JSON


@pytest.mark.parametrize("data, path, message", [
    ({"betas": [0.5]}, "betas", "expected 2 items"),
    ({"betas": [0.5, "x"]}, "betas[1]", "expected float"),
    ({"steps": [1, 2.5]}, "steps[1]", "expected int"),
    ({"mode": "c"}, "mode", "valid: a | b"),
    ({"limit": "5"}, "limit", "expected int"),
    ({"lr": "0.1"}, "lr", "expected float"),
    ({"lrr": 1}, "lrr", "did you mean 'lr'"),
])
def test_errors_carry_the_key_path(data, path, message):
    with pytest.raises(ConfigError) as info:
        parse(Demo, data, "grid.defense[0]")
    assert info.value.path == f"grid.defense[0].{path}" and message in str(info.value)


def test_int_is_accepted_as_float_but_bool_is_not():
    assert parse(Demo, {"lr": 1}).lr == 1.0
    with pytest.raises(ConfigError):
        parse(Demo, {"lr": True})


def test_with_overrides_returns_a_new_checked_copy():
    base = Demo()
    new = with_overrides(base, {"limit": 3})
    assert base.limit is None and new.limit == 3
    with pytest.raises(ConfigError):
        with_overrides(base, {"limit": "three"})
