"""Real datasets: CIFAR-10/100, MNIST, GTSRB, an ImageNet subset and any ImageFolder tree, as uint8 bundles.

A data root (the dataset's ``root:`` option, else ``--data-root`` / ``BENCH_DATA_ROOT``) is searched in order:
  (a) torchvision's layout (``cifar-10-batches-py/``, ``cifar-100-python/``, ``MNIST/raw/``,
      ``gtsrb/GTSRB/``), read with ``torchvision.datasets``; ``download: true`` fetches it when nothing
      else is found;
  (b) an ImageFolder tree ``<root>/<name>/{train,test}/<class>/<image>`` (``val`` stands in for ``test``);
  (c) an archive of one, ``<root>/<name>.tar.xz`` (or ``.tar``, ``.tar.gz``, ``.tgz``), read member by member:
      nothing is extracted, only regular files under ``[<prefix>/]<split>/<class>/`` are read, and names that
      are absolute, contain ``..`` or start with ``.`` are ignored (so no path traversal, no links followed);
  (d) the tree itself: ``<root>/{train,test}/...``, or ``root:`` naming the archive file.
With no data root at all, only ``cache_dir()/torchvision`` is searched (where ``download: true`` puts files).
Labels follow the sorted class folder names, the standard label order of the shared offline copies; inside
a class, files are in natural order (``2.png`` before ``10.png``).

Decoding cache: the first load decodes to uint8 ``.npy`` files in ``cache_dir()/datasets/<name>-<key>/``,
written to a temporary folder that is then renamed into place (atomic; a concurrent loser discards its
copy).  ``key`` digests the decode options and the source checksum: for an archive its sha256, remembered
in a sidecar ``cache_dir()/checksums/<id>.json`` keyed by (resolved path, size, mtime_ns), so a file is
hashed once per version; for a folder (ImageFolder or torchvision layout) the sha256 of its listing of
(relative path, size, mtime_ns).  Later loads memory-map the images copy-on-write: no decoding, no reading.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Literal, Optional

import numpy as np
import torch

from bench.config import ConfigError, closest, digest
from bench.data.datasets import DatasetConfig, DatasetNotFound, cache_dir
from bench.data.imageset import DataBundle, ImageSet
from bench.registry import register_dataset

_CACHE_VERSION = 1          # bump when the decoded arrays change for the same source and options
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")
_ARCHIVE_EXTS = (".tar.xz", ".tar", ".tar.gz", ".tgz")
_TRAIN, _TESTS = "train", ("test", "val")
_ARRAY_NAMES = ("train_images", "train_labels", "test_images", "test_labels")

Resize = Literal["stretch", "center_crop"]

# Per-channel mean/std in [0, 1] units: the commonly published training-set values (not recomputed, so every
# copy of a dataset -- torchvision arrays or the JPEG offline copy -- normalises identically).  GTSRB and
# generic ImageFolder data have no single standard copy: theirs are measured on the decoded training set.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class _Spec:
    """What the locating and decoding code needs to know about one dataset."""

    name: str
    aliases: tuple[str, ...]            # folder / archive stems under the data root
    channels: int
    num_classes: Optional[int] = None   # checked against the class folders found (None: any)
    tv_marker: Optional[str] = None     # torchvision's folder under the data root
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None


@dataclass(frozen=True)
class _Source:
    layout: str      # "torchvision" | "folder" | "archive"
    path: Path       # the data root (torchvision), the tree's folder, or the archive file
    checksum: str    # "sha256=<hex>" of an archive; "listing-sha256=<hex>" of a folder


@dataclass(frozen=True)
class _Arrays:
    train_images: np.ndarray    # uint8 [N, C, H, W]
    train_labels: np.ndarray    # int64 [N]
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]


# ---------------------------------------------------------------------------------------------------------
# Locating the source, and its checksum
# ---------------------------------------------------------------------------------------------------------
def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _archive_checksum(path: Path) -> str:
    """sha256 of the file, computed once per (path, size, mtime) and remembered in a sidecar."""
    st, real = path.stat(), path.resolve()
    ident = {"path": str(real), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    sidecar = cache_dir() / "checksums" / f"{digest(ident)[:32]}.json"
    try:
        return "sha256=" + json.loads(sidecar.read_text())["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    h = hashlib.sha256()
    with open(real, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    _write_atomic(sidecar, json.dumps({**ident, "sha256": h.hexdigest()}).encode())
    return "sha256=" + h.hexdigest()


def _listing_checksum(top: Path, subdirs: Iterable[str]) -> str:
    """sha256 of the (relative path, size, mtime_ns) listing of every file under ``top/<subdir>``."""
    lines = []
    for sub in subdirs:
        for dirpath, dirnames, files in os.walk(top / sub, followlinks=True):
            dirnames.sort()
            for name in sorted(files):
                p = Path(dirpath, name)
                st = p.stat()
                lines.append(f"{p.relative_to(top).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n")
    return "listing-sha256=" + hashlib.sha256("".join(lines).encode()).hexdigest()


def _folder_source(tree: Path) -> _Source:
    splits = [s for s in (_TRAIN, *_TESTS) if (tree / s).is_dir()]
    return _Source("folder", tree, _listing_checksum(tree, splits))


def _locate(spec: _Spec, root: Path | None) -> _Source:
    """The first layout found under ``root`` (see the module docstring), else DatasetNotFound."""
    base = root if root is not None else cache_dir() / "torchvision"
    if base.is_file():
        return _Source("archive", base, _archive_checksum(base))
    tried = []
    if spec.tv_marker:
        tried.append(f"{base / spec.tv_marker}/ (torchvision)")
        if (base / spec.tv_marker).is_dir():
            marker_top = spec.tv_marker.split("/")[0]
            return _Source("torchvision", base, _listing_checksum(base, [marker_top]))
    for alias in spec.aliases:
        tried.append(f"{base / alias}[/|{'|'.join(_ARCHIVE_EXTS)}]")
        if (base / alias / _TRAIN).is_dir():
            return _folder_source(base / alias)
        for ext in _ARCHIVE_EXTS:
            if (base / (alias + ext)).is_file():
                return _Source("archive", base / (alias + ext), _archive_checksum(base / (alias + ext)))
    tried.append(f"{base / _TRAIN}/")
    if (base / _TRAIN).is_dir():
        return _folder_source(base)
    raise DatasetNotFound(_not_found_message(spec, root, tried))


def _not_found_message(spec: _Spec, root: Path | None, tried: list[str]) -> str:
    name = spec.aliases[0] + "/" if spec.aliases else ""
    where = "" if root is not None else " (no data root given, so only the download folder was searched)"
    layouts = [f"torchvision's layout ({spec.tv_marker}/)"] if spec.tv_marker else []
    layouts += [f"an ImageFolder tree {name}{{train,test}}/<class>/<image>",
                f"a .tar/.tar.xz of one ({spec.aliases[0] if spec.aliases else '<name>'}.tar.xz)"]
    fix = ("pass --data-root DIR or set BENCH_DATA_ROOT=DIR (or the dataset option root: DIR) to a folder "
           f"holding {', '.join(layouts[:-1])} or {layouts[-1]}")
    if spec.tv_marker:
        fix += ", or set the dataset option download: true to fetch it with torchvision"
    return f"dataset '{spec.name}' not found{where}: looked for {', '.join(tried)}; {fix}"


# ---------------------------------------------------------------------------------------------------------
# Reading an ImageFolder tree (folder or archive) and decoding its images
# ---------------------------------------------------------------------------------------------------------
def _natural_key(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def _is_image(name: str) -> bool:
    return name.lower().endswith(_IMAGE_EXTS) and not name.startswith(".")


def _read_folder(tree: Path, keep: Callable[[str], bool]) -> tuple[list[tuple], set[str]]:
    """(split, class, relative name, bytes) of every image; and every class folder name seen in train."""
    entries, seen = [], set()
    for split in (_TRAIN, *_TESTS):
        if not (tree / split).is_dir():
            continue
        for cdir in sorted(p for p in (tree / split).iterdir() if p.is_dir() and not p.name.startswith(".")):
            seen.update([cdir.name] if split == _TRAIN else [])
            if not keep(cdir.name):
                continue
            for dirpath, dirnames, files in os.walk(cdir, followlinks=True):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for f in filter(_is_image, files):
                    rel = Path(dirpath, f).relative_to(cdir).as_posix()
                    entries.append((split, cdir.name, rel, Path(dirpath, f).read_bytes()))
    return entries, seen


def _read_archive(path: Path, keep: Callable[[str], bool]) -> tuple[list[tuple], set[str]]:
    """As ``_read_folder``, streaming the members of a tar archive (any compression); extracts nothing."""
    entries, seen, prefixes = [], set(), set()
    with tarfile.open(path, "r:*") as tf:
        for member in tf:
            parts = PurePosixPath(member.name).parts     # "./a/b" -> ("a", "b")
            if not member.isfile() or member.name.startswith("/") or ".." in parts \
                    or any(p.startswith(".") for p in parts) or not _is_image(parts[-1]):
                continue
            i = next((i for i in range(len(parts) - 2) if parts[i] in (_TRAIN, *_TESTS)), None)
            if i is None:
                continue
            split, cls = parts[i], parts[i + 1]
            prefixes.add(parts[:i])
            seen.update([cls] if split == _TRAIN else [])
            if keep(cls):
                entries.append((split, cls, "/".join(parts[i + 2:]), tf.extractfile(member).read()))
    if len(prefixes) > 1:
        found = ", ".join(sorted("/".join(p) or "." for p in prefixes))
        raise ValueError(f"{path}: holds several ImageFolder trees ({found}); keep one per archive")
    return entries, seen


def _fit(im, size: int | None, resize: str):
    """A PIL image at size x size: 'stretch' (whole image, aspect not kept, as the GTSRB copy was made) or
    'center_crop' (shorter side to ``size``, then the central square).

    PIL's bilinear resize is antialiased (its filter widens when it shrinks).
    """
    from PIL import Image

    if size is None or im.size == (size, size):
        return im
    if resize == "stretch":
        return im.resize((size, size), Image.Resampling.BILINEAR)
    scale = size / min(im.size)
    im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))),
                   Image.Resampling.BILINEAR)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    return im.crop((left, top, left + size, top + size))


def _stack(images: Iterable, n: int, channels: int, size: int | None, resize: str) -> np.ndarray:
    """uint8 [n, C, H, W] from ``n`` PIL images (converted to L or RGB and fitted to ``size``)."""
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((0, channels, size or 1, size or 1), np.uint8)
    for i, im in enumerate(images):
        arr = np.asarray(_fit(im.convert(mode), size, resize))
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        if i == 0:
            out = np.empty((n, channels, *arr.shape[:2]), np.uint8)
        if arr.shape[:2] != out.shape[2:]:
            raise ValueError(f"images differ in size ({arr.shape[1]}x{arr.shape[0]} vs "
                             f"{out.shape[3]}x{out.shape[2]}); set the dataset option resolution")
        out[i] = arr.transpose(2, 0, 1)
    return out


def _decode_images(blobs: list[bytes], channels: int, size: int | None, resize: str) -> np.ndarray:
    """Decode encoded image files (JPEG, PNG, PPM, ...) into uint8 [N, C, H, W]."""
    from PIL import Image

    def opened():
        for blob in blobs:
            with Image.open(io.BytesIO(blob)) as im:
                im.load()
                yield im

    return _stack(opened(), len(blobs), channels, size, resize)


def _select(spec: _Spec, seen: set[str], classes: tuple[str, ...], where: Path) -> tuple[str, ...]:
    """The classes to keep, in label order (sorted); checks a selection and the expected count."""
    for c in classes:
        if c not in seen:
            raise ConfigError("classes", f"no class folder {c!r} in {where}; {closest(c, seen)}")
    chosen = tuple(sorted(classes or seen))
    if not chosen:
        raise DatasetNotFound(f"dataset '{spec.name}': {where} has no train/<class>/<image> files")
    if not classes and spec.num_classes and len(chosen) != spec.num_classes:
        raise ValueError(f"dataset '{spec.name}': {where} has {len(chosen)} class folders in train/, "
                         f"expected {spec.num_classes}")
    return chosen


def _decode_tree(spec: _Spec, source: _Source, classes: tuple[str, ...], size: int | None,
                 resize: str) -> _Arrays:
    """Read a folder or archive tree and decode both splits."""
    read = _read_archive if source.layout == "archive" else _read_folder
    entries, seen = read(source.path, (lambda c: c in classes) if classes else (lambda c: True))
    chosen = _select(spec, seen, classes, source.path)
    index = {c: i for i, c in enumerate(chosen)}
    test_split = next((s for s in _TESTS if any(e[0] == s for e in entries)), None)
    if test_split is None:
        raise DatasetNotFound(f"dataset '{spec.name}': {source.path} has train/ but no test/ or val/ images")
    out = []
    for split in (_TRAIN, test_split):
        items = sorted((e for e in entries if e[0] == split), key=lambda e: (e[1], _natural_key(e[2])))
        if not items:
            raise DatasetNotFound(f"dataset '{spec.name}': {source.path} has no images in {split}/<class>/")
        stray = {e[1] for e in items} - index.keys()
        if stray:
            raise ValueError(f"dataset '{spec.name}': {split}/ has classes not in train/: {sorted(stray)}")
        out.append(_decode_images([e[3] for e in items], spec.channels, size, resize))
        out.append(np.array([index[e[1]] for e in items], np.int64))
    return _Arrays(*out, classes=chosen)


# ---------------------------------------------------------------------------------------------------------
# torchvision layouts (imported lazily: a cache hit never imports torchvision)
# ---------------------------------------------------------------------------------------------------------
def _tv_cifar(which: str) -> Callable[[Path, bool, int], _Arrays]:
    def read(base: Path, download: bool, size: int) -> _Arrays:
        from torchvision import datasets

        tr, te = (getattr(datasets, which)(str(base), train=t, download=download) for t in (True, False))
        return _Arrays(np.ascontiguousarray(tr.data.transpose(0, 3, 1, 2)), np.asarray(tr.targets, np.int64),
                       np.ascontiguousarray(te.data.transpose(0, 3, 1, 2)), np.asarray(te.targets, np.int64),
                       tuple(tr.classes))
    return read


def _tv_mnist(base: Path, download: bool, size: int) -> _Arrays:
    from torchvision import datasets

    tr, te = (datasets.MNIST(str(base), train=t, download=download) for t in (True, False))
    return _Arrays(tr.data.numpy()[:, None].copy(), tr.targets.numpy().astype(np.int64),
                   te.data.numpy()[:, None].copy(), te.targets.numpy().astype(np.int64),
                   tuple(str(i) for i in range(10)))     # torchvision says '0 - zero'; folders say '0'


def _tv_gtsrb(base: Path, download: bool, size: int) -> _Arrays:
    """torchvision's GTSRB gives full-size crops of varying size: stretch each to size x size."""
    from torchvision import datasets

    out = []
    for split in ("train", "test"):
        ds = datasets.GTSRB(str(base), split=split, download=download)
        samples = [ds[i] for i in range(len(ds))]
        out.append(_stack((im for im, _ in samples), len(samples), 3, size, "stretch"))
        out.append(np.array([y for _, y in samples], np.int64))
    return _Arrays(*out, classes=tuple(f"{i:05d}" for i in range(43)))


