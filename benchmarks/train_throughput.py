"""Training throughput: our loop (``bench.train.fit``) against the limit and a DataLoader + PIL loop.

Three ways to train the same model on the same images with the same optimizer and batch size:

    limit       forward/backward/step over pre-made float batches already on the device: no data pipeline at
                all, so nothing can beat it (the ceiling our loop is measured against);
    ours        ``bench.train.fit`` on uint8 images on the device with batched crop (pad 4) + flip;
    dataloader  torch DataLoader over a Dataset that turns each uint8 array into a PIL image and applies
                RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize (the way
                torchvision's CIFAR10 and BackdoorBench-style code train), then copies each batch over.

Runs are interleaved (limit, ours, dataloader, ..., in a rotating order) and each method's fastest run is
kept, as timeit does: load from other processes on a shared machine only ever adds time, and interleaving
spreads it evenly.  On CUDA every loop uses fit's settings (bf16 autocast, channels_last).  A model that is not
registered is skipped with a note.  Targets (issue 3): on a 2-core CPU ours >= 0.95 x limit and >= 1.1 x
dataloader; on a GPU ours >= 3 x dataloader.

    python benchmarks/train_throughput.py --device cpu --images 512 --epochs 1 --repeats 9
    python benchmarks/train_throughput.py --device cuda --images 10000 --epochs 2 --workers 0 4 \
        --dataset cifar10 --data-root DIR
"""
from __future__ import annotations

import argparse
import copy
import platform
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.data.datasets import load_dataset
from bench.data.imageset import ImageSet
from bench.models import create_model, list_models
from bench.recipes import Recipe
from bench.registry import DATASETS
from bench.train import autocast, fit, make_optimizer, pick_device, prepare

# ---------------------------------------------------------------------------------------------------------
# Setup: data, models, the shared recipe
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Data:
    images: torch.Tensor        # uint8 [N, C, H, W] on the CPU
    labels: torch.Tensor        # int64 [N]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str


def load_data(args: argparse.Namespace) -> Data:
    """``--dataset random``: seeded uniform noise (the pipeline cost does not depend on content); otherwise a
    registered dataset's first ``--images`` training images (stratified, through its ``train_limit``)."""
    if args.dataset == "random":
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (args.images, 3, 32, 32), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 10, (args.images,), generator=g)
        return Data(images, labels, 10, (0.5,) * 3, (0.25,) * 3, "random uint8 3x32x32")
    cfg = DATASETS.get(args.dataset, "--dataset").parse({"train_limit": args.images}, "--dataset")
    bundle = load_dataset(args.dataset, cfg, args.data_root)
    return Data(bundle.train.images, bundle.train.labels, bundle.num_classes, bundle.mean, bundle.std,
                f"{args.dataset} ({bundle.source})")


def make_model(name: str, data: Data, normalize_inside: bool = True) -> nn.Module:
    """The DataLoader loop normalises in its transform, so its model gets mean 0 / std 1 (the same ops run)."""
    c, size = data.images.shape[1], data.images.shape[-1]
    mean, std = (data.mean, data.std) if normalize_inside else ((0.0,) * c, (1.0,) * c)
    return create_model(name, data.num_classes, c, size, mean, std)


def recipe_for(args: argparse.Namespace, epochs: int) -> Recipe:
    return Recipe(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=args.batch_size,
                  epochs=epochs, schedule="none", augment=("crop", "flip"), crop_padding=4)


# ---------------------------------------------------------------------------------------------------------
# The three loops.  Each trains ``recipe.epochs`` epochs and returns the seconds it took.
# ---------------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
          device: torch.device, recipe: Recipe) -> None:
    if device.type == "cuda" and recipe.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, recipe.amp):
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def run_limit(model: nn.Module, data: Data, recipe: Recipe, device: torch.device) -> float:
    """Pre-made float [0, 1] batches on the device (made before the clock starts): compute only."""
    model = prepare(model, device, recipe)
    x = data.images.to(device).float().div_(255)
    y = data.labels.to(device)
    bs = recipe.batch_size
    batches = [(x[s:s + bs].contiguous(), y[s:s + bs]) for s in range(0, len(y), bs)]
    opt = make_optimizer(model.parameters(), recipe)
    model.train()
    _sync(device)
    start = time.perf_counter()
    for _ in range(recipe.epochs):
        for xb, yb in batches:
            _step(model, opt, xb, yb, device, recipe)
    _sync(device)
    return time.perf_counter() - start


def run_ours(model: nn.Module, data: Data, recipe: Recipe, device: torch.device) -> float:
    """``bench.train.fit`` as every method calls it; the clock includes moving the uint8 images over."""
    images = ImageSet(data.images, data.labels)
    _sync(device)
    start = time.perf_counter()
    fit(model, images, recipe, device=device, seed=0)
    _sync(device)
    return time.perf_counter() - start


