"""The class a classifier names: plain argmax, or the balanced rule chosen on validation data.

HAM10000 is two-thirds nevi. The argmax of calibrated probabilities is the rule that maximises
accuracy, so it names the rare classes (melanoma among them) too seldom for balanced accuracy, the
ISIC challenge's metric. For balanced accuracy the Bayes rule is ``argmax p(c|x) / prior(c)``.
A class-weighted loss has already divided by part of the prior, so the rest, ``prior ** tau``, is
chosen on validation data (post-hoc logit adjustment, Menon et al., ICLR 2021).

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

from ..core.errors import DataError
from ..core.spec import ModelSpec
from ..runtime.readout import decide
from . import balanced_accuracy

TAUS = tuple(round(t, 2) for t in np.linspace(0.0, 1.0, 21))
# A tau must beat argmax by this much balanced accuracy (averaged with its grid neighbours, so one
# lucky point on a small validation split does not decide) before the rule leaves argmax.
MIN_GAIN = 0.005
RULES = ("balanced", "argmax")


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
