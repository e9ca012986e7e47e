"""The model registry, after timm: small builder functions registered by name.

``list_models('mobilenet*')`` is the way in; ``create_model(name, num_classes, weights=...)``
builds one. Each entry knows its task, default input size and the weights it can load, with
their metadata (source, licence, the preprocessing they were trained with), as torchvision does.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ..core.errors import ModelError


@dataclass(frozen=True)
class Weights:
    """A set of pretrained weights and the facts needed to use them correctly."""

    tag: str
    source: str
    license: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    loader: Callable[[nn.Module], None]
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    task: str
    family: str
    builder: Callable[[int], nn.Module]
    default_input_size: int
    description: str
    weights: dict[str, Weights] = field(default_factory=dict)
    input_multiple: int = 1  # the input side must be a multiple of this (segmenters halve it several times)

    @property
    def default_weights(self) -> str:
        """The offline ImageNet weights when the model has them; hub weights are never a default."""
        return "imagenet" if "imagenet" in self.weights else "none"


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def list_models(pattern: str = "*", task: str | None = None) -> list[str]:
    _import_families()
    return sorted(n for n, e in _REGISTRY.items() if fnmatch.fnmatch(n, pattern) and (task is None or e.task == task))


def get_entry(name: str) -> ModelEntry:
    _import_families()
    if name not in _REGISTRY:
        raise ModelError(f"unknown model {name!r}", fix=f"choose one of {', '.join(sorted(_REGISTRY))} (see `edgederm models`)")
    return _REGISTRY[name]


def create_model(name: str, num_classes: int, weights: str | Path | None = None) -> nn.Module:
    """Build ``name`` with a fresh ``num_classes`` head.

    ``weights``: None or "none" for random init, a tag from the entry (e.g. "imagenet"), or a
    path to a .safetensors/.pth state dict whose backbone is loaded (the head is left fresh when
    its shape differs).
    """
    entry = get_entry(name)
    model = entry.builder(num_classes)
    if weights in (None, "none"):
        return model
    weights = str(weights)
    if weights in entry.weights:
        entry.weights[weights].loader(model)
        return model
    path = Path(weights).expanduser()
    if path.suffix in {".safetensors", ".pth", ".pt", ".bin"}:
        from ._weights_file import load_backbone_weights

        load_backbone_weights(model, path)
        return model
    raise ModelError(
        f"unknown weights {weights!r} for {name}",
        fix=f"use one of {sorted(entry.weights) + ['none']} or a path to a .safetensors/.pth file",
    )


def _import_families() -> None:
    # Importing a family module registers its models (timm's pattern).
    from . import classifiers, segmenters  # noqa: F401
