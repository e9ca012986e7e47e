"""The balanced decision rule: argmax of p / prior**tau, tau chosen on validation data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgederm.cli import main
from edgederm.core.spec import ModelSpec
from edgederm.metrics import classification_metrics
from edgederm.metrics.decision import MIN_GAIN, choose_decision, class_offsets, prior_from_counts
from edgederm.runtime.readout import decide, describe

NAMES = ["mel", "nv", "vasc"]
PRIOR = np.array([0.15, 0.80, 0.05])


def _bayes_posteriors(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from PRIOR and the exact posteriors of overlapping 1-D Gaussian classes (perfectly calibrated)."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, n, p=PRIOR)
    means = np.array([1.0, 0.0, 2.0])
    x = rng.normal(means[labels], 1.0)
    joint = PRIOR * np.exp(-0.5 * (x[:, None] - means) ** 2)
    return labels, joint / joint.sum(1, keepdims=True)


def test_an_empty_decision_is_argmax_and_offsets_move_borderline_images_to_the_rarer_class():
    probs = np.array([[0.45, 0.55, 0.0], [0.1, 0.9, 0.0]])
    assert decide({}, probs).tolist() == [1, 1] == decide(None, probs).tolist()
    rule = {"offsets": class_offsets(PRIOR, 1.0)}
    assert decide(rule, probs).tolist() == [0, 1]  # 0.45/0.15 > 0.55/0.80; 0.1/0.15 < 0.9/0.80
    with pytest.raises(ValueError, match="2 class offsets"):
        decide({"offsets": [0.0, 1.0]}, probs)


def test_class_offsets_favour_rare_classes_and_vanish_at_tau_zero():
    offsets = class_offsets(PRIOR, 0.5)
    assert min(offsets) == 0.0 and offsets[1] == 0.0  # the commonest class is the zero point
    assert offsets[2] > offsets[0] > 0
    assert offsets[2] == pytest.approx(0.5 * np.log(0.80 / 0.05), abs=1e-6)
    assert class_offsets(PRIOR, 0.0) == [0.0, 0.0, 0.0]
    assert prior_from_counts({"mel": 3, "nv": 16}, NAMES) == pytest.approx([3 / 20, 16 / 20, 1 / 20])  # a missing class counts once


def test_on_calibrated_imbalanced_data_the_chosen_rule_beats_argmax_on_unseen_data():
    val_labels, val_probs = _bayes_posteriors(3000, seed=0)
    decision = choose_decision(val_labels, val_probs, PRIOR, NAMES)
    # For exact posteriors the balanced-accuracy Bayes rule is tau = 1.
    assert decision["rule"] == "balanced" and decision["tau"] >= 0.6
    assert decision["balanced_accuracy"]["balanced"] > decision["balanced_accuracy"]["argmax"] + MIN_GAIN
    test_labels, test_probs = _bayes_posteriors(3000, seed=1)
    plain = classification_metrics(test_labels, test_probs, NAMES)
    balanced = classification_metrics(test_labels, test_probs, NAMES, decision=decision)
    assert balanced.balanced_accuracy > plain.balanced_accuracy + MIN_GAIN
    assert balanced.per_class["mel"].sensitivity > plain.per_class["mel"].sensitivity
    # Only the named class moves: the probability-based figures are the same.
    assert balanced.ece == plain.ece and balanced.macro_auc == plain.macro_auc
    assert balanced.decision == describe(decision) and plain.decision == "argmax"
    # Under the rule, the argmax figures are reported beside it, and they are plain argmax's own.
    assert plain.argmax is None
    assert balanced.argmax == {
        "accuracy": plain.accuracy,
        "balanced_accuracy": plain.balanced_accuracy,
        "melanoma_sensitivity": plain.melanoma_sensitivity,
    }


def test_argmax_stays_when_the_balanced_rule_gains_nothing():
    labels, probs = _bayes_posteriors(600, seed=2)
    assert choose_decision(labels, probs, [1 / 3, 1 / 3, 1 / 3], NAMES) == {}  # a flat prior gives zero offsets
    assert choose_decision(np.zeros(10, int), probs[:10], PRIOR, NAMES) == {}  # one class: nothing to balance


def test_the_decision_command_stores_the_rule_and_metrics_follow_it(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    spec = ModelSpec.load(run / "spec.json")
    assert spec.decision == {} or spec.decision["rule"] == "balanced"  # training chooses one (or argmax) on its own
    data = spec.training["recipe"]["data"]
    assert main(["decision", str(run), "--rule", "argmax", "--quiet"]) == 0
    assert ModelSpec.load(run / "spec.json").decision == {}
    assert main(["decision", str(run), "--quiet"]) == 2  # balanced needs labelled data
    assert main(["decision", str(run), "--data", data, "--split", "val", "--quiet"]) == 0
    stored = ModelSpec.load(run / "spec.json").decision
    if stored:
        assert stored["chosen_on"] == f"{data} [val]" and len(stored["offsets"]) == len(spec.class_names)
    out = tmp_path / "eval"
    assert main(["evaluate", str(run), "--data", data, "--split", "val", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["decision"] == describe(stored)
    assert (metrics["argmax"] is not None) == bool(stored) == ("(arg-max)" in (out / "report.md").read_text())
