"""Activation ranges for static int8, chosen by measured agreement with fp32 (TFLite and ONNX alike).

Each converter records every activation tensor's minimum and maximum on each calibration image.
A candidate range for a tensor is a percentile of those per-image extremes: 100 is the absolute
min/max, lower percentiles clip the few images whose extremes stretch the int8 grid for all the
others. The converter quantizes the whole model once per candidate and scores each by how close
its probabilities are to fp32's on the calibration images (mean |Δp|, which moves smoothly where
top-1 agreement moves one image at a time). Min/max stays unless a clipped candidate is clearly
closer, by more than CLEAR_GAIN: clipping discards range that an image outside the calibration set
may need, so a small gain on the calibration images is not worth it. Where a clipped range wins,
the model is range-sensitive, and ``_bias_correction.with_ranges`` then judges every candidate, with
and without bias correction, on held-out calibration images.

Why, measured on 150 ISIC 2017 val images against fp32 (TFLite, 100 calibration images): a
MobileNetV3-Large (hard-swish and ReLU activations, unbounded) agrees on top-1 0.82 with absolute
min/max and 0.94-0.96 at the 99th-90th percentile, while weight-only int8 agrees 0.99, so its error
was in the activation ranges; clipping cut its mean |Δp| on the calibration images to a third. A
MobileNetV3-Large distilled at 128 px agreed 0.97 at min/max and 0.96 at the 95th percentile, which
had been 20% closer on the calibration images (out-of-domain ISIC images for a HAM10000 model): the
reason for CLEAR_GAIN. EfficientNet-Lite0 (ReLU6, bounded) agrees 0.98 at every candidate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np

PERCENTILES = (100.0, 99.0, 95.0, 90.0)
# w8a16 takes min/max without a search. Its 16-bit grid is 256 times finer than int8's, so clipping a range saves no
# rounding error worth the values it cuts. Every w8a16 file measured chose min/max when all four candidates were tried
# (the zoo's Lite0 in TFLite and ONNX, mobilegan in TFLite), and on TFLite's reference 16x8 kernels the search took
# 349 s of the Lite0's 15-minute export.
W8A16_PERCENTILES = (100.0,)
CLEAR_GAIN = 0.25  # a clipped candidate must cut min/max's mean |Δp| by more than this share

Model = TypeVar("Model")


def from_extremes(mins: np.ndarray, maxs: np.ndarray, percentile: float) -> tuple[np.ndarray, np.ndarray]:
    """A tensor's range from its per-image extremes, stacked on axis 0 (other axes kept: per-channel ranges)."""
    mins, maxs = np.asarray(mins, dtype=np.float32), np.asarray(maxs, dtype=np.float32)
    if percentile >= 100:
        return mins.min(axis=0), maxs.max(axis=0)
    return np.percentile(mins, 100 - percentile, axis=0).astype(np.float32), np.percentile(maxs, percentile, axis=0).astype(np.float32)


def disagreement(probs: np.ndarray, reference: np.ndarray) -> float:
    """The share of decisions that differ from fp32's: each image's top-1 class for class probabilities (N, C), each
    pixel's lesion mask (probability >= 0.5) for a segmenter's lesion probabilities, whatever their channel axis."""
    if reference.ndim == 2:
        return float((probs.argmax(1) != reference.argmax(1)).mean())
    return float(((probs >= 0.5) != (reference >= 0.5)).mean())


def decisions(reference: np.ndarray) -> str:
    """What ``disagreement`` compares, for messages."""
    return "top-1" if reference.ndim == 2 else "mask pixel"


@dataclass
class RangeChoice:
    percentile: float
    scores: dict[str, dict[str, float]]  # per candidate: mean |Δp| and disagreement with fp32 (``decisions``)
    seconds: float
    measure: str = "top-1"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        chosen = self.scores[label(self.percentile)]
        return (
            f"activation ranges at the {label(self.percentile)} of per-image extremes "
            f"(mean |dp| {chosen['mean_abs_dp']:.4f}, {self.measure} disagreement {chosen['disagreement']:.1%} on the calibration images)"
        )


def candidates(quant: str) -> tuple[float, ...]:
    """The percentiles ``choose`` tries for a quant mode."""
    return W8A16_PERCENTILES if quant == "w8a16" else PERCENTILES


def label(percentile: float) -> str:
    return "min/max" if percentile >= 100 else f"p{percentile:g}"


def choose(
    build: Callable[[float], Model],
    predict: Callable[[Model], np.ndarray],
    reference: np.ndarray,
    percentiles: Sequence[float] = PERCENTILES,
) -> tuple[float, Model, RangeChoice]:
    """The percentile whose all-int8 model is closest to ``reference`` (fp32 probabilities), and that model.

    The first candidate (the widest range) is kept unless another is closer by more than CLEAR_GAIN.
    """
    started = time.time()
    models, errors, scores = [], [], {}
    for percentile in percentiles:
        model = build(percentile)
        probs = predict(model)
        error = float(np.abs(probs - reference).mean())
        models.append(model)
        errors.append(error)
        scores[label(percentile)] = {
            "mean_abs_dp": round(error, 6),
            "disagreement": round(disagreement(probs, reference), 6),
        }
    best = int(np.argmin(errors))
    if errors[best] > (1 - CLEAR_GAIN) * errors[0]:
        best = 0
    return percentiles[best], models[best], RangeChoice(percentiles[best], scores, round(time.time() - started, 1), decisions(reference))
