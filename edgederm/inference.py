"""Running a torch model over preprocessed pixels (shared by training, evaluation and predict)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .preprocess import Preprocess


@torch.no_grad()
def forward_batches(
    fn, pixels: np.ndarray, preprocess: Preprocess, device: torch.device, batch_size: int = 64
) -> np.ndarray:
    """Apply ``fn`` (a model or a feature extractor) to uint8 (N, S, S, 3) pixels in batches."""
    outputs = []
    for start in range(0, len(pixels), batch_size):
        batch = torch.from_numpy(preprocess.normalize(pixels[start : start + batch_size])).to(device)
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
