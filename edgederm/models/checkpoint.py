"""Checkpoints: safetensors weights + a JSON ModelSpec, written atomically, never pickled.

A run directory holds the final model (``model.safetensors`` + ``spec.json``) and the state to
resume from (``last_state.pt``: only tensors and plain values, read back with
``weights_only=True``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..core import atomic, zoo
from ..core.errors import ModelError
from ..core.spec import ModelSpec
from . import create_model, pruning
from .classifiers import set_batchnorm_eps

MODEL_FILE = "model.safetensors"
SPEC_FILE = "spec.json"
LAST_STATE = "last_state.pt"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    state = _plain_state(model)
    atomic.write_with(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))


def save_model(model: nn.Module, spec: ModelSpec, run_dir: Path) -> Path:
    """Write the final weights, then the spec with the weights' sha256."""
    weights = run_dir / MODEL_FILE
    save_weights(model, weights, metadata={"edgederm_arch": spec.arch})
    spec.source_sha256 = sha256_file(weights)
    atomic.write_text(run_dir / SPEC_FILE, spec.to_json())
    return weights


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """A run dir, ``zoo:NAME``, its spec.json or its model.safetensors -> (weights, spec) paths."""
    path = zoo.resolve(path)
    if path.is_dir():
        weights, spec = path / MODEL_FILE, path / SPEC_FILE
    elif path.name == SPEC_FILE:
        weights, spec = path.with_name(MODEL_FILE), path
    elif path.suffix == ".safetensors":
        weights, spec = path, path.with_name(SPEC_FILE)
    else:
        raise ModelError(
            "not an edgederm checkpoint",
            path=path,
            fix="give a run directory, zoo:NAME (see `edgederm zoo list`), its spec.json or model.safetensors",
        )
    for needed in (weights, spec):
        if not needed.is_file():
            raise ModelError(
                f"{needed.name} not found", path=needed.parent, fix="train first (edgederm train ...) or point at the run directory"
            )
    return weights, spec


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for one cause
        raise ModelError(
            f"cannot read the weights ({type(exc).__name__}: {exc})",
            path=path,
            fix="the file is truncated or corrupt; restore it from the run directory or retrain",
        ) from None


def load_checkpoint(path: str | Path, *, verify_hash: bool = True) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model of a checkpoint in eval mode, checking its sha256 against the spec."""
    weights, spec_path = resolve_checkpoint(path)
    spec = ModelSpec.load(spec_path)
    if verify_hash and spec.source_sha256 and sha256_file(weights) != spec.source_sha256:
        raise ModelError(
            "the weights do not match the sha256 recorded in spec.json",
            path=weights,
            fix="the file was changed or damaged after training; restore it or retrain",
        )
    model = build_from_spec(spec)
    state = _read_safetensors(weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"weights do not fit {spec.arch} ({str(exc).splitlines()[0]})", path=weights) from None
    return model.eval(), spec


def build_from_spec(spec: ModelSpec) -> nn.Module:
    model = create_model(spec.arch, spec.num_classes)
    if "bn_eps" in spec.arch_options:
        set_batchnorm_eps(model, float(spec.arch_options["bn_eps"]))
    if "mid_channels" in spec.arch_options:
        try:
            pruning.shrink(model, [int(w) for w in spec.arch_options["mid_channels"]])
        except (TypeError, ValueError) as exc:
            raise ModelError(f"arch_options.mid_channels does not fit {spec.arch} ({exc})", fix="re-export from the pruned run") from None
    return model


def save_training_state(model: nn.Module, state: dict[str, Any], run_dir: Path) -> None:
    """Resumable state in one atomic file: weights, optimizer, schedule, epoch, history."""
    payload = {**state, "model": _plain_state(model)}
    atomic.write_with(run_dir / LAST_STATE, lambda tmp: torch.save(payload, tmp))


def load_training_state(run_dir: Path) -> dict[str, Any] | None:
    state_path = run_dir / LAST_STATE
    if not state_path.is_file():
        return None
    try:
        return torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the file cannot be trusted
        raise ModelError(
            f"cannot read the training state ({type(exc).__name__})",
            path=state_path,
            fix="the file is corrupt; delete it and start again without --resume",
        ) from None
