"""I-BAU: the fixed-point hypergradient against the analytic implicit gradient of a quadratic, and unlearning
the digits backdoor."""
from __future__ import annotations

import torch
from defensetest import evaluate, make_context, make_defense

from defenses.ibau import implicit_hypergradient


def _quadratic():
    """Inner g = 1/2 d^T A d - d^T B t (so d* = A^-1 B t); outer H = 1/2 ||d - c||^2 + e . t."""
    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))[0]
    a = q @ torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)) @ q.T
    b = torch.randn(3, 2, generator=g, dtype=torch.float64)
    c, e = torch.randn(3, generator=g, dtype=torch.float64), torch.randn(2, generator=g, dtype=torch.float64)
    t = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    d_star = torch.linalg.solve(a, b @ t.detach())
    def inner(d): return 0.5 * d @ a @ d - d @ b @ t
    def outer(d): return 0.5 * (d - c).pow(2).sum() + e @ t
    return a, b, c, e, t, d_star, inner, outer


def test_hypergradient_equals_the_analytic_implicit_gradient():
    a, b, c, e, t, d_star, inner, outer = _quadratic()
    analytic = e + b.T @ torch.linalg.solve(a, d_star - c)      # dH/dt = e + (A^-1 B)^T (d* - c)
    (grad,) = implicit_hypergradient(d_star, [t], inner, outer, k=500, fp_step=0.1)
    assert torch.allclose(grad, analytic, atol=1e-9)
    # K iterations are the truncated Neumann series: v_K = sum_{j<K} (I - eta A)^j (d* - c)
    eta, m = 0.1, torch.eye(3, dtype=torch.float64) - 0.1 * a
    v2 = (torch.eye(3, dtype=torch.float64) + m) @ (d_star - c)
    (grad2,) = implicit_hypergradient(d_star, [t], inner, outer, k=2, fp_step=eta)
    assert torch.allclose(grad2, e + eta * b.T @ v2, atol=1e-12)
    assert (grad2 - analytic).abs().max() > 1e-3                 # so K really truncates


def test_ibau_changes_the_model_and_lowers_asr(backdoor):
    defense = make_defense({"name": "ibau"})
    ctx = make_context(backdoor, defense, clean_ratio=0.5)
    before = [p.clone() for p in ctx.model.parameters()]
    out = defense.run(ctx)
    assert any(not torch.equal(a, b) for a, b in zip(before, out.model.parameters()))
    # I-BAU on a few hundred digits is noisy: the last bits of the CPU's sums move its outcome as much as the seed.
    # At clean ratio 0.3 (388 images, 4 batches) seed 0's ASR went 1.00 -> 0.34 on one 2-core machine, 0.64 on
    # another and 0.98 (no effect) on a third (AMD EPYC), whose seeds 1-3 gave 0.23 / 0.30 / 0.89.  At 0.5 (646
    # images, 7 batches of <= 100, 5 rounds) that machine measured ASR 0.11 / 0.40 / 0.15 / 0.18 and BA 0.91 /
    # 0.88 / 0.93 / 0.86 for seeds 0-3 (before: 1.00 / 0.997), so the check below holds with a 0.35 margin.
    # Plain FT keeps ASR 1.00 here (test_nad): what lowers it is the unlearning.
    after = evaluate(backdoor, out.model)
    assert after["asr"] <= backdoor.metrics["asr"] - 0.25, after
    assert after["ba"] >= backdoor.metrics["ba"] - 0.3, after
    assert out.metrics["delta_l2"] > 0


def test_delta_lives_in_the_models_input_units_by_default():
    """delta is added where the original added it: to what the model's first layer sees.  Our models normalise
    inside, so one unit of delta is one std of the model's own normalisation (the dataset's std for a zoo model,
    1 for a checkpoint loaded with ``normalize: none``); ``normalised`` forces the dataset's std, ``pixel`` 1."""
    from types import SimpleNamespace

    from defenses.ibau import IBAUConfig, delta_scale, unlearning_losses

    seen = []

    class _Record(torch.nn.Module):
        def __init__(self, std):
            super().__init__()
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

        def forward(self, x):
            seen.append(x.detach().clone())
            return x.flatten(1)[:, :2]

    info = SimpleNamespace(std=(0.25, 0.5))
    x, y = torch.full((4, 2, 3, 3), 0.5), torch.zeros(4, dtype=torch.long)
    delta = torch.ones(1, 2, 3, 3)
    cases = [("input", (0.25, 0.5), (0.25, 0.5)),       # a zoo model: its std is the dataset's
             ("input", (1.0, 1.0), (1.0, 1.0)),         # normalize: none (NAD's, ABL's checkpoints)
             ("normalised", (1.0, 1.0), (0.25, 0.5)),   # forced to the dataset's std
             ("pixel", (0.25, 0.5), (1.0, 1.0))]
    for space, model_std, step in cases:
        cfg, model = IBAUConfig(delta_space=space), _Record(model_std)
        inner, _ = unlearning_losses(model, x, y, cfg, torch.Generator().manual_seed(0),
                                     delta_scale(info, cfg, torch.device("cpu"), model))
        inner(delta)
        assert torch.allclose(seen[-1][:, 0], torch.full((4, 3, 3), 0.5 + step[0])), (space, model_std)
        assert torch.allclose(seen[-1][:, 1], torch.full((4, 3, 3), 0.5 + step[1])), (space, model_std)



def test_unlearning_batches_mix_classes_in_one_order_for_every_round(backdoor, monkeypatch):
    """The original passes over its (randomly ordered) set unshuffled, the same order each round; a subset sorted
    class by class (as the offline datasets are stored) must not become one-class batches."""
    import defenses.ibau as ibau

    defense = make_defense({"name": "ibau", "n_rounds": 2, "k": 1, "batch_size": 32})
    ctx = make_context(backdoor, defense, clean_ratio=0.3)
    order = torch.argsort(ctx.clean.labels, stable=True)
    ctx.clean = ctx.clean.subset(order)                          # class 0 first, then 1, ...
    seen, real = [], ibau.unlearning_losses

    def spy(model, x, y, cfg, gen, scale=1.0):
        seen.append(y.clone())
        return real(model, x, y, cfg, gen, scale)

    monkeypatch.setattr(ibau, "unlearning_losses", spy)
    defense.run(ctx)
    per_round = len(seen) // 2
    assert per_round == -(-len(ctx.clean) // 32)
    assert all(len(torch.unique(y)) > 1 for y in seen), [torch.unique(y).tolist() for y in seen]
    assert all(torch.equal(a, b) for a, b in zip(seen[:per_round], seen[per_round:]))
