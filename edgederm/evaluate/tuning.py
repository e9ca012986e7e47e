"""Choosing a classifier run's decision rule and screening operating point on labelled data.

``edgederm decision`` and ``edgederm operating-point`` predict the run's validation split (or other
labelled data), choose with ``edgederm.metrics.decision`` / ``edgederm.metrics.operating_point`` and
store the choice in the run's spec.json, from where every export carries it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core import atomic
from ..core.errors import DataError, UsageError
from ..core.spec import ModelSpec
from ..data.selection import resolve_inputs
from ..metrics.decision import RULES, add_floor, choose_decision, parse_floor, training_prior
from ..metrics.operating_point import choose_operating_point
from ..runtime import Predictor
from .predict import labelled_rows, run_predictor


def load_classifier_run(run_dir: str | Path, purpose: str) -> Predictor:
    """The run's torch Predictor; a one-line error for anything that is not a classifier's run directory."""
    run_dir = Path(run_dir)
    if not (run_dir / "spec.json").is_file():
        raise UsageError("not a run directory (no spec.json)", fix="give the run directory made by `edgederm train classify`")
    predictor = Predictor.load(run_dir)
    if predictor.spec.task != "classification":
        raise UsageError(f"{purpose} is for classifiers", fix="give a classifier's run directory")
    return predictor


def labelled_probs(predictor: Predictor, run_dir: str | Path, data: str, split: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(labels, probabilities, where) for the labelled images of ``data`` (``split`` of the run's splits.csv)."""
    predictions = run_predictor(predictor, resolve_inputs(data, [], split, Path(run_dir) / "splits.csv"))
    keep, labels = labelled_rows(predictions)
    # the run's own split is named, not the path of the data on this machine (the spec travels in every artifact)
    where = {"val": "validation", "train": "the training split", "test": "the test split"}[split] if split else data
    return labels, predictions.probs[keep], where


def store_spec(run_dir: str | Path, spec: ModelSpec) -> None:
    atomic.write_text(Path(run_dir) / "spec.json", spec.to_json())


def set_decision(
    run_dir: str | Path, data: str | None, split: str | None, rule: str = "balanced", min_sensitivity: str | None = None
) -> dict[str, Any]:
    """Choose the rule on ``data`` (normally the run's validation split) and store it in spec.json.

    ``min_sensitivity`` (``CLASS=SENSITIVITY``) then raises that class's offset until the data reaches it.
    """
    if rule not in RULES:
        raise UsageError(f"--rule must be one of {RULES}, got {rule!r}")
    predictor = load_classifier_run(run_dir, "a decision rule")
    spec = predictor.spec
    floor = None if min_sensitivity is None else parse_floor(min_sensitivity, spec.class_names)
    decision: dict[str, Any] = {}
    if rule == "balanced" or floor:
        labels, probs, where = labelled_probs(predictor, run_dir, data, split)
        if rule == "balanced":
            decision = choose_decision(labels, probs, training_prior(spec, source=Path(run_dir) / "spec.json"), spec.class_names)
        if floor:
            decision = add_floor(decision, labels, probs, spec.class_names, *floor)
        if decision:
            decision["chosen_on"] = where
    spec.decision = decision
    store_spec(run_dir, spec)
    return decision


def set_operating_point(run_dir: str | Path, data: str, split: str | None, target_sensitivity: float) -> dict[str, Any]:
    """Choose the threshold on ``data`` (normally the run's validation split) and store it in spec.json."""
    predictor = load_classifier_run(run_dir, "an operating point")
    labels, probs, where = labelled_probs(predictor, run_dir, data, split)
    point = choose_operating_point(predictor.spec, labels, probs, target_sensitivity)
    if not point:
        raise DataError("the data has no malignant (or no benign) lesion to set a threshold on", path=data)
    point["chosen_on"] = where
    predictor.spec.operating_point = point
    store_spec(run_dir, predictor.spec)
    return point
