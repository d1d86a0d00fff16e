"""CPU throughput of the defenses' training loop on WRN-16-1 (issue 21): what separates it from pure compute.

The post-training defenses on a released model (sweeps/released_*.yaml) are CPU runs at paper scale: FT, NAD,
MCL and NC's unlearning train WRN-16-1 at batch 64, ANP / MCR / I-BAU at 128, on the 5 % clean subset (2,500
images).  For each batch size this measures images per second of

    compute        forward / backward / SGD step over pre-made float batches (no data pipeline: the ceiling);
    compute_cl     the same with the model and the batches in channels_last (does it help on this CPU?);
    fit_noaug      ``bench.train.fit`` without augmentation (index batches of uint8 images -> float);
    fit            ``bench.train.fit`` with crop (pad 4) + flip, as FT / NAD / MCL call it;
    worker         ``fit`` inside a spawned worker process set up as ``bench.worker`` sets up a job
                   (``configure_threads``), i.e. what a ``bench sweep`` job actually gets;

and the evaluation pass (``bench.train.predict``, BA + ASR = 19,000 images per evaluation) at several batch
sizes.  Runs are interleaved and the fastest of ``--repeats`` is kept (load from other processes only ever adds
time).  Ratios to ``compute`` are what to read: absolute numbers depend on the machine and its load.

On a machine other processes load heavily, wall-clock ratios are noise (measured: 0.74 to 1.39 between runs of
the same loop).  ``--clock cpu`` then counts this process's CPU seconds on one thread instead: the work each
loop does, which load does not change (the worker row, a question of wall time, is left out).

    python benchmarks/cpu_defense_throughput.py --images 1024 --repeats 3
    python benchmarks/cpu_defense_throughput.py --images 256 --repeats 2 --clock cpu
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import time

import torch
import torch.nn.functional as F

from bench.data.imageset import ImageSet
from bench.models import create_model
from bench.recipes import Recipe
from bench.train import fit, make_optimizer, predict

clock = time.perf_counter          # --clock cpu: time.process_time on one thread


def data(n: int) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    return ImageSet(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                    torch.randint(0, 10, (n,), generator=g))


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("wrn16_1", 10, 3, 32, (0.0,) * 3, (1.0,) * 3)


def recipe(batch: int, augment: tuple[str, ...] = ("crop", "flip")) -> Recipe:
    return Recipe(lr=0.01, momentum=0.9, weight_decay=1e-4, batch_size=batch, epochs=1, schedule="none",
                  augment=augment, drop_last=False)


def run_compute(images: ImageSet, batch: int, channels_last: bool = False) -> float:
    m = model()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    m = m.to(memory_format=fmt).train()
    x = images.images.float().div_(255)
    batches = [(x[s:s + batch].contiguous(memory_format=fmt), images.labels[s:s + batch])
               for s in range(0, len(x), batch)]
    opt = make_optimizer(m.parameters(), recipe(batch))
    start = clock()
    for xb, yb in batches:
        loss = F.cross_entropy(m(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return clock() - start


def run_fit(images: ImageSet, batch: int, augment=("crop", "flip")) -> float:
    m = model()
    start = clock()
    fit(m, images, recipe(batch, augment), device=torch.device("cpu"), seed=0)
    return clock() - start


def _worker_fit(n: int, batch: int, threads: int, out) -> None:
    from bench.worker import configure_threads

    configure_threads("cpu", threads)
    images = data(n)
    run_fit(ImageSet(images.images[:2 * batch], images.labels[:2 * batch]), batch)   # warm-up, as in-process
    out.put(run_fit(images, batch))


def run_worker(images: ImageSet, batch: int) -> float:
    from bench.runner import RunOptions, device_slots

    (_, _, threads), = device_slots(RunOptions(device="cpu"))
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_worker_fit, args=(len(images), batch, threads, out))
    p.start()
    took = out.get()
    p.join()
    return took


def run_eval(images: ImageSet, batch: int) -> float:
    m = model().eval()
    start = clock()
    predict(m, images.images, torch.device("cpu"), batch_size=batch)
    return clock() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=1024, help="training images per timed run")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 128])
    p.add_argument("--eval-batches", type=int, nargs="+", default=[128, 512, 2048])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = p.parse_args(argv)
    if args.clock == "cpu":
        global clock
        clock = time.process_time
        torch.set_num_threads(1)
    images = data(args.images)
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__} with {torch.get_num_threads()} threads; {args.images} images per run, "
          f"best of {args.repeats} interleaved runs; images per {args.clock} second (ratio to compute)")
    for batch in args.batches:
        runs = {"compute": lambda b=batch: run_compute(images, b),
                "compute_cl": lambda b=batch: run_compute(images, b, True),
                "fit_noaug": lambda b=batch: run_fit(images, b, ()), "fit": lambda b=batch: run_fit(images, b),
                "worker": lambda b=batch: run_worker(images, b)}
        if args.clock == "cpu":
            del runs["worker"]
        small = ImageSet(images.images[:2 * batch], images.labels[:2 * batch])
        run_compute(small, batch), run_compute(small, batch, True), run_fit(small, batch)   # warm-up
        times = {k: [] for k in runs}
        order = list(runs)
        for rep in range(args.repeats):
            for k in order[rep % len(order):] + order[:rep % len(order)]:
                times[k].append(runs[k]())
        rate = {k: args.images / min(v) for k, v in times.items()}
        print(f"batch {batch:>4}: " + "  ".join(f"{k} {r:7.1f} ({r / rate['compute']:.2f})" for k, r in rate.items()))
    eval_images = data(4 * max(args.eval_batches))
    rates = {}
    for batch in args.eval_batches:
        run_eval(ImageSet(eval_images.images[:batch], eval_images.labels[:batch]), batch)
        rates[batch] = len(eval_images) / min(run_eval(eval_images, batch) for _ in range(args.repeats))
    print("evaluation (predict): " + "  ".join(f"batch {b} {r:7.1f}" for b, r in rates.items()))


if __name__ == "__main__":
    main()
