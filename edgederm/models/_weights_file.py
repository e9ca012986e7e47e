"""Loading a user's weights file safely: safetensors, or torch.load with weights_only=True."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..core.errors import ModelError


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError("weights file not found", path=path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the same thing to the user
        raise ModelError(
            f"cannot read weights ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'corrupt'})",
            path=path,
            fix="the file is truncated, corrupt or not a plain tensor state dict (pickled objects are refused)",
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError("not a state dict of tensors", path=path)
    return state


def load_backbone_weights(model: nn.Module, path: Path) -> None:
    """Load every tensor whose name and shape match; a differing classifier head stays fresh."""
    state = read_state_dict(path)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(usable) < len(own) // 2:
        raise ModelError(
            f"only {len(usable)} of {len(own)} tensors match this architecture",
            path=path,
            fix="pass weights saved from the same --arch",
        )
    model.load_state_dict(usable, strict=False)
