"""The class a classifier names: plain argmax, or the balanced rule chosen on validation data.

HAM10000 is two-thirds nevi. The argmax of calibrated probabilities is the rule that maximises
accuracy, so it names the rare classes (melanoma among them) too seldom for balanced accuracy, the
ISIC challenge's metric. For balanced accuracy the Bayes rule is ``argmax p(c|x) / prior(c)``.
A class-weighted loss has already divided by part of the prior, so the rest, ``prior ** tau``, is
chosen on validation data (post-hoc logit adjustment, Menon et al., ICLR 2021).

A screening aid may also need one class named often enough: ``add_floor`` raises that class's
offset, in small steps, until its sensitivity on the validation data reaches a floor (for melanoma,
the class a missed call costs most). It is chosen after the rule it sits on and stored with it.

Only the named class moves. The probabilities stay calibrated: ECE, AUC, the malignant score and the
referral threshold (``edgederm.metrics.operating_point``) are all read from them unchanged. The rule is
stored in the ModelSpec (``decision``), so it travels into every exported artifact; a client that
reads only the output tensor gets the plain argmax.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import DataError, UsageError
from ..core.spec import ModelSpec
from ..runtime.readout import decide
from . import balanced_accuracy

TAUS = tuple(round(t, 2) for t in np.linspace(0.0, 1.0, 21))
# A tau must beat argmax by this much balanced accuracy (averaged with its grid neighbours, so one
# lucky point on a small validation split does not decide) before the rule leaves argmax.
MIN_GAIN = 0.005
RULES = ("balanced", "argmax")
FLOOR_STEP = 0.05
FLOOR_MAX = 6.0  # a class named at e**6 = 400 times its probability's odds is past any useful floor


def class_offsets(prior: Sequence[float], tau: float) -> list[float]:
    """``-tau * log(prior)``, shifted so the smallest offset is 0 (only differences matter)."""
    log_prior = np.log(np.clip(np.asarray(prior, np.float64), 1e-12, None))
    shift = -tau * log_prior
    return [round(float(v), 6) for v in shift - shift.min()]


def prior_from_counts(counts: Mapping[str, int], class_names: Sequence[str]) -> list[float]:
    """Class frequencies of the training split; a class it lacks counts as one image."""
    values = np.array([max(int(counts.get(name, 0)), 1) for name in class_names], np.float64)
    return [float(v) for v in values / values.sum()]


def training_prior(spec: ModelSpec, source: str | Path | None = None) -> list[float]:
    """The class prior of the run's training split, from the counts its spec records."""
    counts = spec.training.get("data", {}).get("splits", {}).get("train")
    if not counts:
        raise DataError(
            "the model spec does not record the training split's class counts",
            path=source,
            fix="retrain the model with edgederm, or choose --rule argmax",
        )
    return prior_from_counts(counts, spec.class_names)


def choose_decision(labels: np.ndarray, probs: np.ndarray, prior: Sequence[float], class_names: Sequence[str]) -> dict[str, Any]:
    """The balanced rule's tau with the best smoothed validation balanced accuracy; {} if argmax is as good."""
    labels, probs = np.asarray(labels), np.asarray(probs, np.float64)
    if len(np.unique(labels)) < 2:
        return {}
    scores = [balanced_accuracy(labels, decide({"offsets": class_offsets(prior, tau)}, probs), len(class_names)) for tau in TAUS]
    smoothed = np.convolve(np.pad(scores, 1, mode="edge"), np.ones(3) / 3, mode="valid")
    best = int(np.argmax(smoothed))  # the first maximum: the smallest tau among ties
    if TAUS[best] == 0 or smoothed[best] - scores[0] < MIN_GAIN:
        return {}
    tau = TAUS[best]
    return {
        "rule": "balanced",
        "tau": tau,
        "offsets": class_offsets(prior, tau),
        "prior": [round(p, 6) for p in prior],
        "chosen_on": "validation",
        "balanced_accuracy": {"argmax": round(scores[0], 4), "balanced": round(scores[best], 4)},
        "n": int(len(labels)),
    }


def parse_floor(text: str, class_names: Sequence[str] | None = None) -> tuple[str, float]:
    """``"mel=0.75"`` -> ("mel", 0.75); a one-line error for anything else."""
    code, _, value = text.partition("=")
    try:
        sensitivity = float(value)
    except ValueError:
        sensitivity = -1.0
    if not code or not 0 < sensitivity <= 1:
        raise UsageError(f"--min-sensitivity must be CLASS=SENSITIVITY with a sensitivity in (0, 1], got {text!r}", fix="e.g. mel=0.75")
    if class_names is not None and code not in class_names:
        raise UsageError(f"--min-sensitivity names {code!r}, which the model does not have", fix=f"one of {', '.join(class_names)}")
    return code, sensitivity


def add_floor(
    decision: Mapping[str, Any], labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str], code: str, sensitivity: float
) -> dict[str, Any]:
    """``decision`` with ``code``'s offset raised by the smallest step that names it at ``sensitivity`` on this data.

    A decision that already reaches the floor gains a zero step. One whose class is absent from the
    data is returned unchanged. Where even ``FLOOR_MAX`` falls short, that is stored, with ``reached: false``.
    """
    labels, probs = np.asarray(labels), np.asarray(probs, np.float64)
    index = list(class_names).index(code)
    positives = labels == index
    if not positives.any():
        return dict(decision)
    base = [float(v) for v in decision.get("offsets") or [0.0] * len(class_names)]

    def shifted(extra: float) -> list[float]:
        return [v + extra if i == index else v for i, v in enumerate(base)]

    def sensitivity_at(named: np.ndarray) -> float:
        return float((named[positives] == index).mean())

    before = decide({"offsets": base}, probs)
    for step in np.round(np.arange(0.0, FLOOR_MAX + FLOOR_STEP / 2, FLOOR_STEP), 6):
        extra = float(step)
        after = decide({"offsets": shifted(extra)}, probs) if extra else before
        if sensitivity_at(after) >= sensitivity:
            break  # the smallest step that reaches the floor; past FLOOR_MAX the last step is kept
    return {
        **decision,
        "rule": decision.get("rule", "argmax"),
        "chosen_on": decision.get("chosen_on", "validation"),
        "offsets": [round(v, 6) for v in shifted(extra)],
        "floor": {
            "class": code,
            "sensitivity": sensitivity,
            "extra_offset": extra,
            "reached": sensitivity_at(after) >= sensitivity,
            "val_sensitivity": {"before": round(sensitivity_at(before), 4), "after": round(sensitivity_at(after), 4)},
            "balanced_accuracy": {
                "before": round(balanced_accuracy(labels, before, len(class_names)), 4),
                "after": round(balanced_accuracy(labels, after, len(class_names)), 4),
            },
            "n": int(positives.sum()),
        },
    }


def describe_floor(floor: Mapping[str, Any]) -> str:
    """One line for a stored floor: its step, and sensitivity and balanced accuracy before and after."""
    sens, bma = floor["val_sensitivity"], floor["balanced_accuracy"]
    line = (
        f"{floor['class']} offset +{floor['extra_offset']:.2f}: sensitivity {sens['before']:.3f} -> {sens['after']:.3f} "
        f"({floor['n']} images), balanced accuracy {bma['before']:.3f} -> {bma['after']:.3f}"
    )
    return line if floor["reached"] else f"{line}; the floor is not reached even at +{floor['extra_offset']:.1f}"
