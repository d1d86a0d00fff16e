"""Contract tests for every registered model (as timm's tests/test_models.py): shapes, the feature interface,
backward, 1-channel inputs, seeded initialisation, channels_last and bf16 autocast. Tiny batches, CPU only."""
from __future__ import annotations

import math

import pytest
import torch

from bench.config import ConfigError
from bench.models import create_model, list_models

torch.set_num_threads(1)

MODELS = list_models()
N, SIZE, CLASSES = 2, 32, 10
HEAVY = {"wrn28_10"}  # > 30 M parameters: the per-model tests feed it 16-px images to stay fast on CPU


def _size(name: str) -> int:
    return 16 if name in HEAVY else SIZE


def _x(channels: int = 3, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    return torch.rand(N, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _build(name: str, **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("image_size", _size(name))
    return create_model(name, CLASSES, **kwargs)


def _tap(model, names):
    """Forward hooks recording the output of each named submodule."""
    acts, handles = {}, []
    for n in names:
        handles.append(model.get_submodule(n).register_forward_hook(
            lambda _m, _i, out, n=n: acts.__setitem__(n, out)))
    return acts, handles


@pytest.mark.parametrize("name", MODELS)
def test_forward_and_feature_shapes(name):
    model = _build(name).eval()
    x = _x(size=_size(name))
    with torch.no_grad():
        logits = model(x)
        f = model.forward_features(x)
        assert logits.shape == (N, CLASSES) and logits.dtype == torch.float32
        assert f.shape == (N, model.num_features)
        assert model.forward_head(f, pre_logits=True) is f
        torch.testing.assert_close(model.forward_head(f), logits)
        torch.testing.assert_close(model.features(x), f)
    assert isinstance(model.fc, torch.nn.Linear) and model.fc.in_features == model.num_features
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", MODELS)
def test_feature_info_resolves_and_matches(name):
    model = _build(name).eval()
    info = model.feature_info
    assert info and all(set(e) == {"name", "channels", "reduction"} for e in info)
    assert [e["reduction"] for e in info] == sorted(e["reduction"] for e in info)
    acts, handles = _tap(model, [e["name"] for e in info])
    with torch.no_grad():
        model(_x(size=_size(name)))
    for h in handles:
        h.remove()
    for e in info:
        a = acts[e["name"]]
        assert a.ndim == 4 and a.shape[:2] == (N, e["channels"]), (e, tuple(a.shape))
        # the stated reduction is the stride product: ceil(32 / r) for padded convs, a little less for LeNet's
        assert 0.55 < a.shape[-1] * e["reduction"] / _size(name) <= 1.0, (e, tuple(a.shape))


@pytest.mark.parametrize("name", MODELS)
def test_backward_reaches_every_parameter(name):
    model = _build(name).train()
    loss = torch.nn.functional.cross_entropy(model(_x(size=_size(name))), torch.tensor([0, 1]))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_one_channel_small_images(name):
    model = _build(name, in_channels=1, image_size=16, mean=(0.1307,), std=(0.3081,)).eval()
    with torch.no_grad():
        out = model(_x(channels=1, size=16))
    assert out.shape == (N, CLASSES)


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_initial_weights(name):
    a, b = _build(name).state_dict(), _build(name).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(1)
    c = create_model(name, CLASSES).state_dict()
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("name", MODELS)
def test_channels_last_and_bf16_autocast(name):
    model = _build(name).eval()
    x = _x(size=_size(name))
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model_cl(x.contiguous(memory_format=torch.channels_last)), ref,
                                   atol=1e-4, rtol=1e-4)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == (N, CLASSES)
    out.float().logsumexp(1).mean().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


# ------------------------------------------------------------------------------------------ families

def _layer4_side(model, size):
    acts, handles = _tap(model, ["layer4"])
    with torch.no_grad():
        model(torch.rand(N, 3, size, size))
    handles[0].remove()
    return acts["layer4"].shape[-1]


@pytest.mark.parametrize("size, stem, side", [(32, "auto", 4), (64, "auto", 8), (32, "cifar_maxpool", 2),
                                              (64, "imagenet", 2), (96, "auto", 3)])
def test_resnet18_stems(size, stem, side):
    model = _build("resnet18", image_size=size, stem=stem).eval()
    assert _layer4_side(model, size) == side
    assert model.feature_info[-1]["reduction"] == math.ceil(size / side)


def test_known_parameter_counts():
    # published sizes at 32x32, 10 classes: CIFAR ResNet-18 11.17 M, WRN-16-1 0.175 M, WRN-28-10 36.5 M
    expected = {"resnet18": 11_173_962, "preact_resnet18": 11_171_146, "wrn16_1": 175_066,
                "resnet34": 21_282_122}
    for name, count in expected.items():
        assert sum(p.numel() for p in _build(name).parameters()) == count, name


def test_lowcap_widths_follow_lfd():
    chans = {n: [e["channels"] for e in _build(n).feature_info]
             for n in ("resnet_s", "resnet_s1", "resnet_s2")}
    assert chans == {"resnet_s": [2, 2, 2, 4], "resnet_s1": [1, 1, 1, 1], "resnet_s2": [64, 128, 256, 512]}
    convs = [m.out_channels for m in _build("vgg_s").modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [4, 8, 16, 16, 32, 32, 32, 512]
    lenet = _build("lenet_s")
    assert [m.out_channels for m in lenet.modules() if isinstance(m, torch.nn.Conv2d)] == [1, 2]
    assert (lenet.fc1.out_features, lenet.fc.out_features) == (20, CLASSES)
    mb = [m.out_channels for m in _build("mobilenetv2_s").modules() if isinstance(m, torch.nn.Conv2d)]
    assert mb == [4, 4, 4, 8, 4, 4, 8, 8, 8, 8, 16]


def test_resnet_s_stem_width_option():
    # the stem's width is not stated in LfD; default = layer1's, ``stem_width`` widens only the stem
    base, wide = _build("resnet_s"), _build("resnet_s", stem_width=64)
    assert (base.conv1.out_channels, wide.conv1.out_channels) == (2, 64)
    assert wide.layer1[0].conv1.in_channels == 64 and wide.layer1[0].downsample is not None
    assert [e["channels"] for e in wide.feature_info] == [2, 2, 2, 4]
    assert wide(torch.rand(2, 3, 32, 32)).shape == (2, CLASSES)


def test_wrn_options_and_groups():
    model = _build("wrn", depth=28, width=2)
    assert [len(model.get_submodule(f"block{i}").layer) for i in (1, 2, 3)] == [4, 4, 4]
    assert [e["channels"] for e in model.feature_info] == [32, 64, 128]
    assert [e["name"] for e in _build("wrn16_1").feature_info] == ["block1", "block2", "block3"]


@pytest.mark.parametrize("name, kwargs", [("wrn", {"depth": 15}), ("resnet18", {"stem": "vit"}),
                                          ("wrn16_1", {"width": 2}),
                                          ("mobilenetv2_s", {"stem": "cifar_maxpool"})])
def test_bad_options_raise_config_error(name, kwargs):
    with pytest.raises(ConfigError):
        create_model(name, CLASSES, **kwargs)


def test_lenet_s_rejects_tiny_images():
    with pytest.raises(ConfigError):
        create_model("lenet_s", CLASSES, image_size=12)


def test_checkpoint_layouts():
    # WRN keys as in the NAD/ABL/MCL checkpoints; ResNet keys and shapes as torchvision's (ImageNet stem)
    keys = _build("wrn16_1").state_dict().keys()
    assert {"conv1.weight", "block2.layer.0.convShortcut.weight", "block3.layer.1.bn2.running_var",
            "bn1.weight", "fc.bias"} <= set(keys)
    torchvision = pytest.importorskip("torchvision")
    ours = _build("resnet18", image_size=224).state_dict()
    theirs = torchvision.models.resnet18(num_classes=CLASSES).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
