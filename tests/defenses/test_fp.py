"""Fine-Pruning: channels go in increasing mean-activation order, a pruned channel is zero at the block output
(also on a ResNet, whose identity shortcut kept a branch-pruned channel alive), the mask survives a state-dict
round trip through ``fc``, pruning stops on clean_val, and on the digits backdoor it lowers ASR."""
from __future__ import annotations

import torch
from defensetest import evaluate, make_context, make_defense

from bench.data.imageset import ImageSet
from bench.features import last_block, tap
from bench.models import create_model
from defenses.fp import bake_into_head, mask_block_output, mean_activations, prune_until, pruning_order


def _toy():
    torch.manual_seed(0)
    return create_model("small_cnn", 3, 1, 8, None, None, width=2).eval()


def _last_bn(model):
    return [m for m in model.get_submodule(last_block(model)).modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]


def test_order_is_increasing_mean_activation_and_masking_zeroes_the_channel():
    model = _toy()
    bn = _last_bn(model)
    with torch.no_grad():                          # make the 8 last-layer channels' activations distinct
        bn.bias.copy_(torch.tensor([0.5, -9.0, 3.0, 0.1, 2.0, -9.0, 1.0, 4.0]))
        bn.weight.fill_(0.01)
    images = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    acts = mean_activations(model, images)
    order = pruning_order(acts)
    assert order[:2] == [1, 5] and order[2:] == [3, 0, 6, 4, 2, 7]     # ReLU(-9) = 0 ties keep channel order
    handle = mask_block_output(model, [7])
    assert mean_activations(model, images)[7] == 0 and torch.equal(mean_activations(model, images)[:7], acts[:7])
    handle.remove()
    assert mean_activations(model, images)[7] > 0


def test_resnet_pruned_channel_is_zero_at_the_block_output_and_survives_a_state_dict_round_trip():
    torch.manual_seed(0)
    model = create_model("resnet18", 4, 3, 16, None, None).eval()
    x = torch.rand(6, 3, 16, 16)
    block = last_block(model)
    with tap(model, [block], detach=True) as acts:
        model(x)
    c = int(acts[block].mean((0, 2, 3)).argmax())                    # a live channel of the last block
    # The old rule (zero the residual branch's last conv/BN) leaves the channel alive via the identity shortcut.
    branch = model.layer4[-1]
    assert branch.downsample is None
    saved = (branch.conv2.weight[c].clone(), branch.bn2.weight[c].clone(), branch.bn2.bias[c].clone())
    with torch.no_grad():
        branch.conv2.weight[c], branch.bn2.weight[c], branch.bn2.bias[c] = 0.0, 0.0, 0.0
        with tap(model, [block], detach=True) as acts:
            model(x)
        assert acts[block][:, c].abs().sum() > 0
        branch.conv2.weight[c], branch.bn2.weight[c], branch.bn2.bias[c] = saved
    mask_block_output(model, [c])
    with torch.no_grad(), tap(model, [block], detach=True) as acts:
        masked_logits = model(x)
    assert acts[block][:, c].abs().sum() == 0 and acts[block].abs().sum() > 0
    images = (x * 255).round().to(torch.uint8)
    bake_into_head(model, [c], images)
    assert model.fc.weight[:, c].abs().sum() == 0
    fresh = create_model("resnet18", 4, 3, 16, None, None).eval()
    fresh.load_state_dict(model.state_dict())                           # the runner's storage: no hook
    with torch.no_grad():
        assert torch.allclose(fresh(images.float() / 255), model(images.float() / 255), atol=1e-5)
        assert torch.allclose(model(x), masked_logits, atol=1e-5)


def test_prune_until_stops_at_the_validation_threshold():
    model = _toy()
    bn = _last_bn(model)
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
    assert not model.get_submodule(last_block(model))._forward_hooks   # the probe masks are removed


def test_fp_prunes_dormant_channels_and_lowers_asr(backdoor):
    defense = make_defense({"name": "fp", "ft_epochs": 3, "augment": []})
    ctx = make_context(backdoor, defense, clean_ratio=0.1)
    out = defense.run(ctx)
    acts = mean_activations(out.model, ctx.clean.images)
    dead = (acts == 0) & (out.model.fc.weight.abs().sum(0) == 0)
    assert int(dead.sum()) == out.metrics["pruned"] > 0                # pruned channels stayed zero through FT
    after = evaluate(backdoor, out.model)
    # MEASURED_FP
    assert after["asr"] < 0.6 and after["ba"] >= backdoor.metrics["ba"] - 0.05, after
