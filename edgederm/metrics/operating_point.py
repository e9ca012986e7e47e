"""The screening operating point: a malignant-score threshold chosen for a target sensitivity.

A screening app must say "refer" for nearly every malignant lesion, so the threshold is set on
validation data where malignant lesions (mel, bcc, akiec among the model's classes) reach the
target sensitivity, and stored in the ModelSpec. ``verify`` re-measures sensitivity and
specificity at the *stored* threshold for every artifact, because quantization can move what a
threshold means even when the AUC holds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.spec import ModelSpec
from ..runtime.readout import malignant_classes, malignant_score

DEFAULT_TARGET_SENSITIVITY = 0.90


def _malignant_truth(spec: ModelSpec, labels: np.ndarray) -> np.ndarray:
    columns = [spec.class_names.index(c) for c in malignant_classes(spec)]
    return np.isin(np.asarray(labels), columns)


def choose_operating_point(
    spec: ModelSpec, labels: np.ndarray, probs: np.ndarray, target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY
) -> dict[str, Any]:
    """The highest threshold whose sensitivity on (labels, probs) is >= the target; {} if no malignant case."""
    if not 0 < target_sensitivity <= 1:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target_sensitivity}")
    truth = _malignant_truth(spec, labels)
    if not truth.any() or truth.all():
        return {}
    scores = malignant_score(spec, probs)
    positives = np.sort(scores[truth])[::-1]
    needed = int(np.ceil(target_sensitivity * len(positives)))  # malignant cases that must score >= threshold
    highest = float(positives[needed - 1])
    # Any threshold in (next lower score, highest] gives the same validation sensitivity and specificity;
    # the middle of that gap leaves a margin for unseen images and for quantized artifacts' small shifts.
    below = scores[scores < highest]
    threshold = (float(below.max()) + highest) / 2 if below.size else highest
    point = {
        "classes": malignant_classes(spec),
        "threshold": threshold,
        "target_sensitivity": float(target_sensitivity),
        "chosen_on": "validation",
        "n_malignant": int(truth.sum()),
        "n_benign": int((~truth).sum()),
    }
    point.update(sensitivity_specificity(spec, labels, probs, threshold))
    return point


def sensitivity_specificity(spec: ModelSpec, labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, float | None]:
    truth = _malignant_truth(spec, labels)
    flagged = malignant_score(spec, probs) >= threshold
    return {
        "sensitivity": float(flagged[truth].mean()) if truth.any() else None,
        "specificity": float((~flagged[~truth]).mean()) if (~truth).any() else None,
    }
