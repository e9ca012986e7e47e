"""The deployable graph: normalised input -> probabilities, in the layout the format wants.

Classifier artifacts output probabilities (softmax in the graph) so a phone app and MediaPipe's
ImageClassifier need no post-processing; the temperature is already folded into the weights.
Segmenter artifacts output lesion probabilities (sigmoid in the graph), one channel laid out as the
input is: (N, 1, S, S) for NCHW, (N, S, S, 1) for NHWC, the mask layout MediaPipe's ImageSegmenter reads.
With ``input_normalization`` the graph takes input normalised with that (mean, std) and turns it
into the spec's own normalisation first (NHWC TFLite files, for MediaPipe: see converters/tflite.py).
"""

from __future__ import annotations

import torch
from torch import nn

from edgederm.core.spec import ModelSpec

from ._job import ConversionError


class Deployable(nn.Module):
    def __init__(self, model: nn.Module, spec: ModelSpec, nhwc: bool = False, input_normalization: tuple | None = None):
        super().__init__()
        self.model = model
        self.nhwc = nhwc
        self.task = spec.task
        self.renormalize = input_normalization is not None
        if self.renormalize:  # x * scale + shift turns (p - mean) / std into (p - spec mean) / spec std, per channel
            mean, std = (torch.tensor(v, dtype=torch.float32) for v in input_normalization)
            spec_mean, spec_std = (torch.tensor(v, dtype=torch.float32) for v in (spec.preprocess.mean, spec.preprocess.std))
            shape = (1, 1, 1, 3) if nhwc else (1, 3, 1, 1)
            self.register_buffer("input_scale", (std / spec_std).reshape(shape))
            self.register_buffer("input_shift", ((mean - spec_mean) / spec_std).reshape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.renormalize:
            x = x * self.input_scale + self.input_shift
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        out = self.model(x)
        if self.task == "classification":
            return torch.softmax(out, dim=1)
        out = torch.sigmoid(out)
        return out.permute(0, 2, 3, 1) if self.nhwc else out


def deployable(model: nn.Module, spec: ModelSpec, nhwc: bool = False, input_normalization: tuple | None = None) -> nn.Module:
    return Deployable(model, spec, nhwc, input_normalization).eval()


def example_input(spec: ModelSpec, nhwc: bool = False, batch: int = 1) -> torch.Tensor:
    side = spec.preprocess.input_size
    shape = (batch, side, side, 3) if nhwc else (batch, 3, side, side)
    return torch.zeros(shape)


FP32_ATOL = 1e-4  # an fp32 artifact's output vs torch's on the same input


def check_fp32_matches_torch(job, example, output, what: str) -> None:
    """An fp32 artifact must give torch's outputs on ``example`` (NCHW float32) within FP32_ATOL."""
    with torch.no_grad():
        reference = deployable(job.model, job.spec)(torch.from_numpy(example)).numpy()
    gap = float(abs(reference - output).max())
    if gap > FP32_ATOL:
        raise ConversionError(f"the fp32 {what} differs from torch by {gap:.2g} (limit {FP32_ATOL})")
