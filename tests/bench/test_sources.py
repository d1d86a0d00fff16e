"""bench.data.sources: every loader on tiny generated data in each layout, the decoding cache, the errors."""
from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.config import ConfigError
from bench.data import sources
from bench.data.datasets import DatasetNotFound, load_dataset
from bench.registry import DATASETS

USER_CACHE = os.environ.get("BENCH_CACHE", str(Path.home() / ".cache" / "bdbench"))
OFFLINE = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh decoding cache per test (the offline-copy test points it back at the user's cache)."""
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BENCH_DATA_ROOT", raising=False)
    return tmp_path / "cache"


def load(name: str, root: Path | str | None = None, **opts):
    return load_dataset(name, DATASETS.get(name).parse(opts), root)


def colour(c: int) -> tuple[int, int, int]:
    return (20 * c % 256, 7 * c % 256, 255 - 3 * c)


def write_tree(top: Path, classes, n_train=2, n_test=1, size=(32, 32), mode="RGB", ext="png", test="test"):
    """An ImageFolder tree whose every pixel of class c is colour(c) (grey level c for mode 'L')."""
    for split, n in (("train", n_train), (test, n_test)):
        for c, cls in enumerate(classes):
            (top / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                fill = colour(c) if mode == "RGB" else c * 20
                Image.new(mode, size, fill).save(top / split / cls / f"{i}.{ext}")
    return top


def write_tar(src: Path, archive: Path, arcname: str) -> Path:
    with tarfile.open(archive, "w:xz" if archive.name.endswith(".xz") else "w") as tf:
        tf.add(src, arcname=arcname)
    return archive


def check_colours(images: torch.Tensor, labels: torch.Tensor) -> None:
    for x, y in zip(images, labels, strict=True):
        assert x[:, 0, 0].tolist() == list(colour(int(y)))[: x.shape[0]]


# ---------------------------------------------------------------------------------------------------------
# ImageFolder trees: folder, nested folder, archives
# ---------------------------------------------------------------------------------------------------------
def test_registered_names():
    names = {"cifar10", "cifar100", "mnist", "gtsrb", "imagenet_subset", "imagefolder"}
    assert names <= set(DATASETS.names())


@pytest.mark.parametrize("layout", ["nested", "direct", "tar_xz", "tar_dot_prefix", "root_is_archive"])
def test_cifar10_imagefolder_layouts(tmp_path, layout):
    data = tmp_path / "data"
    data.mkdir()
    if layout == "nested":
        write_tree(data / "cifar10", CIFAR10_NAMES)
    elif layout == "direct":
        write_tree(data, CIFAR10_NAMES)
    else:
        tree = write_tree(tmp_path / "src", CIFAR10_NAMES)
        name = {"tar_xz": "cifar10.tar.xz", "tar_dot_prefix": "cifar-10.tar", "root_is_archive": "any.tar.xz"}
        write_tar(tree, data / name[layout], {"tar_dot_prefix": "."}.get(layout, "cifar10"))
    root = data / "any.tar.xz" if layout == "root_is_archive" else data
    b = load("cifar10", root)
    assert b.class_names == CIFAR10_NAMES and b.num_classes == 10
    assert b.train.images.shape == (20, 3, 32, 32) and b.test.images.shape == (10, 3, 32, 32)
    assert torch.bincount(b.train.labels).tolist() == [2] * 10
    check_colours(b.train.images, b.train.labels)
    check_colours(b.test.images, b.test.labels)
    assert b.mean == sources.CIFAR10_MEAN and b.std == sources.CIFAR10_STD
    assert b.extra["layout"] == ("folder" if layout in ("nested", "direct") else "archive")


def test_wrong_class_count_is_an_error(tmp_path):
    write_tree(tmp_path / "cifar10", CIFAR10_NAMES[:3])
    with pytest.raises(ValueError, match="3 class folders.*expected 10"):
        load("cifar10", tmp_path)


def test_cifar100_imagefolder(tmp_path):
    names = tuple(f"class{i:03d}" for i in range(100))
    tree = write_tree(tmp_path / "src", names, n_train=1, size=(8, 8))
    write_tar(tree, tmp_path / "cifar100.tar.xz", "c100")
    b = load("cifar100", tmp_path)
    assert b.train.images.shape == (100, 3, 32, 32)      # 8x8 files are stretched to CIFAR's 32x32
    assert b.class_names == names and b.mean == sources.CIFAR100_MEAN


def test_mnist_grayscale_archive(tmp_path):
    write_tar(write_tree(tmp_path / "src", [str(i) for i in range(10)], size=(28, 28), mode="L"),
              tmp_path / "mnist.tar.xz", "mnist")
    b = load("mnist", tmp_path)
    assert b.train.images.shape == (20, 1, 28, 28) and b.in_channels == 1
    assert (b.train.images[:, 0, 0, 0] == b.train.labels * 20).all()
    assert b.mean == sources.MNIST_MEAN


def test_gtsrb_folder_resizes_to_resolution(tmp_path):
    write_tree(tmp_path / "gtsrb32", [f"{i:05d}" for i in range(43)], n_train=1, size=(40, 30), ext="ppm")
    b32, b8 = load("gtsrb", tmp_path), load("gtsrb", tmp_path, resolution=8)
    assert b32.train.images.shape == (43, 3, 32, 32) and b8.test.images.shape == (43, 3, 8, 8)
    check_colours(b8.train.images, b8.train.labels)      # uniform images stay uniform when resized
    assert b32.class_names[-1] == "00042"
    mean = b32.train.images.double().div(255).mean((0, 2, 3))
    assert torch.allclose(torch.tensor(b32.mean, dtype=torch.double), mean)   # measured, not a constant
    assert len(list((tmp_path / "cache" / "datasets").iterdir())) == 2       # resolution is in the key


def test_imagenet_subset_selects_classes(tmp_path):
    wnids = ["n01440764", "n02102040", "n03000684", "n03888257"]
    write_tree(tmp_path / "imagenette", wnids, n_train=3, n_test=2, size=(48, 40), ext="jpg", test="val")
    b = load("imagenet_subset", tmp_path, classes=["n03888257", "n01440764"], resolution=16)
    assert b.class_names == ("n01440764", "n03888257")            # label order: sorted folder names
    assert b.train.images.shape == (6, 3, 16, 16) and b.test.images.shape == (4, 3, 16, 16)
    assert torch.bincount(b.test.labels).tolist() == [2, 2]
    assert b.mean == sources.IMAGENET_MEAN
    full = load("imagenet_subset", tmp_path, resolution=16, resize="stretch")
    assert full.num_classes == 4 and len(full.train) == 12
    with pytest.raises(ConfigError, match="did you mean 'n01440764'"):
        load("imagenet_subset", tmp_path, classes=["n0144076"])


def test_imagefolder_generic(tmp_path):
    write_tree(tmp_path / "mine", ["b", "a"], size=(12, 10), mode="L")
    b = load("imagefolder", tmp_path, folder="mine", channels=1)
    assert b.train.images.shape == (4, 1, 10, 12)                 # native size kept
    assert b.class_names == ("a", "b") and b.name == "imagefolder"
    Image.new("L", (5, 5)).save(tmp_path / "mine" / "train" / "a" / "odd.png")
    with pytest.raises(ValueError, match="resolution"):
        load("imagefolder", tmp_path / "mine", channels=1)
    assert load("imagefolder", tmp_path / "mine", resolution=6).train.images.shape == (5, 3, 6, 6)


def test_archive_members_are_read_safely(tmp_path):
    tree = write_tree(tmp_path / "src", ["a", "b"])
    archive = write_tar(tree, tmp_path / "data.tar", "set")
    png = (tree / "train" / "a" / "0.png").read_bytes()
    with tarfile.open(archive, "a") as tf:
        for name in ("../evil/train/a/x.png", "set/train/.hidden/x.png", "set/train/a/._x.png"):
            info = tarfile.TarInfo(name)
            info.size = len(png)
            tf.addfile(info, io.BytesIO(png))
        link = tarfile.TarInfo("set/train/a/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    b = load("imagefolder", archive)
    assert len(b.train) == 4 and b.class_names == ("a", "b")
    assert not (tmp_path / "evil").exists()


# ---------------------------------------------------------------------------------------------------------
# torchvision layouts
# ---------------------------------------------------------------------------------------------------------
def write_cifar_batches(top: Path, key: str, names: list[str], files: dict[str, int], meta: str,
                        meta_key: str) -> None:
    top.mkdir(parents=True)
    g = np.random.default_rng(0)
    for fname, n in files.items():
        labels = [i % len(names) for i in range(n)]
        batch = {"data": g.integers(0, 256, (n, 3072), dtype=np.uint8), key: labels}
        (top / fname).write_bytes(pickle.dumps(batch))
    (top / meta).write_bytes(pickle.dumps({meta_key: names}))


@pytest.fixture
def no_md5(monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)   # fake files, fake checksums


def test_cifar10_pickle_layout_and_cache_hit(tmp_path, no_md5, monkeypatch):
    files = {f"data_batch_{i}": 4 for i in range(1, 6)} | {"test_batch": 3}
    write_cifar_batches(tmp_path / "cifar-10-batches-py", "labels", list(CIFAR10_NAMES), files,
                        "batches.meta", "label_names")
    b = load("cifar10", tmp_path)
    assert b.extra["layout"] == "torchvision" and b.class_names == CIFAR10_NAMES
    assert b.train.images.shape == (20, 3, 32, 32) and len(b.test) == 3
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes())["data"]
    assert torch.equal(b.train.images[0], torch.from_numpy(raw[0].reshape(3, 32, 32)))
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", None)        # a cache hit never reads the batches
    again = load("cifar10", tmp_path)
    assert torch.equal(again.train.images, b.train.images) and torch.equal(again.test.labels, b.test.labels)


def test_cifar100_pickle_layout(tmp_path, no_md5):
    names = [f"fine{i:03d}" for i in range(100)]
    write_cifar_batches(tmp_path / "cifar-100-python", "fine_labels", names, {"train": 200, "test": 100},
                        "meta", "fine_label_names")
    b = load("cifar100", tmp_path)
    assert b.num_classes == 100 and len(b.train) == 200 and b.class_names[5] == "fine005"


def test_mnist_idx_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 12), ("t10k", 5)):
        pixels = (np.arange(n * 784) % 251).astype(np.uint8)
        header = struct.pack(">IIII", 0x803, n, 28, 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + pixels.tobytes())
        labels = (np.arange(n) % 10).astype(np.uint8)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())
    b = load("mnist", tmp_path)
    assert b.train.images.shape == (12, 1, 28, 28) and len(b.test) == 5
    assert b.class_names == tuple("0123456789") and b.train.labels.tolist()[:3] == [0, 1, 2]
    assert b.train.images.flatten()[:300].tolist() == (np.arange(300) % 251).tolist()


