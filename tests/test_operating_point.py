"""The referral threshold: chosen on validation data for a target sensitivity, with a margin."""

from __future__ import annotations

import numpy as np
import pytest

from edgederm.core.preprocess import Preprocess
from edgederm.core.spec import ModelSpec
from edgederm.metrics.operating_point import choose_operating_point, sensitivity_specificity
from edgederm.runtime.readout import malignant_score, screen

SPEC = ModelSpec("classification", "x", ["mel", "nv", "bcc"], Preprocess(input_size=32))


def probs_for(scores: list[float]) -> np.ndarray:
    """Rows whose malignant score (mel + bcc) is the given value."""
    return np.array([[s / 2, 1 - s, s / 2] for s in scores])


def test_threshold_reaches_the_target_and_sits_mid_gap():
    labels = np.array([0, 0, 0, 0, 2, 1, 1, 1])  # 5 malignant (mel, bcc), 3 naevi
    scores = [0.95, 0.9, 0.8, 0.6, 0.3, 0.2, 0.1, 0.05]
    point = choose_operating_point(SPEC, labels, probs_for(scores), target_sensitivity=0.8)
    # 4 of 5 malignant must be flagged: the 4th highest malignant score is 0.6, the next lower score 0.3.
    assert point["threshold"] == pytest.approx(0.45)
    assert point["sensitivity"] == 0.8 and point["specificity"] == 1.0
    assert point["classes"] == ["bcc", "mel"] and point["n_malignant"] == 5


def test_full_sensitivity_keeps_every_malignant_case():
    labels = np.array([0, 2, 1, 1])
    point = choose_operating_point(SPEC, labels, probs_for([0.7, 0.2, 0.4, 0.1]), target_sensitivity=1.0)
    assert point["sensitivity"] == 1.0 and point["threshold"] == pytest.approx(0.15)
    assert sensitivity_specificity(SPEC, labels, probs_for([0.7, 0.2, 0.4, 0.1]), point["threshold"])["specificity"] == 0.5


def test_no_malignant_case_gives_no_point():
    assert choose_operating_point(SPEC, np.array([1, 1]), probs_for([0.1, 0.2])) == {}


def test_screen_uses_the_stored_threshold():
    spec = ModelSpec("classification", "x", ["mel", "nv", "bcc"], Preprocess(input_size=32), operating_point={"threshold": 0.3})
    row = probs_for([0.35])[0]
    assert malignant_score(spec, row) == pytest.approx(0.35)
    result = screen(spec, row)
    assert result.refer and "threshold 0.30" in result.reason and result.top[0][0] == "nv"
    assert not screen(spec, probs_for([0.2])[0]).refer
