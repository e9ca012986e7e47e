"""The class a classifier names: plain argmax, or the balanced rule chosen on validation data.

HAM10000 is two-thirds nevi. The argmax of calibrated probabilities is the rule that maximises
accuracy, so it names the rare classes (melanoma among them) too seldom for balanced accuracy, the
ISIC challenge's metric. For balanced accuracy the Bayes rule is ``argmax p(c|x) / prior(c)``.
A class-weighted loss has already divided by part of the prior, so the rest, ``prior ** tau``, is
chosen on validation data (post-hoc logit adjustment, Menon et al., ICLR 2021).

Only the named class moves. The probabilities stay calibrated: ECE, AUC, the malignant score and the
referral threshold (``edgederm.operating_point``) are all read from them unchanged. The rule is
stored in the ModelSpec (``decision``), so it travels into every exported artifact; a client that
reads only the output tensor gets the plain argmax.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

TAUS = tuple(round(t, 2) for t in np.linspace(0.0, 1.0, 21))
# A tau must beat argmax by this much balanced accuracy (averaged with its grid neighbours, so one
# lucky point on a small validation split does not decide) before the rule leaves argmax.
MIN_GAIN = 0.005
RULES = ("balanced", "argmax")


def offsets(decision: Mapping[str, Any] | None) -> np.ndarray | None:
    values = (decision or {}).get("offsets")
    return None if not values else np.asarray(values, np.float64)


def decide(decision: Mapping[str, Any] | None, probs: np.ndarray) -> np.ndarray:
    """Class indices for (N, C) probabilities under ``decision`` (a ModelSpec's; {} = argmax)."""
    probs = np.asarray(probs, np.float64)
    shift = offsets(decision)
    if shift is None:
        return probs.argmax(axis=-1)
    if shift.shape != probs.shape[-1:]:
        raise ValueError(f"the decision has {shift.size} class offsets, the probabilities {probs.shape[-1]} classes")
    return (np.log(np.clip(probs, 1e-12, None)) + shift).argmax(axis=-1)


def class_offsets(prior: Sequence[float], tau: float) -> list[float]:
    """``-tau * log(prior)``, shifted so the smallest offset is 0 (only differences matter)."""
    log_prior = np.log(np.clip(np.asarray(prior, np.float64), 1e-12, None))
    shift = -tau * log_prior
    return [round(float(v), 6) for v in shift - shift.min()]


def prior_from_counts(counts: Mapping[str, int], class_names: Sequence[str]) -> list[float]:
    """Class frequencies of the training split; a class it lacks counts as one image."""
    values = np.array([max(int(counts.get(name, 0)), 1) for name in class_names], np.float64)
    return [float(v) for v in values / values.sum()]


def choose_decision(labels: np.ndarray, probs: np.ndarray, prior: Sequence[float], class_names: Sequence[str]) -> dict[str, Any]:
    """The balanced rule's tau with the best smoothed validation balanced accuracy; {} if argmax is as good."""
    from .metrics import balanced_accuracy

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


def describe(decision: Mapping[str, Any] | None) -> str:
    if offsets(decision) is None:
        return "argmax"
    if "tau" not in decision:
        return "class offsets"
    return f"balanced (tau {float(decision['tau']):.2f}, chosen on {decision.get('chosen_on', 'validation')})"


def set_decision(run_dir, data: str | None, split: str | None, rule: str = "balanced", quiet: bool = False) -> dict[str, Any]:
    """Choose the rule on ``data`` (normally the run's validation split) and store it in spec.json."""
    from .errors import DataError, UsageError
    from .run_choice import labelled_probs, load_classifier_run, store_spec

    if rule not in RULES:
        raise UsageError(f"--rule must be one of {RULES}, got {rule!r}")
    predictor = load_classifier_run(run_dir, "a decision rule")
    spec = predictor.spec
    decision: dict[str, Any] = {}
    if rule == "balanced":
        counts = spec.training.get("data", {}).get("splits", {}).get("train")
        if not counts:
            raise DataError("spec.json does not record the training split's class counts", path=Path(run_dir) / "spec.json")
        labels, probs, where = labelled_probs(predictor, run_dir, data, split, quiet=quiet)
        decision = choose_decision(labels, probs, prior_from_counts(counts, spec.class_names), spec.class_names)
        if decision:
            decision["chosen_on"] = where
    spec.decision = decision
    store_spec(run_dir, spec)
    return decision
