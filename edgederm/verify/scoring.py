"""The numbers verify records for one set of outputs: task metrics, and agreement with the reference."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..metrics import classification_metrics
from ..operating_point import sensitivity_specificity
from ..spec import ModelSpec


def score(spec: ModelSpec, labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Flat metrics (numbers a guard can name) plus the confusion matrix."""
    result = classification_metrics(labels, probs, spec.class_names)
    flat: dict[str, Any] = {
        "accuracy": result.accuracy,
        "balanced_accuracy": result.balanced_accuracy,
        "macro_auc": result.macro_auc,
        "ece": result.ece,
        "mel_sensitivity": result.melanoma_sensitivity,
    }
    for name, per_class in result.per_class.items():
        flat[f"sensitivity_{name}"] = per_class.sensitivity
    if spec.operating_point.get("threshold") is not None:
        at = sensitivity_specificity(spec, labels, probs, spec.operating_point["threshold"])
        flat["op_sensitivity"], flat["op_specificity"] = at["sensitivity"], at["specificity"]
    flat["confusion_matrix"] = result.confusion_matrix
    return flat


def agreement(task: str, reference: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    if task == "classification":
        diff = np.abs(probs.astype(np.float64) - reference)
        return {
            "top1": float((probs.argmax(1) == reference.argmax(1)).mean()),
            "max_abs_prob_diff": float(diff.max()),
            "mean_abs_prob_diff": float(diff.mean()),
        }
    raise ValueError(f"no agreement measure for task {task!r}")
