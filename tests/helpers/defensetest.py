"""Helpers for defense tests (import as ``defensetest``): a small backdoored digits model, and contexts built as
the runner builds them (``bench.stages.build_context``), so a defense is tested through the door it runs through."""
from __future__ import annotations

import copy
import dataclasses
from types import SimpleNamespace

import torch

from bench.attack import CLEAN
from bench.data.datasets import DigitsConfig, load_dataset
from bench.metrics import backdoor_metrics
from bench.models import create_model
from bench.registry import ATTACKS, DEFENSES, RECIPES
from bench.stages import build_context
from bench.train import fit, seed_everything

MODEL = {"name": "small_cnn", "width": 16}


BADNETS = {"name": "badnets", "target": 0, "poison_rate": 0.1}


def poisoned_digits(spec=None, relabel: bool = False):
    """``spec`` (default BadNets: 3x3 grid, target 0, 10 % of non-target digits) on digits:
    (bundle, attack, poisoned, train).  ``relabel`` plants a clean-label attack's trigger dirty-label (non-target
    images stamped and relabelled), for tests that need its trigger planted in a model of 1,437 digits."""
    torch.set_num_threads(2)
    bundle = load_dataset("digits", DigitsConfig())
    entry, cfg = ATTACKS.resolve(spec or BADNETS, "attack")
    attack = entry.obj(cfg, bundle.info(), 0)
    if relabel:
        attack.label_type = "dirty"
    poisoned = attack.poison(bundle.train, torch.Generator().manual_seed(0))
    return bundle, attack, poisoned, poisoned.apply(bundle.train)


def train_backdoor(spec=None, relabel: bool = False):
    """The poisoned digits of ``poisoned_digits(spec, relabel)`` learned by a width-16 small CNN (BadNets: ASR ~1,
    BA ~0.99); the attack must plant (ASR and BA > 0.9)."""
    bundle, attack, poisoned, train = poisoned_digits(spec, relabel)
    recipe = dataclasses.replace(RECIPES.resolve("quick", "recipe")[1], epochs=15)
    seed_everything(0)
    model = fit(create_model("small_cnn", 10, 1, 16, bundle.mean, bundle.std, width=16), train, recipe, seed=0)
    metrics = {m.name: m.value for m in backdoor_metrics(model, bundle.test, attack)}
    assert metrics["asr"] > 0.9 and metrics["ba"] > 0.9, metrics
    return SimpleNamespace(bundle=bundle, attack=attack, poisoned=poisoned, train=train, model=model,
                           recipe=recipe, metrics=metrics)


def make_context(backdoor, defense, clean_ratio: float = 0.1, seed: int = 0, curves: bool = False):
    """A DefenseContext for ``defense`` over the session's backdoored digits model (a fresh copy of it), with the
    global generators seeded as ``Runner.run_defend`` seeds them before ``run()``: a test's numbers then do not
    depend on which tests ran before it in the session."""
    chain = {"model": MODEL, "recipe": {"name": "quick", **dataclasses.asdict(backdoor.recipe)}, "seed": seed,
             "clean_ratio": clean_ratio, "clean_stratified": False, "curves": curves}
    ctx = build_context(defense, chain, backdoor.bundle, backdoor.poisoned, backdoor.train, backdoor.attack,
                        torch.device("cpu"), copy.deepcopy(backdoor.model))
    seed_everything(seed)
    return ctx


def run_with_fewer_poisoned(backdoor, defense, n_poisoned: int):
    """Run a training-set defense on the fixture's training set keeping only its first ``n_poisoned`` poisoned
    samples (seeded as the runner seeds before run()); returns (context, result, poisoned mask of that set)."""
    poisoned_all = backdoor.poisoned.kind != CLEAN
    keep = torch.nonzero(~poisoned_all | (torch.cumsum(poisoned_all.long(), 0) <= n_poisoned)).flatten()
    ctx = make_context(backdoor, defense)
    ctx.train = ctx.train.subset(keep)
    return ctx, defense.run(ctx), poisoned_all[keep]


def make_defense(spec):
    entry, cfg = DEFENSES.resolve(spec, "defense", "digits")
    return entry.obj(cfg)


def evaluate(backdoor, model) -> dict[str, float]:
    return {m.name: m.value for m in backdoor_metrics(model, backdoor.bundle.test, backdoor.attack)}
