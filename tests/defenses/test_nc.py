"""Neural Cleanse on the session's BadNets digits model (target 0): the label scan finds the target with a MAD
anomaly index above 2, unlearning the reversed trigger lowers ASR, and the two documented fall-backs hold."""
from __future__ import annotations

import math

import pytest
import torch
from defensetest import evaluate, make_context, make_defense

from defenses.mcl import _nc_trigger
from defenses.nc import choose_stamped

# Few inversion epochs, short unlearning without crop/flip (digits are not flip-invariant).
FAST = {"inv_epochs": 8, "inv_lr": 0.1, "inv_augment": [], "inv_early_stop": 3,
        "epochs": 5, "milestones": [2], "lr": 0.01, "augment": []}
# NC's original cost schedule (patience 1 so it switches on and moves within the few epochs).
ADAPTIVE = {"inv_schedule": "adaptive", "inv_parametrisation": "tanh", "inv_lambda": 1e-3, "inv_patience": 1}


@pytest.mark.parametrize("inversion", [{}, ADAPTIVE], ids=["shared_mcl_setting", "nc_original_schedule"])
def test_nc_scan_finds_the_target_and_unlearning_lowers_asr(backdoor, inversion):
    defense = make_defense({"name": "nc", **FAST, **inversion})
    ctx = make_context(backdoor, defense, clean_ratio=0.1)
    out = defense.run(ctx)
    print(inversion, out.metrics)
    assert out.metrics["inversion_found"] == 1.0 and 1 <= out.metrics["inversion_epochs"] <= 8
    # Measured (context seeds 0/1/2): anomaly index 8.9/4.3/11.1 shared setting, 9.4/9.8/7.5 NC's schedule; the
    # target's mask L1 12.5/23.2/8.4 of 256 pixels shared, 34.2/47.5/63.9 with NC's tanh masks and lambda 1e-3.
    assert out.metrics["detected_label"] == backdoor.attack.cfg.target == 0
    assert out.metrics["anomaly_index"] > 2
    assert out.metrics["n_flagged"] >= 1 and out.metrics["inversion_asr"] > 0.9
    after = evaluate(backdoor, out.model)
    # Measured (context seeds 0/1/2): ASR 1.00 -> 0.04/0.00/0.15 shared, 0.00/0.01/0.00 NC's schedule; BA 0.997 ->
    # 0.93/0.86/0.94 shared, 0.84/0.83/0.85 NC's schedule.  Unlearning with true labels costs BA (as in MCL Table 1),
    # more with NC's larger tanh masks; the same fine-tuning without stamps leaves BA and ASR unchanged (0.997/1.0),
    # so the drop is the unlearning's.  The bound allows the measured worst case (0.17) and fails on a collapse.
    assert after["asr"] <= backdoor.metrics["asr"] - 0.5
    assert after["ba"] >= backdoor.metrics["ba"] - 0.2


def test_nc_with_a_given_target_inverts_only_that_label(backdoor):
    defense = make_defense({"name": "nc", "target": 0, **FAST})
    assert defense.privileged == ("target label",)
    ctx = make_context(backdoor, defense, clean_ratio=0.1)
    out = defense.run(ctx)
    assert math.isnan(out.metrics["anomaly_index"]) and out.metrics["detected_label"] == 0
    # MCL with the same target and inversion fields inverts the very same trigger (one seeded stream, one setting).
    mcl = make_defense({"name": "mcl", "target": 0, **{k: v for k, v in FAST.items() if k.startswith("inv_")}})
    trigger, metrics = _nc_trigger(make_context(backdoor, mcl, clean_ratio=0.1), mcl.cfg)
    assert {k: metrics[k] for k in ("mask_l1", "inversion_found", "inversion_epochs")} == \
        {k: out.metrics[k] for k in ("mask_l1", "inversion_found", "inversion_epochs")}
    assert evaluate(backdoor, out.model)["asr"] < 0.5            # measured 0.00


def test_nc_without_a_flagged_label_returns_the_model_unchanged(backdoor):
    defense = make_defense({"name": "nc", **FAST, "inv_epochs": 1, "anomaly_threshold": 1e9})
    ctx = make_context(backdoor, defense, clean_ratio=0.1)
    before = [p.clone() for p in ctx.model.parameters()]
    out = defense.run(ctx)
    assert out.metrics["n_flagged"] == 0 and out.metrics["detected_label"] == -1
    assert out.model is ctx.model and all(torch.equal(a, b) for a, b in zip(before, out.model.parameters()))


def test_unlearning_stamps_a_fifth_round_robin():
    stamp = choose_stamped(130, 0.2, 2, torch.Generator().manual_seed(0))
    assert int((stamp >= 0).sum()) == 26
    assert int((stamp == 0).sum()) == 13 and int((stamp == 1).sum()) == 13