class PILDataset(torch.utils.data.Dataset):
    """torchvision's CIFAR10 ``__getitem__``: an HWC uint8 array -> PIL image -> transform."""

    def __init__(self, images_u8: torch.Tensor, labels: torch.Tensor, transform: Callable):
        self.arrays = images_u8.permute(0, 2, 3, 1).numpy()
        if self.arrays.shape[-1] == 1:
            self.arrays = self.arrays[..., 0]
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(np.ascontiguousarray(self.arrays[i]))), self.labels[i]


def run_dataloader(model: nn.Module, data: Data, recipe: Recipe, device: torch.device, workers: int) -> float:
    """DataLoader + PIL transforms; the loader is built inside the clock, as a training script builds it."""
    import torchvision.transforms as T

    model = prepare(model, device, recipe)
    size = data.images.shape[-1]
    transform = T.Compose([T.RandomCrop(size, padding=recipe.crop_padding), T.RandomHorizontalFlip(),
                           T.ToTensor(), T.Normalize(data.mean, data.std)])
    opt = make_optimizer(model.parameters(), recipe)
    model.train()
    _sync(device)
    start = time.perf_counter()
    loader = torch.utils.data.DataLoader(PILDataset(data.images, data.labels, transform), recipe.batch_size,
                                         shuffle=True, num_workers=workers, pin_memory=device.type == "cuda",
                                         generator=torch.Generator().manual_seed(0))
    for _ in range(recipe.epochs):
        for xb, yb in loader:
            _step(model, opt, xb.to(device, non_blocking=True), yb.to(device, non_blocking=True), device, recipe)
    _sync(device)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------------
# Measurement: warm up, interleave, keep the fastest run.
# ---------------------------------------------------------------------------------------------------------


def methods(args: argparse.Namespace) -> dict[str, Callable[[nn.Module, Data, Recipe, torch.device], float]]:
    out = {"limit": run_limit, "ours": run_ours}
    for w in args.workers:
        out[f"dataloader(w={w})"] = lambda m, d, r, dev, w=w: run_dataloader(m, d, r, dev, w)
    return out


def measure(name: str, data: Data, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Images per second of each method (fastest of ``--repeats`` interleaved runs) for one model."""
    torch.manual_seed(0)
    base = make_model(name, data)
    plain = make_model(name, data, normalize_inside=False)
    plain.load_state_dict(base.state_dict())
    runs = methods(args)
    warm = replace(data, images=data.images[:2 * args.batch_size], labels=data.labels[:2 * args.batch_size])
    for label, fn in runs.items():       # one-time costs (kernel selection, allocator, imports) off the clock
        fn(copy.deepcopy(plain if label.startswith("dataloader") else base), warm, recipe_for(args, 1), device)
    times: dict[str, list[float]] = {label: [] for label in runs}
    recipe = recipe_for(args, args.epochs)
    order = list(runs)
    for rep in range(args.repeats):
        # Rotate the order each round, so no method always runs right after another (e.g. after worker exit).
        for label in order[rep % len(order):] + order[:rep % len(order)]:
            model = copy.deepcopy(plain if label.startswith("dataloader") else base)
            times[label].append(runs[label](model, data, recipe, device))
    n = len(data.labels) * args.epochs
    return {label: n / min(t) for label, t in times.items()}


def report(results: dict[str, dict[str, float]], args: argparse.Namespace, device: torch.device,
           data: Data) -> None:
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"device: {device} ({where}); torch {torch.__version__}")
    print(f"data: {data.source}, {len(data.labels)} images x {args.epochs} epoch(s), batch {args.batch_size}, "
          f"best of {args.repeats} interleaved runs; images/second")
    labels = list(next(iter(results.values())))
    dl = [label for label in labels if label.startswith("dataloader")]
    head = f"{'model':<12}" + "".join(f"{label:>17}" for label in labels)
    head += f"{'ours/limit':>12}" + "".join(f"{'ours/' + label:>22}" for label in dl)
    print(head)
    for name, r in results.items():
        row = f"{name:<12}" + "".join(f"{r[label]:>17.1f}" for label in labels)
        row += f"{r['ours'] / r['limit']:>12.3f}" + "".join(f"{r['ours'] / r[label]:>22.3f}" for label in dl)
        print(row)


# ---------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1")
    p.add_argument("--images", type=int, default=10_000, help="training images per epoch")
    p.add_argument("--epochs", type=int, default=1, help="epochs per timed run")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed runs per method (fastest kept)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--models", nargs="+", default=["small_cnn", "wrn16_1"])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader num_workers to compare")
    p.add_argument("--dataset", default="random", help="'random' or a registered dataset (e.g. cifar10)")
    p.add_argument("--data-root", default=None, help="data root for --dataset (else BENCH_DATA_ROOT)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    data = load_data(args)
    available = set(list_models())
    results = {}
    for name in args.models:
        if name not in available:
            print(f"skipping {name}: not registered (registered: {', '.join(sorted(available))})")
            continue
        results[name] = measure(name, data, args, device)
    if results:
        report(results, args, device, data)


if __name__ == "__main__":
    main()
