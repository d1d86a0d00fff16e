"""No defense: the backdoored model as trained (the "Before" column of every table)."""
from __future__ import annotations

from bench.defense import Defense, DefenseContext, DefenseResult
from bench.registry import register_defense


@register_defense("none", display_name="Before")
class NoDefense(Defense):
    """Returns the backdoored model unchanged."""

    paradigm = "post_training"
    needs = frozenset({"backdoored_model"})

    def run(self, ctx: DefenseContext) -> DefenseResult:
        return DefenseResult(model=ctx.model)
