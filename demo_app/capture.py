"""One capture: photo -> Preprocess.fit -> classifier -> screening (+ segmenter mask), timed.

Kivy-free and torch-free: the phone runs exactly this, and the tests drive it without a display.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from edgederm.core.errors import ModelError
from edgederm.runtime import Predictor
from edgederm.runtime.readout import Screening, screen

from .android_tflite import load_predictor
from .contours import area_fraction


@dataclass(frozen=True)
class CaptureResult:
    screening: Screening
    probabilities: tuple[float, ...]  # in class_names order
    class_names: tuple[str, ...]
    mask: np.ndarray | None  # uint8 0/255 at the photo's size, None without a segmenter
    lesion_area_fraction: float | None
    classifier_ms: float  # Preprocess.fit + classifier
    segmenter_ms: float | None

    @property
    def latency_ms(self) -> float:
        return self.classifier_ms + (self.segmenter_ms or 0.0)


class CapturePipeline:
    def __init__(self, classifier: Predictor, segmenter: Predictor | None = None):
        if classifier.spec.task != "classification":
            raise ModelError(
                f"the classifier is a {classifier.spec.task} model", path=classifier.path, fix="choose a classification artifact"
            )
        if segmenter is not None and segmenter.spec.task != "segmentation":
            raise ModelError(f"the segmenter is a {segmenter.spec.task} model", path=segmenter.path, fix="choose a segmentation artifact")
        self.classifier = classifier
        self.segmenter = segmenter

    @classmethod
    def load(cls, classifier: str | Path, segmenter: str | Path | None = None, *, threads: int | None = None) -> CapturePipeline:
        return cls(
            load_predictor(classifier, threads=threads),
            load_predictor(segmenter, threads=threads) if segmenter else None,
        )

    def run(self, image: Image.Image) -> CaptureResult:
        if image.mode != "RGB":  # convert() copies even an RGB photo
            image = image.convert("RGB")
        spec = self.classifier.spec
        start = time.perf_counter()
        probs = np.asarray(self.classifier.predict_pixels(spec.preprocess.fit(image)[None])[0], dtype=np.float64)
        classifier_ms = (time.perf_counter() - start) * 1e3
        mask, segmenter_ms = self._segment(image) if self.segmenter is not None else (None, None)
        return CaptureResult(
            screening=screen(spec, probs),
            probabilities=tuple(float(p) for p in probs),
            class_names=tuple(spec.class_names),
            mask=mask,
            lesion_area_fraction=None if mask is None else area_fraction(mask),
            classifier_ms=classifier_ms,
            segmenter_ms=segmenter_ms,
        )

    def _segment(self, image: Image.Image) -> tuple[np.ndarray, float]:
        predict_mask = getattr(self.segmenter, "predict_mask", None)
        if predict_mask is None:
            raise ModelError(
                "this edgederm runtime cannot run segmenters yet (no Predictor.predict_mask)",
                path=self.segmenter.path,
                fix="update edgederm, or run without --segmenter",
            )
        start = time.perf_counter()
        mask = np.asarray(predict_mask(image))
        elapsed = (time.perf_counter() - start) * 1e3
        if mask.shape != (image.height, image.width):
            raise ModelError(
                f"the segmenter returned a {mask.shape} mask for a {image.width}x{image.height} photo",
                path=self.segmenter.path,
                fix="re-export the segmenter with this edgederm version",
            )
        return mask.astype(np.uint8, copy=False), elapsed
