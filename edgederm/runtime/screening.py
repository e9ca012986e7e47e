"""The screening decision an app shows: refer to a clinician, or not, and why (numpy only).

The thresholds come from the ModelSpec's ``operating_point``, chosen on validation data for a
target sensitivity (``edgederm.operating_point``). A model without one falls back to refer-if-a-
malignant-class-is-top-1, which is stated in the reason so nobody mistakes it for a tuned point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..labels import MALIGNANT_CODES, full_name
from ..spec import ModelSpec

DEFAULT_UNCERTAIN_BELOW = 0.5


@dataclass(frozen=True)
class Screening:
    refer: bool
    reason: str
    malignant_score: float  # summed probability of the malignant classes the model knows
    threshold: float | None
    top: list[tuple[str, str, float]]  # (code, full name, probability), best first


def malignant_classes(spec: ModelSpec) -> list[str]:
    chosen = spec.operating_point.get("classes")
    return [c for c in (chosen or sorted(MALIGNANT_CODES)) if c in spec.class_names]


def malignant_score(spec: ModelSpec, probs: np.ndarray) -> np.ndarray:
    """Summed probability of the malignant classes, for one (C,) or many (N, C) rows."""
    probs = np.asarray(probs, dtype=np.float64)
    columns = [spec.class_names.index(c) for c in malignant_classes(spec)]
    return probs[..., columns].sum(axis=-1) if columns else np.zeros(probs.shape[:-1])


def screen(spec: ModelSpec, probs: np.ndarray, k: int = 3) -> Screening:
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    order = np.argsort(-probs)[:k]
    top = [(spec.class_names[i], full_name(spec.class_names[i]), float(probs[i])) for i in order]
    score = float(malignant_score(spec, probs))
    threshold = spec.operating_point.get("threshold")
    uncertain_below = float(spec.operating_point.get("uncertain_below", DEFAULT_UNCERTAIN_BELOW))
    if threshold is not None and score >= float(threshold):
        target = spec.operating_point.get("target_sensitivity")
        aim = f" (set for {target:.0%} sensitivity on validation data)" if target else ""
        return Screening(True, f"malignant score {score:.2f} >= threshold {float(threshold):.2f}{aim}", score, float(threshold), top)
    if threshold is None and top[0][0] in MALIGNANT_CODES:
        return Screening(True, f"top class is {top[0][1]} (no tuned threshold in this model)", score, None, top)
    if top[0][2] < uncertain_below:
        return Screening(True, f"uncertain: top probability {top[0][2]:.2f} < {uncertain_below:.2f}", score, threshold, top)
    return Screening(False, "below the referral threshold", score, threshold, top)
