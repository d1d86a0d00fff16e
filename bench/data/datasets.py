"""The dataset registry and ``load_dataset``: every dataset becomes a ``DataBundle`` of uint8 tensors.

Each registered builder takes its frozen config and the data root and returns a full ``DataBundle``; the
options every dataset shares (``train_limit``/``test_limit`` for the mini profile) are applied here, once.
Embedded: ``digits`` (scikit-learn's bundled 8x8 digits, the default that needs no download) and
``synthetic`` (generated, for tests).  The torchvision / ImageFolder datasets live in ``bench.data.sources``,
which builds on this module; the dataset registry loads both (bench/registry.py), so neither imports the other
back.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from bench.data.imageset import DataBundle, ImageSet
from bench.registry import DATASETS, register_dataset


class DatasetNotFound(FileNotFoundError):
    """Raised with a one-line message: which dataset, where it looked, how to provide it."""


@dataclass(frozen=True)
class DatasetConfig:
    """Options shared by every dataset."""

    train_limit: Optional[int] = None     # keep a class-stratified, seeded subset of this many training images
    test_limit: Optional[int] = None      # likewise for the test set (mini profile)
    limit_seed: int = 0                   # seed of those subsets (fixed: not the cell seed, so cells share data)
    root: Optional[str] = None            # per-dataset data root (else --data-root / BENCH_DATA_ROOT)


def data_root(cli_root: str | os.PathLike | None = None) -> Path | None:
    root = cli_root or os.environ.get("BENCH_DATA_ROOT")
    return Path(root).expanduser() if root else None


def cache_dir() -> Path:
    """Where decoded uint8 arrays are cached (``BENCH_CACHE``, default ~/.cache/bdbench)."""
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "bdbench")).expanduser()


def stratified_take(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """A seeded, class-stratified choice of ``n`` indices (sorted). Per class: round(n * share)."""
    if n >= len(labels):
        return torch.arange(len(labels))
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=g)
    # Stable sort of the permuted labels groups classes while keeping the random order inside each class.
    order = perm[torch.sort(labels[perm], stable=True).indices]
    counts = torch.bincount(labels)
    quotas = torch.floor(counts.double() * n / len(labels)).long()
    rest = n - int(quotas.sum())
    quotas[torch.argsort(counts.double() * n / len(labels) - quotas.double(), descending=True)[:rest]] += 1
    starts = torch.cumsum(counts, 0) - counts
    take = [order[s:s + q] for s, q in zip(starts.tolist(), quotas.tolist())]
    return torch.sort(torch.cat(take)).values


def load_dataset(name: str, cfg: DatasetConfig, root: str | os.PathLike | None = None) -> DataBundle:
    """Build a registered dataset and apply the shared limits.

    Raises:
        ConfigError: unknown dataset; DatasetNotFound: files missing (message says where it looked).
    """
    entry = DATASETS.get(name)
    where = Path(cfg.root).expanduser() if cfg.root else data_root(root)
    bundle: DataBundle = entry.obj(cfg, where)
    train_idx = stratified_take(bundle.train.labels, cfg.train_limit, cfg.limit_seed) if cfg.train_limit else None
    test_idx = stratified_take(bundle.test.labels, cfg.test_limit, cfg.limit_seed + 1) if cfg.test_limit else None
    return bundle.limited(train_idx, test_idx)


def stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units of uint8 [N, C, H, W] images."""
    x = images.double().div(255).transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(x.mean(1).tolist()), tuple(x.std(1).tolist())


# ---------------------------------------------------------------------------------------------------------
# digits: scikit-learn's bundled 8x8 digits (1,797 images) -- the embedded default, no download needed.
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DigitsConfig(DatasetConfig):
    scale: int = 2              # nearest-neighbour upscaling factor (8x8 -> 16x16), lossless
    test_fraction: float = 0.2  # stratified split with a fixed seed (sklearn ships no split)


@register_dataset("digits", config=DigitsConfig, display_name="Digits (sklearn)")
def digits(cfg: DigitsConfig, root: Path | None) -> DataBundle:
    """scikit-learn's 8x8 handwritten digits, 0..16 intensities mapped to 0..255, one channel."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.from_numpy((data.images * (255.0 / 16.0)).round().clip(0, 255)).to(torch.uint8).unsqueeze(1)
    if cfg.scale > 1:
        x = x.repeat_interleave(cfg.scale, dim=2).repeat_interleave(cfg.scale, dim=3)
    y = torch.from_numpy(data.target).long()
    tr, te = train_test_split(range(len(y)), test_size=cfg.test_fraction, stratify=data.target, random_state=0)
    tr, te = torch.tensor(sorted(tr)), torch.tensor(sorted(te))
    train, test = ImageSet(x[tr].contiguous(), y[tr]), ImageSet(x[te].contiguous(), y[te])
    mean, std = stats(train.images)
    return DataBundle("digits", train, test, 10, mean, std, tuple(str(i) for i in range(10)), "sklearn:digits")


# ---------------------------------------------------------------------------------------------------------
# synthetic: class prototypes plus noise, generated from a seed (for tests and harness benchmarks).
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticConfig(DatasetConfig):
    num_classes: int = 4
    n_train: int = 512
    n_test: int = 256
    size: int = 16
    channels: int = 3
    noise: float = 40.0         # pixel std of the per-sample noise
    seed: int = 0


@register_dataset("synthetic", config=SyntheticConfig, display_name="Synthetic")
def synthetic(cfg: SyntheticConfig, root: Path | None) -> DataBundle:
    """Smooth random class prototypes (upsampled 4x4 noise) plus Gaussian pixel noise; balanced classes."""
    g = torch.Generator().manual_seed(cfg.seed)
    low = torch.rand(cfg.num_classes, cfg.channels, 4, 4, generator=g) * 200 + 28
    protos = torch.nn.functional.interpolate(low, size=(cfg.size, cfg.size), mode="bilinear", align_corners=False)

    def draw(n: int) -> ImageSet:
        y = torch.arange(n) % cfg.num_classes
        x = protos[y] + cfg.noise * torch.randn(n, cfg.channels, cfg.size, cfg.size, generator=g)
        return ImageSet(x.round().clamp(0, 255).to(torch.uint8), y)

    train, test = draw(cfg.n_train), draw(cfg.n_test)
    mean, std = stats(train.images)
    return DataBundle("synthetic", train, test, cfg.num_classes, mean, std,
                      tuple(f"c{i}" for i in range(cfg.num_classes)), f"generated:seed={cfg.seed}")
