"""MCL Table 1's attacks as sweeps/table1.yaml resolves them on CIFAR-10 poison what the authors' data_loader.py
poisons (WeCanShow/MCL): 10 % of all 50,000 images for the poison-label attacks, 0.8 of the target class (the
paper's "8 %" of the training set) for CL and SIG; Blend is the paper's 0.1 blend at the code's rows 18-20."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.attack import POISONED
from bench.data.imageset import DataInfo, ImageSet
from bench.registry import ATTACKS
from bench.sweep import load_sweep

CIFAR = DataInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
TABLE1 = Path(__file__).resolve().parents[2] / "sweeps" / "table1.yaml"


def table1_attacks() -> dict[str, dict]:
    """attack name -> its resolved config in table1.yaml's CIFAR-10 cells."""
    cells = [c for c in load_sweep(TABLE1).cells if c.dataset["name"] == "cifar10"]
    return {c.attack["name"]: c.attack for c in cells}


def build(spec: dict, seed: int = 0):
    entry = ATTACKS.get(spec["name"])
    options = {k: v for k, v in spec.items() if k != "name"}
    return entry.obj(entry.parse(options, dataset="cifar10"), CIFAR, seed)


@pytest.fixture(scope="module")
def cifar_sized() -> ImageSet:
    """50,000 labels, 5,000 per class, as CIFAR-10's training set; one shared grey image (no memory per sample)."""
    labels = torch.arange(10).repeat_interleave(5000)
    images = torch.full((1, 3, 32, 32), 128, dtype=torch.uint8).expand(len(labels), 3, 32, 32)
    return ImageSet(images, labels)


@pytest.mark.parametrize("name", ["badnets", "trojan", "blend"])
def test_poison_label_attacks_poison_ten_percent_of_all_images(name, cifar_sized, untrained_model):
    attack = build(table1_attacks()[name])
    out = attack.poison(cifar_sized, torch.Generator().manual_seed(0))
    idx = torch.nonzero(out.kind == POISONED).flatten()
    # data_loader.py l. 217-218, 229-241: int(50,000 x 0.1) indices of the whole set, all stamped, label 5.
    assert len(idx) == 5000 and out.params["base"] == "all"
    assert torch.all(out.labels[idx] == 5)
    from_target = int((cifar_sized.labels[idx] == 5).sum())
    assert 350 < from_target < 650                     # ~1/10 of the picks already were class 5 (kept, stamped)
    assert int((out.labels != cifar_sized.labels).sum()) == 5000 - from_target


@pytest.mark.parametrize("name", ["cl", "sig"])
def test_clean_label_attacks_poison_eight_percent_of_the_training_set(name, cifar_sized, untrained_model):
    attack = build(table1_attacks()[name])
    out = attack.poison(cifar_sized, torch.Generator().manual_seed(0), clean_model=untrained_model(CIFAR))
    idx = torch.nonzero(out.kind == POISONED).flatten()
    # data_loader.py l. 293-311: each class-5 image with probability 0.1 x 8 -> 4,000 expected = 8 % of 50,000.
    assert len(idx) == 4000 and torch.all(cifar_sized.labels[idx] == 5)
    assert torch.equal(out.labels, cifar_sized.labels)                          # clean-label: no label changes
    assert len(out.changed_images) == 4000 and bool((out.changed_images != 128).any())


def test_blend_is_the_papers_formula_at_alpha_0_1_at_rows_18_to_20():
    spec = table1_attacks()["blend"]
    attack = build(spec)
    x = torch.randint(0, 256, (8, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    out = attack.apply_trigger(x, train=True)
    test_out = attack.apply_trigger(x, train=False)
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[18:21, 18:21] = True                          # the code's "center": width - 14 .. width - 12
    assert torch.equal(out[..., ~inside], x[..., ~inside]) and torch.equal(out, test_out)
    u = attack.pattern[:, 18:21, 18:21].double()
    assert not torch.equal(u[0], u[1])                   # App. A.2: a random *colour* trigger (channels differ)
    expected = 0.9 * x[..., 18:21, 18:21].double() + 0.1 * u                 # App. A.2: blend rate 0.1
    assert (out[..., 18:21, 18:21].double() - expected).abs().max() <= 0.5 + 1e-4    # uint8 rounding only
