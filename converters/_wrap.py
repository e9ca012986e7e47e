"""The deployable graph: normalised input -> probabilities, in the layout the format wants.

Classifier artifacts output probabilities (softmax in the graph) so a phone app and MediaPipe's
ImageClassifier need no post-processing; the temperature is already folded into the weights.
"""

from __future__ import annotations

import torch
from torch import nn

from edgederm.spec import ModelSpec


class Deployable(nn.Module):
    def __init__(self, model: nn.Module, spec: ModelSpec, nhwc: bool = False):
        super().__init__()
        self.model = model
        self.nhwc = nhwc
        self.task = spec.task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        out = self.model(x)
        return torch.softmax(out, dim=1) if self.task == "classification" else torch.sigmoid(out)


def deployable(model: nn.Module, spec: ModelSpec, nhwc: bool = False) -> nn.Module:
    return Deployable(model, spec, nhwc).eval()


def example_input(spec: ModelSpec, nhwc: bool = False, batch: int = 1) -> torch.Tensor:
    side = spec.preprocess.input_size
    shape = (batch, side, side, 3) if nhwc else (batch, 3, side, side)
    return torch.zeros(shape)
