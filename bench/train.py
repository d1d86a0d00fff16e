"""The one training loop. Images stay uint8 on the device; batches are index slices; augmentation is batched.

Every method that trains (the train stage, fine-tuning defenses, training-time defenses) calls ``fit`` with a
recipe; a method with its own objective passes ``loss_fn`` instead of writing an epoch loop.
"""
from __future__ import annotations

import contextlib
import hashlib
import random
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.augment import augment
from bench.data.imageset import ImageSet
from bench.recipes import Recipe, lr_factor, uses_lambda_schedule, warmup_lr

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""loss_fn(model, x01 float [B,C,H,W] in [0,1] (augmented), y int64 [B], idx int64 [B]) -> scalar loss."""


def pick_device(spec: str | None = None) -> torch.device:
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1'."""
    if spec in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op CPU threads, then restore the count.

    Jobs run with one thread (bench.runner): CPU float reductions (convolution backward, matmul) are summed in
    an order that depends on the thread count, and a short fine-tuning can amplify that last-bit difference into
    points of accuracy, so one thread makes a job's result independent of the machine's core count, the worker
    layout and whatever thread count the calling process had.  It is also faster for the small models of the CPU
    scale: measured on 2 shared cores, 5 epochs of the digits CNN took 2.3 s of CPU with one thread and 37 s
    with two (the OpenMP threads wait for each other on every small operation).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stream_seed(seed: int, stream: str) -> int:
    """An independent seed for one use of a cell's seed (``stream`` names the use).

    The same integer seeding two generators gives the same permutation to both: the poison stage drew its
    indices as ``randperm(N, seed)[:n]`` and ``fit`` shuffled its first epoch as ``randperm(N, seed)``, so with
    ``poison_base: all`` (MCL's sweeps) the first n samples the model saw were exactly the poisoned ones, all of
    the target label - 31 batches of one class at lr 0.1 left the mini CNN at 20 % training accuracy (issue 17).
    """
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % 2**63


def generator_for(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def make_optimizer(params, recipe: Recipe, lr: float | None = None) -> torch.optim.Optimizer:
    lr = recipe.lr if lr is None else lr
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                           nesterov=recipe.nesterov and recipe.momentum > 0)


