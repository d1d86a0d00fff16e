"""ImageNet-pretrained ResNet initialisation: torchvision's checkpoint (from torch hub's cache) fills every weight
but fc; offline without the file, the error names the file to place and where."""
from __future__ import annotations

import pytest
import torch
import torchvision

from bench.models import create_model
from bench.models.pretrained import weights_file


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    return tmp_path


def test_missing_weights_name_the_file_to_place(hub):
    with pytest.raises(FileNotFoundError, match=r"resnet18-f37072fd\.pth.*download\.pytorch\.org.*checkpoints"):
        create_model("resnet18", 5, 3, 224, None, None, pretrained="imagenet")


def test_weights_load_into_every_layer_but_fc(hub):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)            # a stand-in with torchvision's layout
    path = weights_file("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    model = create_model("resnet18", 5, 3, 224, None, None, pretrained="imagenet")
    ours = model.state_dict()
    for k, v in reference.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(ours[k], v), k
    assert model.fc.out_features == 5
    with pytest.raises(ValueError, match="stem: imagenet"):
        create_model("resnet18", 5, 3, 32, None, None, pretrained="imagenet")   # CIFAR stem: no ImageNet weights