def test_gtsrb_torchvision_layout_resizes(tmp_path):
    base = tmp_path / "gtsrb"
    for c in range(43):
        folder = base / "GTSRB" / "Training" / f"{c:05d}"
        folder.mkdir(parents=True)
        Image.new("RGB", (30 + c, 40), colour(c)).save(folder / "00000_00000.ppm")
    (base / "GTSRB" / "Final_Test" / "Images").mkdir(parents=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i, c in enumerate([3, 42, 0]):
        Image.new("RGB", (60, 45), colour(c)).save(base / "GTSRB" / "Final_Test" / "Images" / f"{i:05d}.ppm")
        rows.append(f"{i:05d}.ppm;60;45;5;5;55;40;{c}")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    b = load("gtsrb", tmp_path, resolution=16)
    assert b.extra["layout"] == "torchvision"
    assert b.train.images.shape == (43, 3, 16, 16) and b.test.labels.tolist() == [3, 42, 0]
    check_colours(b.train.images, b.train.labels)
    check_colours(b.test.images, b.test.labels)


def test_download_flag_uses_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train=True, download=False):
            calls.append(download)
            (Path(root) / "cifar-10-batches-py").mkdir(parents=True, exist_ok=True)
            self.data = np.zeros((4 if train else 2, 32, 32, 3), np.uint8)
            self.targets, self.classes = [0, 1, 2, 3][: len(self.data)], list(CIFAR10_NAMES)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    b = load("cifar10", tmp_path, download=True)
    assert calls == [True, True] and len(b.train) == 4 and b.extra["layout"] == "torchvision"

    class Offline:
        def __init__(self, *a, **k):
            raise OSError("<urlopen error [Errno -3]\n Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    with pytest.raises(DatasetNotFound) as err:
        load("mnist", tmp_path / "empty", download=True)
    assert "\n" not in str(err.value) and "download with torchvision" in str(err.value)


# ---------------------------------------------------------------------------------------------------------
# The decoding cache and the not-found message
# ---------------------------------------------------------------------------------------------------------
def test_second_load_hits_the_cache(tmp_path, cache, monkeypatch):
    archive = write_tar(write_tree(tmp_path / "src", CIFAR10_NAMES), tmp_path / "cifar10.tar.xz", "cifar10")
    first = load("cifar10", tmp_path)

    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(sources, "_decode_images", boom)
    monkeypatch.setattr(sources, "_read_archive", boom)
    second = load("cifar10", tmp_path)
    assert torch.equal(second.train.images, first.train.images)
    assert torch.equal(second.test.labels, first.test.labels)
    assert len(load("cifar10", tmp_path, train_limit=10).train) == 10  # limits apply to the cached arrays
    assert not [p for p in (cache / "datasets").iterdir() if p.name.startswith(".")]  # no temp leftovers
    os.utime(archive, ns=(time.time_ns(), time.time_ns() + 10**9))                  # new mtime: re-hash
    assert len(load("cifar10", tmp_path).train) == len(first.train)                 # same sha256: a hit
    with tarfile.open(archive, "w:xz") as tf:                                         # new content: decode
        tf.add(tmp_path / "src", arcname="cifar10")
        tf.add(tmp_path / "src" / "train" / "cat" / "0.png", arcname="cifar10/train/cat/9.png")
    with pytest.raises(AssertionError, match="decoded again"):
        load("cifar10", tmp_path)


def test_archive_checksum_is_remembered(tmp_path):
    archive = tmp_path / "x.tar"
    archive.write_bytes(b"0" * 1000)
    first = sources._archive_checksum(archive)
    import hashlib

    assert first == "sha256=" + hashlib.sha256(b"0" * 1000).hexdigest()
    (sidecar,) = (tmp_path / "cache" / "checksums").iterdir()
    sidecar.write_text(sidecar.read_text().replace(first[7:], "remembered"))
    assert sources._archive_checksum(archive) == "sha256=remembered"        # not hashed again


def test_not_found_message(tmp_path):
    with pytest.raises(DatasetNotFound) as err:
        load("cifar10", tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("dataset 'cifar10' not found")
    for part in (f"{tmp_path}/cifar-10-batches-py", f"{tmp_path}/cifar10[/|.tar.xz", "--data-root",
                 "BENCH_DATA_ROOT", "ImageFolder", ".tar.xz", "download: true"):
        assert part in msg
    with pytest.raises(DatasetNotFound) as err:
        load("imagenet_subset", tmp_path)
    assert "download" not in str(err.value) and "imagenette" in str(err.value)
    with pytest.raises(DatasetNotFound, match="no data root given"):
        load("gtsrb")


# ---------------------------------------------------------------------------------------------------------
# The shared offline copy (real data)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not (OFFLINE / "cifar10.tar.xz").is_file(), reason=f"no offline copy at {OFFLINE}")
def test_offline_cifar10_copy(monkeypatch, capsys):
    monkeypatch.setenv("BENCH_CACHE", USER_CACHE)        # decode once per machine, not once per test run
    start = time.perf_counter()
    b = load("cifar10", OFFLINE)
    with capsys.disabled():
        print(f"\ncifar10 offline copy: {time.perf_counter() - start:.2f}s (cache: {b.extra['cache']})")
    assert b.class_names == CIFAR10_NAMES
    assert b.train.images.shape == (50000, 3, 32, 32) and b.test.images.shape == (10000, 3, 32, 32)
    assert torch.bincount(b.train.labels).tolist() == [5000] * 10
    assert torch.bincount(b.test.labels).tolist() == [1000] * 10
    assert "sha256=568716c6" in b.source