def make_scheduler(opt: torch.optim.Optimizer, recipe: Recipe) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Stepped once per epoch; its length follows ``recipe.epochs`` (cosine T_max = epochs, never a constant)."""
    if uses_lambda_schedule(recipe):          # piecewise-linear, or cosine with a floor / warm-up (closed form)
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: lr_factor(recipe, epoch))
    if recipe.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(opt, list(recipe.milestones), recipe.gamma)
    if recipe.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, recipe.step_size, recipe.gamma)
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(recipe.epochs, 1))
    return None


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None, device: torch.device,
                  shuffle: bool = True, drop_last: bool = False) -> Iterator[torch.Tensor]:
    """Index batches over a shuffled order; ``drop_last`` drops a partial tail when there is a full batch."""
    order = (torch.randperm(n, generator=generator, device=generator.device).to(device) if shuffle
             else torch.arange(n, device=device))
    stop = n - n % batch_size if drop_last and n > batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare(model: nn.Module, device: torch.device, recipe: Recipe) -> nn.Module:
    """The model on ``device``; channels_last on CUDA only.  On CPU it would cut a WRN-16-1 step's CPU work by a
    quarter (1.29-1.38x images per CPU second, benchmarks/cpu_defense_throughput.py --clock cpu), but it changes
    the numerics of every CPU-trained test model (test_nad's digits backdoor then survives NAD: ASR 1.00, not
    0.65), so turning it on is left to a change that re-measures those tests."""
    model = model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not recipe.deterministic
        torch.backends.cudnn.deterministic = recipe.deterministic
        if recipe.channels_last:
            model = model.to(memory_format=torch.channels_last)
    return model


def weighted_ce(sample_weight: torch.Tensor | None) -> LossFn:
    """Cross-entropy, optionally weighted per training sample (weights indexed by ``idx``)."""
    def loss_fn(model, x, y, idx):
        logits = model(x)
        if sample_weight is None:
            return F.cross_entropy(logits, y)
        return (F.cross_entropy(logits, y, reduction="none") * sample_weight[idx]).mean()
    return loss_fn


class Diverged(FloatingPointError):
    """Training produced a non-finite loss or weight: the job fails with this one-line message."""


def check_finite(model: nn.Module, what: str) -> None:
    """Raise :class:`Diverged` when any parameter or float buffer of ``model`` is NaN or infinite."""
    bad = sum(int((~torch.isfinite(t)).sum()) for t in [*model.parameters(), *model.buffers()] if t.is_floating_point())
    if bad:
        raise Diverged(f"{what}: the model has {bad:,} non-finite weights (NaN or inf); training diverged "
                       "(lower the learning rate)")


def fit(model: nn.Module, data: ImageSet, recipe: Recipe, *, device: torch.device | None = None, seed: int = 0,
        loss_fn: Optional[LossFn] = None, sample_weight: torch.Tensor | None = None,
        on_epoch: Optional[Callable[[int, nn.Module], None]] = None,
        params=None, optimizer: Optional[torch.optim.Optimizer] = None) -> nn.Module:
    """Train ``model`` on ``data`` with ``recipe`` and return it (in eval mode).

    Args:
        data: uint8 images (already poisoned) and labels; moved to ``device`` once.
        loss_fn: custom objective (default: cross-entropy, weighted by ``sample_weight`` [N] if given).
        on_epoch: called after every epoch with (epoch, model), e.g. to record curves.
        params: the parameters to optimise (default: all of the model's).
        optimizer: an optimiser to go on with (its state kept across calls, e.g. DBD's one Adam); default: a
            fresh one from ``recipe``.  The recipe's schedule, if any, then drives it.
    """
    device = device or pick_device()
    model = prepare(model, device, recipe)
    data = data.to(device)
    if sample_weight is not None:
        sample_weight = sample_weight.to(device)
    loss_fn = loss_fn or weighted_ce(sample_weight)
    gen = generator_for(seed, torch.device("cpu"))
    opt = optimizer or make_optimizer(params if params is not None else model.parameters(), recipe)
    sched = make_scheduler(opt, recipe)
    channels_last = device.type == "cuda" and recipe.channels_last
    for epoch in range(recipe.epochs):
        model.train()
        finite = torch.ones((), dtype=torch.bool, device=device)    # checked once per epoch: no per-batch sync
        batches = list(batch_indices(len(data), recipe.batch_size, gen, device, drop_last=recipe.drop_last))
        for b, idx in enumerate(batches):
            if epoch < recipe.warmup_epochs:
                for group in opt.param_groups:
                    group["lr"] = warmup_lr(recipe, epoch, b, len(batches))
            x = augment(data.images[idx], recipe.augment, gen_for_device(gen, device), recipe.crop_padding,
                        params=recipe.augment_params or None)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, recipe.amp):
                loss = loss_fn(model, x, data.labels[idx], idx)
            finite &= torch.isfinite(loss.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if not bool(finite):
            raise Diverged(f"the training loss became non-finite (NaN or inf) in epoch {epoch + 1} of "
                           f"{recipe.epochs} at learning rate {opt.param_groups[0]['lr']:g}; training diverged "
                           "(lower the learning rate)")
        check_finite(model, f"after epoch {epoch + 1} of {recipe.epochs}")
        if sched is not None:
            sched.step()
        if on_epoch is not None:
            on_epoch(epoch, model)
    return model.eval()


def gen_for_device(gen: torch.Generator, device: torch.device) -> torch.Generator | None:
    """Augmentation randomness: the CPU generator on CPU; on CUDA a device generator seeded from it."""
    if device.type == "cpu":
        return gen
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    return torch.Generator(device=device).manual_seed(seed)


def eval_batch_size(device: torch.device) -> int:
    """Inference batch: 512 on a GPU; 128 on CPU, where WRN-16-1 evaluates 1.74x more images per CPU second at
    128 than at 512 (cache-sized activations; benchmarks/cpu_defense_throughput.py --clock cpu)."""
    return 512 if torch.device(device).type == "cuda" else 128


@torch.no_grad()
def predict(model: nn.Module, images_u8: torch.Tensor, device: torch.device | None = None,
            batch_size: int | None = None) -> torch.Tensor:
    """Predicted labels (int64 [N], on CPU) for uint8 images, in eval mode."""
    device = device or next(model.parameters()).device
    batch_size = batch_size or eval_batch_size(device)
    model.eval()
    out = []
    for start in range(0, len(images_u8), batch_size):
        x = images_u8[start:start + batch_size].to(device).float().div_(255)
        with autocast(device, True):
            out.append(model(x).argmax(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


@torch.no_grad()
def embed(model: nn.Module, images_u8: torch.Tensor, device: torch.device | None = None,
          batch_size: int | None = None) -> torch.Tensor:
    """Penultimate features (float [N, D], on CPU) through the zoo's ``forward_features`` interface."""
    device = device or next(model.parameters()).device
    batch_size = batch_size or eval_batch_size(device)
    model.eval()
    out = [model.forward_features(images_u8[s:s + batch_size].to(device).float().div_(255)).float().cpu()
           for s in range(0, len(images_u8), batch_size)]
    return torch.cat(out) if out else torch.zeros(0)


def recompute_bn(model: nn.Module, data: ImageSet, batch_size: int, device: torch.device) -> nn.Module:
    """Reset every BatchNorm's running statistics and re-estimate them (cumulative average) on ``data`` (MCR's
    curve points; MCL's ``bn_recompute`` switch), over batches in a seeded random order as MCR's ``bn_update``
    over its shuffled train loader: the running variance is the mean of the per-batch variances, so batches of
    one class each (a subset sorted by index of a dataset stored class by class) would leave out the variance
    between classes."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    data = data.to(device)
    with torch.no_grad():                      # statistics only: no graph
        for idx in batch_indices(len(data), batch_size, torch.Generator().manual_seed(0), device):
            model(data.images[idx].float().div_(255))
    for bn, mom in zip(bns, momenta):
        bn.momentum = mom
    return model.eval()
