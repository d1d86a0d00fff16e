"""LfD's teacher, epoch by epoch (issue 20): when does the low-capacity teacher separate the poison by its loss?

LfD (seed 003 §4) trains its ResNet-S teacher for "a few epochs" (the number is not stated) and takes the
lowest-loss alpha = 15 % of the training set as its gradient-ascent candidates (Eq. 4).  This script trains the
teacher exactly as ``defenses/lfd.py`` does (its ``LfDConfig.teacher_recipe``: Adam 1e-3, batch 128, no
augmentation, one CPU thread) on a poisoned CIFAR-10 training set and prints after every epoch, against the poison
stage's ground truth (which the defense never sees):

- ``auroc``: AUROC of -loss for poisoned vs clean (``bench.metrics.auroc``; the runner stores the same for a job);
- ``above``: poisoned samples whose loss exceeds the clean samples' mean loss (LfD Fig. 2's count;
  ``poison_below_clean_mean`` is the same as a rate);
- ``cand P / R``: precision and recall of LfD's candidate set (the alpha lowest losses) for the poisoned samples;
- ``to target``: the share of poisoned and of other-class clean samples the teacher predicts as the target class,
  which tells a learnt trigger (poisoned >> clean) from a class-prior bias (both high: the target class holds
  twice the images of any other at 10 % poisoning).

``--train 0`` is the paper's full 50,000-image training set (the teacher is tiny: ~1 CPU-minute per epoch).

    python benchmarks/lfd_teacher_epochs.py --data-root ../shared/datasets --train 0 --epochs 20 \
        --attack '{"name": "badnets", "target": 1, "pattern": "grid3"}'
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from _poisoned import poisoned_cifar10

from bench.metrics import auroc, below_clean_mean
from bench.models import create_model
from bench.train import cpu_threads, fit, predict, seed_everything
from defenses.lfd import LfDConfig, per_sample_loss, threshold


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", default="../shared/datasets")
    ap.add_argument("--train", type=int, default=0, help="training images (0: all, the paper's scale)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--attack", default='{"name": "badnets", "target": 1, "pattern": "grid3"}')
    ap.add_argument("--teacher", default="resnet_s", help="model name; options as JSON in --teacher-options")
    ap.add_argument("--teacher-options", default="{}")
    ap.add_argument("--alpha", type=float, default=LfDConfig.alpha)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    data = poisoned_cifar10(args.data_root, args.train, args.attack, args.seed)
    bundle, train, is_poison, target = data.bundle, data.train, data.is_poison, data.attack.cfg.target
    other_clean = ~is_poison & (train.labels != target)
    print(f"{len(train)} training images, {int(is_poison.sum())} poisoned; teacher {args.teacher} "
          f"{args.teacher_options}; alpha {args.alpha}")
    print("epoch  auroc  loss clean/poison  above  cand P / R     to target poison/clean   s")

    info, start = bundle.info(), time.perf_counter()

    def on_epoch(epoch: int, model: torch.nn.Module) -> None:
        loss = per_sample_loss(model, train, torch.device("cpu"))
        cand = loss <= threshold(loss, args.alpha)
        pred = predict(model, train.images)
        above = below_clean_mean(-loss, is_poison)          # Fig. 2's count, as a rate of the poisoned
        print(f"{epoch + 1:5d}  {auroc(-loss, is_poison):.3f}  {loss[~is_poison].mean():.3f} / "
              f"{loss[is_poison].mean():.3f}  {round(above.value * above.count):5d}  {is_poison[cand].float().mean():.3f} / "
              f"{cand[is_poison].float().mean():.3f}  {(pred[is_poison] == target).float().mean():.3f} / "
              f"{(pred[other_clean] == target).float().mean():.3f}  {time.perf_counter() - start:6.0f}",
              flush=True)

    with cpu_threads(1):
        seed_everything(args.seed)
        model = create_model(args.teacher, info.num_classes, info.in_channels, info.image_size, info.mean, info.std,
                             **json.loads(args.teacher_options))
        fit(model, train, LfDConfig(teacher_epochs=args.epochs).teacher_recipe(), device=torch.device("cpu"),
            seed=args.seed, on_epoch=on_epoch)


if __name__ == "__main__":
    main()
