"""NAD: the attention map and AT loss by hand (NAD Eq. 1-2); beta = 0 reduces NAD to FT; the betas lower ASR."""
from __future__ import annotations

import math

import pytest
import torch
from defensetest import evaluate, make_context, make_defense

from defenses.nad import at_loss, attention_map, block_betas, default_blocks

# The digits images are 16 px: crop (pad 4) and flip would dominate a 5-epoch test, so the tests switch them off.
RECIPE = {"epochs": 5, "lr": 0.01, "milestones": [3], "augment": []}


def _toy() -> torch.Tensor:
    """float [1, 2, 1, 2]: channel 0 = [1, -2], channel 1 = [2, 0]."""
    return torch.tensor([[[[1.0, -2.0]], [[2.0, 0.0]]]])


def test_attention_map_is_the_normalised_channel_sum_of_squares():
    # sum_c |a_c|^2 = [1 + 4, 4 + 0] = [5, 4]; L2 norm sqrt(41)
    expected = torch.tensor([[5.0, 4.0]]) / math.sqrt(41.0)
    assert torch.allclose(attention_map(_toy(), p=2), expected, atol=1e-6)
    # p = 1: sum_c |a_c| = [3, 2]; norm sqrt(13)
    assert torch.allclose(attention_map(_toy(), p=1), torch.tensor([[3.0, 2.0]]) / math.sqrt(13.0), atol=1e-6)


def test_at_loss_is_zero_for_equal_maps_and_the_mean_squared_distance_otherwise():
    a = _toy()
    assert at_loss(a, a).item() == 0.0
    assert at_loss(a, 3 * a).item() == pytest.approx(0.0, abs=1e-10)     # maps are normalised: scale-free
    b = torch.tensor([[[[0.0, 1.0]], [[0.0, 0.0]]]])                      # map [0, 1]
    expected = ((5 / math.sqrt(41)) ** 2 + (4 / math.sqrt(41) - 1) ** 2) / 2
    assert at_loss(a, b).item() == pytest.approx(expected, rel=1e-5)
    assert at_loss(a, b).item() > 0


def test_default_blocks_and_betas_align_with_the_deepest_blocks(backdoor):
    assert default_blocks(backdoor.model) == ("block1", "block2", "block3")
    assert block_betas(("block2", "block3"), (500.0, 1000.0, 1000.0)) == (1000.0, 1000.0)
    with pytest.raises(ValueError, match="one beta per block"):
        block_betas(("block1", "block2", "block3"), (1000.0,))


def test_nad_with_zero_betas_is_ft_and_the_betas_change_the_result(backdoor):
    ft = make_defense({"name": "ft", **RECIPE})
    ft_model = ft.run(make_context(backdoor, ft)).model
    plain = make_defense({"name": "nad", **RECIPE, "betas": [0.0, 0.0, 0.0]})
    ctx = make_context(backdoor, plain)
    before = [p.clone() for p in ctx.model.parameters()]
    plain_model = plain.run(ctx).model
    for a, b in zip(ft_model.state_dict().values(), plain_model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    nad = make_defense({"name": "nad", **RECIPE})
    nad_model = nad.run(make_context(backdoor, nad)).model
    assert not any(torch.equal(a, b) for a, b in zip(before, nad_model.parameters()))
    # Measured (clean ratio 0.1, seed 0): FT keeps ASR 1.00 (BA 0.994); NAD ASR 0.65, BA 0.975 -- but another
    # 2-core machine measured NAD ASR 1.00: on 143 digits the size of NAD's ASR drop depends on the last bits of
    # the CPU's sums, so it is not asserted.  What holds everywhere: the betas move the weights away from FT's,
    # NAD is never worse than FT on the backdoor, and it keeps clean accuracy.
    assert any(not torch.allclose(a, b, atol=1e-4) for a, b in zip(ft_model.parameters(), nad_model.parameters()))
    ft_after, nad_after = evaluate(backdoor, ft_model), evaluate(backdoor, nad_model)
    assert nad_after["asr"] <= ft_after["asr"], (ft_after, nad_after)
    assert nad_after["ba"] >= backdoor.metrics["ba"] - 0.05, nad_after
