"""The one readout: what a model's output means, in numpy only.

Every consumer of a prediction (``edgederm predict``, the metrics, ``verify``, segment-then-classify
and the demo app) calls these functions, so the same artifact and the same photo name the same class
and draw the same mask everywhere:

- ``decide``: the named class under the ModelSpec's ``decision`` rule (argmax, or the balanced rule
  chosen on validation data; see ``edgederm.metrics.decision``);
- ``malignant_score`` and ``screen``: the summed probability of the malignant classes and the
  refer / no-referral call at the ModelSpec's ``operating_point`` (``edgederm.metrics.operating_point``).
  A model without a tuned threshold refers when its named class is malignant, and says so;
- ``lesion_probabilities`` and ``lesion_mask``: a segmenter's output as a cleaned mask at the
  photo's own size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.labels import MALIGNANT_CODES, full_name
from ..core.spec import ModelSpec
from .postprocess import postprocess_mask

DEFAULT_UNCERTAIN_BELOW = 0.5


# --------------------------------------------------------------------------- the named class


def offsets(decision: Mapping[str, Any] | None) -> np.ndarray | None:
    values = (decision or {}).get("offsets")
    return None if not values else np.asarray(values, np.float64)


def decide(decision: Mapping[str, Any] | None, probs: np.ndarray) -> np.ndarray:
    """Class indices for (N, C) (or one (C,)) probabilities under ``decision`` (a ModelSpec's; {} = argmax)."""
    probs = np.asarray(probs, np.float64)
    shift = offsets(decision)
    if shift is None:
        return probs.argmax(axis=-1)
    if shift.shape != probs.shape[-1:]:
        raise ValueError(f"the decision has {shift.size} class offsets, the probabilities {probs.shape[-1]} classes")
    return (np.log(np.clip(probs, 1e-12, None)) + shift).argmax(axis=-1)


def describe(decision: Mapping[str, Any] | None) -> str:
    if offsets(decision) is None:
        return "argmax"
    floor = decision.get("floor")
    if "tau" in decision:
        text = f"balanced (tau {float(decision['tau']):.2f}, chosen on {decision.get('chosen_on', 'validation')})"
    else:
        text = "argmax" if floor else "class offsets"
    if floor:
        text += f", {floor['class']} named at >= {float(floor['sensitivity']):.0%} sensitivity on {decision.get('chosen_on', 'validation')}"
    return text


def predicted_class(spec: ModelSpec, probs: np.ndarray) -> str:
    """The class code one image's (C,) probabilities name under the spec's rule."""
    return spec.class_names[int(decide(spec.decision, np.asarray(probs, np.float64).reshape(-1)))]


# --------------------------------------------------------------------------- screening


@dataclass(frozen=True)
class Screening:
    refer: bool
    reason: str
    malignant_score: float  # summed probability of the malignant classes the model knows
    threshold: float | None
    top: list[tuple[str, str, float]]  # (code, full name, probability), most probable first
    predicted: str  # the class code the model names under its decision rule (may differ from top[0])

    @property
    def predicted_name(self) -> str:
        return full_name(self.predicted)


def malignant_classes(spec: ModelSpec) -> list[str]:
    chosen = spec.operating_point.get("classes")
    return [c for c in (chosen or sorted(MALIGNANT_CODES)) if c in spec.class_names]


def malignant_score(spec: ModelSpec, probs: np.ndarray) -> np.ndarray:
    """Summed probability of the malignant classes, for one (C,) or many (N, C) rows."""
    probs = np.asarray(probs, dtype=np.float64)
    columns = [spec.class_names.index(c) for c in malignant_classes(spec)]
    return probs[..., columns].sum(axis=-1) if columns else np.zeros(probs.shape[:-1])


def screen(spec: ModelSpec, probs: np.ndarray, k: int = 3) -> Screening:
    """One image's (C,) probabilities -> the named class, the malignant score and refer / no referral."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    order = np.argsort(-probs)[:k]
    top = [(spec.class_names[i], full_name(spec.class_names[i]), float(probs[i])) for i in order]
    predicted = predicted_class(spec, probs)
    score = float(malignant_score(spec, probs))
    threshold = spec.operating_point.get("threshold")
    uncertain_below = float(spec.operating_point.get("uncertain_below", DEFAULT_UNCERTAIN_BELOW))

    def result(refer: bool, reason: str, limit: float | None = threshold) -> Screening:
        return Screening(refer, reason, score, None if limit is None else float(limit), top, predicted)

    if threshold is not None and score >= float(threshold):
        target = spec.operating_point.get("target_sensitivity")
        aim = f" (set for {target:.0%} sensitivity on validation data)" if target else ""
        return result(True, f"malignant score {score:.2f} >= threshold {float(threshold):.2f}{aim}")
    if threshold is None and predicted in MALIGNANT_CODES:
        which = "top" if predicted == top[0][0] else "named"
        return result(True, f"{which} class is {full_name(predicted)} (no tuned threshold in this model)")
    if top[0][2] < uncertain_below:
        return result(True, f"uncertain: top probability {top[0][2]:.2f} < {uncertain_below:.2f}")
    return result(False, "below the referral threshold")


# --------------------------------------------------------------------------- lesion mask


def lesion_probabilities(output: np.ndarray) -> np.ndarray:
    """A segmenter's ``predict_pixels`` batch as lesion probabilities (N, S, S), whatever the channel axis.

    ``predict_pixels`` returns probabilities from every backend: the torch backend applies the
    sigmoid to the weights' ``mask_logits``, exported graphs end in it (``mask_probabilities``).
    """
    output = np.asarray(output, np.float32)
    if output.ndim == 4:
        output = output[:, 0] if output.shape[1] == 1 else output[..., 0]
    return output


def lesion_mask(probabilities: np.ndarray, spec: ModelSpec, source_size: tuple[int, int]) -> np.ndarray:
    """(S, S) lesion probabilities -> threshold, the spec's post-processing, then back to (w, h): uint8 0/255 (h, w)."""
    mask = postprocess_mask(probabilities, spec.postprocess)
    return spec.preprocess.unfit_mask(mask.astype(np.uint8) * 255, source_size)
