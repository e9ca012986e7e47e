"""Empirical bias correction for static int8, decided the same way for every format.

Quantizing a conv's weights and inputs shifts the mean of its output, channel by channel, and the
shifts add up through a deep network. Conv by conv in graph order, each format's mechanics
(``_onnx_bias``, ``_tflite_bias``, ``_pte_bias``) move the int32 bias so that the int8 model's mean output per
channel on calibration images, read where the next layer reads it (after the conv's ReLU6 and its
output's quantization), equals fp32's (Nagel et al., "Data-Free Quantization Through Weight
Equalization and Bias Correction", 2019, section 4.2; OpenVINO's FastBiasCorrection does the same).
One conv at a time, because correcting every conv from one pass over-corrects: each conv's shift
includes what the convs before it passed on (measured in ONNX: one pass took a MobileNetV3-Large
from 96% to 81% top-1 agreement with fp32).

Whether it helps is measured, not assumed: the correction is fitted on the even calibration images
and kept only if it brings the odd ones closer to fp32 (mean |Δp|) by more than MIN_GAIN. Measured
with 300 calibration images, on 150 ISIC 2017 val images against fp32: the Lite0 reference's mean
|Δp| fell 30% in ONNX and in TFLite (top-1 agreement 98.0% -> 99.3% in ONNX, 98.0% either way in
TFLite). Where ``_ranges`` finds a model range-sensitive (a clipped range clearly beats min/max),
``with_ranges`` judges every candidate range with and without the correction on the same held-out
images: the correction helps on some clipped ranges and ruins others (a MobileNetV3-Large trained on
ISIC 2017: 96% -> 79-89% agreement on its p95/p99 ranges), and the in-sample choice of range is not
the held-out one (a distilled MobileNetV3-Large: p90 was closest in-sample, p95 with the correction
closest held-out, 96.0% -> 98.0% agreement on the val images).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np

from ._ranges import PERCENTILES, RangeChoice, choose, label

FIT_IMAGES = 160  # per-channel means need few images, and each conv costs one pass over them
MIN_GAIN = 0.05  # share of mean |Δp| the correction must remove on the judging images
MIN_IMAGES = 8

Model = TypeVar("Model")
Shifts = dict[str, np.ndarray]  # per conv: the float shift of its output mean that its bias takes back


@dataclass
class BiasCorrection:
    applied: bool
    mean_abs_dp: dict[str, float]  # on the judging images, without ("off") and with ("on") the correction
    convs: int  # convs whose bias would move
    images: dict[str, int]  # fitted on / judged on
    seconds: float
    # Set where _ranges found the model range-sensitive: per candidate range, the held-out error without ("off")
    # and with ("on") the correction, and the range chosen (the correction's figures above are that range's).
    ranges: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if not self.images.get("judge"):
            return "bias correction not tried (too few calibration images)"
        verdict = "applied" if self.applied else "not applied"
        ranges = ""
        if self.ranges is not None:
            tried = ", ".join(f"{name} {row['off']:.4f}/{row['on']:.4f}" for name, row in self.ranges["candidates"].items())
            ranges = f"; ranges {self.ranges['chosen']} chosen on the held-out images (mean |dp| off/on: {tried})"
        return (
            f"bias correction {verdict}: mean |dp| {self.mean_abs_dp['off']:.4f} -> {self.mean_abs_dp['on']:.4f} "
            f"on {self.images['judge']} held-out calibration images ({self.convs} convs, {self.seconds:.0f} s){ranges}"
        )


def decide(
    int8: Model,
    inputs: Sequence[Any],
    reference: np.ndarray,
    fit: Callable[[Model, Sequence[Any]], Shifts],
    apply: Callable[[Model, Shifts], Model],
    predict: Callable[[Model, Sequence[Any]], np.ndarray],
    fit_images: int = FIT_IMAGES,
) -> tuple[Shifts, BiasCorrection]:
    """The shifts to apply (empty when not worth it) and the measurement behind the decision.

    ``reference`` holds fp32's probabilities on ``inputs``; ``fit`` fits shifts on some of them,
    ``apply`` returns a corrected copy, ``predict`` gives a model's probabilities; at most ``fit_images`` are fitted on.
    """
    started = time.time()
    if len(inputs) < MIN_IMAGES:
        return {}, BiasCorrection(False, {}, 0, {"fit": 0, "judge": 0}, 0.0)
    fit_inputs, judge, judge_reference = inputs[0::2][:fit_images], inputs[1::2], reference[1::2]
    shifts = fit(int8, fit_inputs)
    off = float(np.abs(predict(int8, judge) - judge_reference).mean())
    on = float(np.abs(predict(apply(int8, shifts), judge) - judge_reference).mean())
    applied = bool(shifts) and on < (1 - MIN_GAIN) * off
    images = {"fit": len(fit_inputs), "judge": len(judge)}
    result = BiasCorrection(applied, {"off": round(off, 6), "on": round(on, 6)}, len(shifts), images, round(time.time() - started, 1))
    return (shifts if applied else {}), result


def with_ranges(
    percentile: float,
    chosen: Model,
    build_at: Callable[[float], Model],
    inputs: Sequence[Any],
    reference: np.ndarray,
    fit: Callable[[Model, Sequence[Any]], Shifts],
    apply: Callable[[Model, Shifts], Model],
    predict: Callable[[Model, Sequence[Any]], np.ndarray],
    fit_images: int = FIT_IMAGES,
    percentiles: Sequence[float] = PERCENTILES,
) -> tuple[float, Model, Shifts, BiasCorrection]:
    """The activation ranges and bias correction together: (percentile, its uncorrected model, shifts, record).

    ``percentile`` and ``chosen`` are ``_ranges.choose``'s; ``build_at(percentile)`` quantizes at other ranges.
    Where ``choose`` kept min/max, only the correction is decided (the cheap path: one fit). Otherwise every
    candidate range is fitted and judged on the held-out images, widest first, and a narrower one (with or
    without its correction) replaces a wider one only if it is more than MIN_GAIN closer: clipping discards
    range that an image outside the calibration set may need.
    """
    if percentile >= 100 or len(inputs) < MIN_IMAGES:
        shifts, result = decide(chosen, inputs, reference, fit, apply, predict, fit_images)
        return percentile, chosen, (shifts if percentile >= 100 else {}), result
    started, best, candidates = time.time(), None, {}
    for candidate in sorted(percentiles, reverse=True):
        model = chosen if candidate == percentile else build_at(candidate)
        shifts, result = decide(model, inputs, reference, fit, apply, predict, fit_images)
        error = result.mean_abs_dp["on" if result.applied else "off"]
        candidates[label(candidate)] = {**result.mean_abs_dp, "applied": result.applied}
        if best is None or error < (1 - MIN_GAIN) * best[0]:
            best = (error, candidate, model, shifts, result)
    _, percentile, model, shifts, result = best
    result.ranges = {"chosen": label(percentile), "candidates": candidates}
    result.seconds = round(time.time() - started, 1)
    return percentile, model, shifts, result


def full_int8(
    build_at: Callable[[float], Model],
    inputs: Sequence[Any],
    reference: np.ndarray,
    fit: Callable[[Model, Sequence[Any]], Shifts],
    apply: Callable[[Model, Shifts], Model],
    predict: Callable[[Model, Sequence[Any]], np.ndarray],
    fit_images: int = FIT_IMAGES,
    percentiles: Sequence[float] = PERCENTILES,
) -> tuple[float, Model, RangeChoice, BiasCorrection]:
    """The all-int8 model with its activation ranges and bias correction chosen: (percentile, corrected model, records).

    ``build_at(percentile)`` quantizes every layer at those ranges; ``reference`` is fp32's probabilities on ``inputs``
    (the calibration images); ``fit``, ``apply`` and ``predict`` are the format's, as for ``decide``; ``percentiles``
    are the candidate ranges (``_ranges.candidates``).
    """
    build_at = functools.cache(build_at)  # with_ranges comes back to the candidates choose built
    percentile, chosen, range_choice = choose(build_at, lambda model: predict(model, inputs), reference, percentiles)
    percentile, chosen, shifts, correction = with_ranges(
        percentile, chosen, build_at, inputs, reference, fit, apply, predict, fit_images, percentiles
    )
    range_choice.percentile = percentile
    return percentile, apply(chosen, shifts), range_choice, correction
