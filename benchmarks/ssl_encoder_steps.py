"""Seed 002's filters against the SimCLR encoder's step budget (issue 20): is ~40 % clean kept the encoder?

Seed 002 (§4) trains its SimCLR encoder for 1,000 epochs (~49,000 steps at SupContrast's batch 1,024 on 50,000
images) and its kNN / Energy filters keep ~89 % of the clean and <= 3 % of the poisoned images (Table 1).  The mini
profile caps the encoder at 20 epochs over 20,000 images (400 steps); there the filters keep 39-41 % of the clean
images.  This script trains the encoder exactly as ``defenses/ssl_cleanse.py`` does (``train_simclr``: its config,
schedule, views and loss) on seed 002's Table 2 BadNet training set at the mini data scale, and after every
``--every`` epochs reads the encoder as the defense would (``embed_all``, ``SSLCleanse.decide``, ``cleanse``) and
prints, against the poison stage's ground truth (which the defense never sees; ``bench.metrics`` as the runner
stores it):

- ``knn acc``: the encoder's kNN accuracy on the *true* labels (the runner's ``encoder_knn_acc`` health check);
- for each filter, the share of clean images kept, of poisoned images kept, and of the target class's clean
  images kept (the class a filter can empty to look good).

The cosine schedule spans the whole ``--epochs``, so a row at epoch 20 of a 60-epoch run is not the mini encoder
(which anneals by epoch 20); the run's last row is a finished encoder of that budget.  ``--batch-size`` below
SupContrast's 1,024 buys more optimizer steps for the same images seen (SupContrast's own small-batch SimCLR runs
use 256 with lr 0.5 as well).

    python benchmarks/ssl_encoder_steps.py --data-root ../shared/datasets --epochs 60 --every 10
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch
from _poisoned import poisoned_cifar10

from bench.defense import Curves, DefenseContext
from bench.metrics import cleansing_metrics, knn_health
from bench.models import create_model
from bench.recipes import Recipe
from bench.train import cpu_threads, seed_everything
from defenses.ssl_cleanse import SSLCleanse, SSLCleanseConfig, cleanse, embed_all, train_simclr

# seed 002 Table 2's BadNet: a 3x3 noise patch at a random location, 1,000 of 45,000 non-target images (mini: 400).
TABLE2_BADNET = {"name": "badnets", "target": 0, "pattern": "noise", "size": 3, "position": "random",
                 "poison_rate": 1000 / 45000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", default="../shared/datasets")
    ap.add_argument("--train", type=int, default=20000, help="training images (0: all 50,000, the paper's scale)")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=SSLCleanseConfig.simclr_batch_size)
    ap.add_argument("--attack", default=json.dumps(TABLE2_BADNET))
    ap.add_argument("--model", default="small_cnn", help="the encoder's backbone (mini: small_cnn width 16)")
    ap.add_argument("--model-options", default='{"width": 16}')
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    data = poisoned_cifar10(args.data_root, args.train, args.attack, args.seed)
    info, train, target = data.bundle.info(), data.train, data.attack.cfg.target
    cfg = SSLCleanseConfig(simclr_epochs=args.epochs, simclr_batch_size=args.batch_size, filter="knn_energy")
    defense = SSLCleanse(cfg)     # its decide(): both filters' decisions and §3.3's k, as the defense runs them
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    print(f"{len(train)} training images, {int(data.is_poison.sum())} poisoned (target {target}); encoder {args.model} "
          f"{args.model_options}; SimCLR batch {args.batch_size}, {args.epochs} epochs ({steps_per_epoch} steps each); "
          f"paper: 1,000 epochs at batch 1,024 on 50,000 images (~49,000 steps)")
    print("epoch  steps  knn acc | kNN: clean  poison  target-clean | Energy: clean  poison  target-clean |     s")

    device, start = torch.device("cpu"), time.perf_counter()

    def kept(flags: torch.Tensor) -> str:
        m = {x.name: x.value for x in cleansing_metrics(data.kind, train.labels, flags, None, target, info.num_classes)}
        return f"{m['clean_kept_rate']:.3f}  {m['poison_kept_rate']:.3f}  {m['clean_kept_target']:.3f}"

    def on_epoch(epoch: int, net: torch.nn.Module) -> None:
        if (epoch + 1) % args.every and epoch + 1 != args.epochs:
            return
        net.eval()
        z = embed_all(net, train.images, device)
        decisions, k = defense.decide(z, train.labels, info.num_classes)
        health = knn_health(z, data.bundle.train.labels, k, info.num_classes).value
        knn, energy = (kept(cleanse(decisions[f], train.labels, cfg.relabel_percentile)[0]) for f in ("knn", "energy"))
        print(f"{epoch + 1:5d}  {(epoch + 1) * steps_per_epoch:5d}  {health:.3f}   |       {knn}     |"
              f"          {energy}     | {time.perf_counter() - start:5.0f}", flush=True)

    def new_model() -> torch.nn.Module:
        return create_model(args.model, info.num_classes, info.in_channels, info.image_size, info.mean, info.std,
                            **json.loads(args.model_options))

    ctx = DefenseContext(info=info, device=device, seed=args.seed, recipe=Recipe(), new_model=new_model,
                         curves=Curves(False), train=train)
    with cpu_threads(args.threads):
        seed_everything(args.seed)
        train_simclr(ctx, train, cfg, on_epoch=on_epoch)


if __name__ == "__main__":
    main()
