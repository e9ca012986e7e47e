"""Running a torch model over preprocessed pixels (shared by training, evaluation and predict)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..core.log import progress
from ..core.preprocess import Preprocess


def to_model_input(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A normalised NCHW batch as a channels-last tensor: 4-5x faster for these convnets on CPU."""
    tensor = torch.from_numpy(array).to(device, non_blocking=True)
    return tensor.contiguous(memory_format=torch.channels_last) if tensor.dim() == 4 and array.shape[1] == 3 else tensor


def normalize_tensor(pixels: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """uint8 (B, S, S, 3) on any device -> the normalised channels-last NCHW batch on that device.

    The same arithmetic as ``Preprocess.normalize``, for pixels already on the GPU.
    """
    mean = torch.tensor(preprocess.mean, dtype=torch.float32, device=pixels.device)
    std = torch.tensor(preprocess.std, dtype=torch.float32, device=pixels.device)
    array = (pixels.float() / 255.0 - mean) / std
    return array.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def forward_batches(
    fn, pixels: np.ndarray, preprocess: Preprocess, device: torch.device, batch_size: int = 64, desc: str | None = None
) -> np.ndarray:
    """Apply ``fn`` (a model or a feature extractor) to uint8 (N, S, S, 3) pixels in batches."""
    outputs = []
    starts = range(0, len(pixels), batch_size)
    for start in progress(starts, desc=desc, unit="batch") if desc else starts:
        batch = to_model_input(preprocess.normalize(pixels[start : start + batch_size]), device)
        outputs.append(fn(batch).float().cpu().numpy())
    if not outputs:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(outputs)


def model_logits(model: nn.Module, pixels: np.ndarray, preprocess: Preprocess, device: torch.device, batch_size: int = 64) -> np.ndarray:
    model.eval()
    return forward_batches(model, pixels, preprocess, device, batch_size)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(logits, np.float32)))  # no overflow warning for large |x|
