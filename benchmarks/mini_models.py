"""Mini model candidates (issue 17, item 2): clean BA, BadNets ASR and seconds per training on this machine.

Each candidate trains once on the mini BadNets set (CIFAR-10, ``--train`` stratified training images,
``--test`` test images, BadNets 3x3 white patch, target 5, 10 % of the training set) with the mini recipe
(``--recipe``, default mcl_paper: SGD lr 0.1, wd 1e-4, batch 64, no augmentation; ``--epochs`` with the
paper's milestones at 40 % and 70 % of them, as mcl_paper's 20 and 35 of 50).  BA is the backdoored model's
accuracy on clean test images (a stand-in for the clean model's BA: one training per candidate instead of
two), ASR the share of triggered non-target test images classified as the target.

The first candidate is the baseline: every row also reports its seconds as a ratio to the baseline's, measured
in the same run, because absolute seconds on a shared 2-core machine vary with the load of other processes
(the load average is printed before and after); CPU seconds (this process, all threads) are printed too.  Candidates run one at a time, so they share the same data.

    nice -n 10 python benchmarks/mini_models.py --data-root ../shared/datasets --epochs 30 \
        --model small_cnn:width=16 --model small_cnn:width=32 --model wrn16_1
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from bench.data.datasets import load_dataset
from bench.metrics import backdoor_metrics
from bench.models import create_model
from bench.recipes import Recipe
from bench.registry import ATTACKS, DATASETS, RECIPES
from bench.train import fit, seed_everything


def parse_spec(text: str) -> tuple[str, dict]:
    """``small_cnn:width=32`` -> ("small_cnn", {"width": 32})."""
    name, _, rest = text.partition(":")
    opts = {}
    for kv in filter(None, rest.split(",")):
        key, _, value = kv.partition("=")
        opts[key] = int(value) if value.lstrip("-").isdigit() else value
    return name, opts


def mini_recipe(name: str, epochs: int, augment: bool) -> Recipe:
    base = RECIPES.get(name).parse({})
    milestones = tuple(m for m in (round(0.4 * epochs), round(0.7 * epochs)) if 0 < m < epochs)
    return Recipe(**{**{f: getattr(base, f) for f in base.__dataclass_fields__}, "epochs": epochs,
                     "milestones": milestones, "amp": False,
                     "augment": ("crop", "flip") if augment else base.augment})


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    cfg = DATASETS.get("cifar10").parse({"train_limit": args.train, "test_limit": args.test})
    bundle = load_dataset("cifar10", cfg, args.data_root)
    info = bundle.info()
    entry = ATTACKS.get("badnets")
    attack = entry.obj(entry.parse({"target": 5}), info, args.seed)
    poisoned = attack.poison(bundle.train, torch.Generator().manual_seed(args.seed))
    train = poisoned.apply(bundle.train)
    recipe = mini_recipe(args.recipe, args.epochs, args.augment)
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}; load average before: {os.getloadavg()}")
    print(f"CIFAR-10 {len(train)} train / {len(bundle.test)} test, BadNets target 5; recipe {args.recipe} "
          f"x {args.epochs} epochs (milestones {list(recipe.milestones)}), augment {list(recipe.augment)}")
    print(f"{'model':<28} {'params':>9} {'s/train':>9} {'s/epoch':>8} {'cpu s':>8} {'x base':>7} {'BA':>6} {'ASR':>6}")
    base = None
    for text in args.model:
        name, opts = parse_spec(text)
        seed_everything(args.seed)
        model = create_model(name, info.num_classes, info.in_channels, info.image_size, info.mean, info.std, **opts)
        params = sum(p.numel() for p in model.parameters())
        start, cpu = time.perf_counter(), time.process_time()
        model = fit(model, train, recipe, device=torch.device("cpu"), seed=args.seed)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        base = base or seconds
        m = {x.name: x.value for x in backdoor_metrics(model, bundle.test, attack, torch.device("cpu"))}
        print(f"{text:<28} {params:>9,} {seconds:>9.1f} {seconds / args.epochs:>8.1f} {cpu:>8.1f} {seconds / base:>7.2f} "
              f"{100 * m['ba']:>6.1f} {100 * m['asr']:>6.1f}", flush=True)
    print(f"load average after: {os.getloadavg()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=os.environ.get("BENCH_DATA_ROOT"))
    p.add_argument("--model", action="append", required=True,
                   help="NAME[:opt=value,...]; repeat; the first is the baseline")
    p.add_argument("--recipe", default="mcl_paper")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--augment", action="store_true", help="crop + flip instead of the recipe's augmentation")
    p.add_argument("--train", type=int, default=10_000)
    p.add_argument("--test", type=int, default=2_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    run(p.parse_args())


if __name__ == "__main__":
    main()
