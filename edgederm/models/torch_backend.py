"""The fp32 PyTorch reference backend (a run directory or checkpoint)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..runtime.predictor import Predictor
from .checkpoint import load_checkpoint
from .inference import forward_batches, sigmoid, softmax


class TorchPredictor(Predictor):
    def __init__(self, path: Path, device: str = "cpu"):
        self.path = path
        self.device = torch.device(device)
        self.model, self.spec = load_checkpoint(path)
        self.model.to(self.device, memory_format=torch.channels_last)

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        logits = forward_batches(self.model, pixels, self.spec.preprocess, self.device)
        if self.spec.task == "segmentation":
            side = self.spec.preprocess.input_size
            logits = logits.reshape(len(pixels), side, side)  # (N, 1, S, S); also shapes an empty batch
            return sigmoid(logits) if self.spec.output == "mask_logits" else logits
        return softmax(logits) if self.spec.output == "logits" else logits