# ---------------------------------------------------------------------------------------------------------
# The cache and the common build path
# ---------------------------------------------------------------------------------------------------------
def _channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Exact per-channel mean and (sample) std in [0, 1] units, from value histograms, chunk by chunk."""
    hist = np.zeros((images.shape[1], 256), np.int64)
    step = max(1, (1 << 24) // max(1, images[0].size))
    for i in range(0, len(images), step):
        chunk = images[i:i + step]
        for c in range(images.shape[1]):
            hist[c] += np.bincount(chunk[:, c].ravel(), minlength=256)
    v = np.arange(256) / 255.0
    n = hist.sum(1)
    mean = hist @ v / n
    var = (hist @ (v * v) - n * mean**2) / np.maximum(n - 1, 1)
    return mean.tolist(), np.sqrt(np.maximum(var, 0)).tolist()


def _cache_load(path: Path) -> tuple[dict[str, np.ndarray], dict] | None:
    if not (path / "meta.json").is_file():
        return None
    try:
        meta = json.loads((path / "meta.json").read_text())
        arrays = {k: np.load(path / f"{k}.npy", mmap_mode="c" if k.endswith("images") else None)
                  for k in _ARRAY_NAMES}
    except (OSError, ValueError):        # damaged by hand: decode again
        shutil.rmtree(path, ignore_errors=True)
        return None
    return arrays, meta


def _cache_save(path: Path, arrays: _Arrays, meta: dict) -> None:
    """Write the arrays and meta.json into a temporary folder, then rename it to ``path`` (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        for k in _ARRAY_NAMES:
            np.save(tmp / f"{k}.npy", getattr(arrays, k))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        os.rename(tmp, path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (path / "meta.json").is_file():   # else another process finished first: use its copy
            raise


def _download(spec: _Spec, tv_read: Callable, root: Path | None, size: int) -> _Arrays:
    base = root if root is not None else cache_dir() / "torchvision"
    try:
        return tv_read(base, True, size)
    except (OSError, RuntimeError) as err:   # URLError is an OSError
        reason = " ".join(str(err).split())
        raise DatasetNotFound(f"dataset '{spec.name}': download with torchvision into {base} failed "
                              f"({reason}); pass --data-root DIR or BENCH_DATA_ROOT=DIR holding a copy "
                              "instead") from err


def _build(spec: _Spec, root: Path | None, *, size: int | None, resize: Resize = "stretch",
           classes: tuple[str, ...] = (), tv_read: Callable | None = None,
           download: bool = False) -> DataBundle:
    """Locate, look up the cache, decode on a miss (and cache), and wrap the arrays as a DataBundle."""
    decoded = None
    try:
        source = _locate(spec, root)
    except DatasetNotFound:
        if not (download and tv_read):
            raise
        decoded = _download(spec, tv_read, root, size)
        source = _locate(spec, root)
    options = {"size": size, "resize": resize, "classes": sorted(classes), "channels": spec.channels}
    key = digest({"version": _CACHE_VERSION, "dataset": spec.name, "layout": source.layout,
                  "checksum": source.checksum, "options": options})
    path = cache_dir() / "datasets" / f"{spec.name}-{key[:20]}"
    cached = _cache_load(path)
    if cached is None:
        start = time.perf_counter()
        if decoded is None:
            # download=True here lets torchvision complete a partial copy
            decoded = (tv_read(source.path, download, size) if source.layout == "torchvision"
                       else _decode_tree(spec, source, classes, size, resize))
        mean, std = _channel_stats(decoded.train_images)
        meta = {"version": _CACHE_VERSION, "dataset": spec.name, "source": f"{source.layout}:{source.path}",
                "checksum": source.checksum, "options": options, "classes": list(decoded.classes),
                "train_mean": mean, "train_std": std, "decode_s": round(time.perf_counter() - start, 2)}
        _cache_save(path, decoded, meta)
        cached = ({k: getattr(decoded, k) for k in _ARRAY_NAMES}, meta)
    arrays, meta = cached
    train = ImageSet(torch.from_numpy(arrays["train_images"]), torch.from_numpy(arrays["train_labels"]))
    test = ImageSet(torch.from_numpy(arrays["test_images"]), torch.from_numpy(arrays["test_labels"]))
    classes_out = tuple(meta["classes"])
    mean = spec.mean or tuple(meta["train_mean"])
    std = spec.std or tuple(meta["train_std"])
    return DataBundle(spec.name, train, test, len(classes_out), mean, std, classes_out,
                      f"{source.layout}:{source.path} {source.checksum}",
                      {"layout": source.layout, "cache": str(path),
                       "train_mean_measured": tuple(meta["train_mean"]),
                       "train_std_measured": tuple(meta["train_std"])})


# ---------------------------------------------------------------------------------------------------------
# Registered datasets
# ---------------------------------------------------------------------------------------------------------
def _check_resolution(value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"resolution must be a positive number of pixels, got {value}")


@dataclass(frozen=True)
class CIFAR10Config(DatasetConfig):
    download: bool = False      # fetch with torchvision into the data root when no copy is found


@dataclass(frozen=True)
class CIFAR100Config(DatasetConfig):
    download: bool = False


@dataclass(frozen=True)
class MNISTConfig(DatasetConfig):
    download: bool = False


@dataclass(frozen=True)
class GTSRBConfig(DatasetConfig):
    download: bool = False
    resolution: int = 32        # every image is stretched (bilinear, antialiased) to resolution x resolution

    def __post_init__(self):
        _check_resolution(self.resolution)


@dataclass(frozen=True)
class ImageNetSubsetConfig(DatasetConfig):
    classes: tuple[str, ...] = ()       # wnid folder names to keep (labels in sorted order); () = all
    resolution: int = 224
    resize: Resize = "center_crop"      # shorter side to resolution, then the central square

    def __post_init__(self):
        _check_resolution(self.resolution)


@dataclass(frozen=True)
class ImageFolderConfig(DatasetConfig):
    folder: str = ""                    # tree folder / archive stem under the data root; "" = the root itself
    classes: tuple[str, ...] = ()       # class folders to keep (labels in sorted order); () = all
    resolution: Optional[int] = None    # None keeps the images' own size (then all must share it)
    resize: Resize = "center_crop"
    channels: Literal[1, 3] = 3

    def __post_init__(self):
        _check_resolution(self.resolution)


_CIFAR10 = _Spec("cifar10", ("cifar10", "cifar-10"), 3, 10, "cifar-10-batches-py", CIFAR10_MEAN, CIFAR10_STD)
_CIFAR100 = _Spec("cifar100", ("cifar100", "cifar-100"), 3, 100, "cifar-100-python",
                  CIFAR100_MEAN, CIFAR100_STD)
_MNIST = _Spec("mnist", ("mnist",), 1, 10, "MNIST/raw", MNIST_MEAN, MNIST_STD)
_GTSRB = _Spec("gtsrb", ("gtsrb32", "gtsrb"), 3, 43, "gtsrb/GTSRB")
_IMAGENET = _Spec("imagenet_subset", ("imagenet_subset", "imagenette", "imagenette_sample", "imagenet"), 3,
                  None, None, IMAGENET_MEAN, IMAGENET_STD)


@register_dataset("cifar10", config=CIFAR10Config, display_name="CIFAR-10")
def cifar10(cfg: CIFAR10Config, root: Path | None) -> DataBundle:
    """CIFAR-10: 50,000 / 10,000 RGB 32x32 images, 10 classes (airplane ... truck)."""
    return _build(_CIFAR10, root, size=32, tv_read=_tv_cifar("CIFAR10"), download=cfg.download)


@register_dataset("cifar100", config=CIFAR100Config, display_name="CIFAR-100")
def cifar100(cfg: CIFAR100Config, root: Path | None) -> DataBundle:
    """CIFAR-100: 50,000 / 10,000 RGB 32x32 images, 100 fine classes (alphabetical, as torchvision's)."""
    return _build(_CIFAR100, root, size=32, tv_read=_tv_cifar("CIFAR100"), download=cfg.download)


@register_dataset("mnist", config=MNISTConfig, display_name="MNIST")
def mnist(cfg: MNISTConfig, root: Path | None) -> DataBundle:
    """MNIST: 60,000 / 10,000 grayscale 28x28 digits, one channel."""
    return _build(_MNIST, root, size=28, tv_read=_tv_mnist, download=cfg.download)


@register_dataset("gtsrb", config=GTSRBConfig, display_name="GTSRB")
def gtsrb(cfg: GTSRBConfig, root: Path | None) -> DataBundle:
    """GTSRB: 39,209 / 12,630 traffic signs, 43 classes, whole images stretched to ``resolution``.

    mean/std are measured on the decoded training set (they depend on the copy and the resolution).
    """
    return _build(_GTSRB, root, size=cfg.resolution, tv_read=_tv_gtsrb, download=cfg.download)


@register_dataset("imagenet_subset", config=ImageNetSubsetConfig, display_name="ImageNet subset")
def imagenet_subset(cfg: ImageNetSubsetConfig, root: Path | None) -> DataBundle:
    """An ImageNet class subset in ImageFolder layout (train/ and test/ or val/ with wnid class folders)."""
    return _build(_IMAGENET, root, size=cfg.resolution, resize=cfg.resize, classes=cfg.classes)


@register_dataset("imagefolder", config=ImageFolderConfig, display_name="ImageFolder")
def imagefolder(cfg: ImageFolderConfig, root: Path | None) -> DataBundle:
    """Any ImageFolder tree (folder or archive) the user names; mean/std measured on its training set."""
    spec = _Spec("imagefolder", (cfg.folder,) if cfg.folder else (), cfg.channels)
    return _build(spec, root, size=cfg.resolution, resize=cfg.resize, classes=cfg.classes)
