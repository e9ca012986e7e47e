"""The balanced decision rule: argmax of p / prior**tau, tau chosen on validation data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgederm.cli import main
from edgederm.core.errors import UsageError
from edgederm.core.spec import ModelSpec
from edgederm.metrics import classification_metrics
from edgederm.metrics.decision import (
    FLOOR_MAX,
    FLOOR_STEP,
    MIN_GAIN,
    add_floor,
    choose_decision,
    class_offsets,
    parse_floor,
    prior_from_counts,
)
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
        assert stored["chosen_on"] == "validation" and len(stored["offsets"]) == len(spec.class_names)
    out = tmp_path / "eval"
    assert main(["evaluate", str(run), "--data", data, "--split", "val", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["decision"] == describe(stored)
    assert (metrics["argmax"] is not None) == bool(stored) == ("(arg-max)" in (out / "report.md").read_text())
    # A melanoma floor on top of the rule, chosen on the same split and described wherever the rule is
    assert main(["decision", str(run), "--data", data, "--split", "val", "--min-sensitivity", "mel=1.0", "--quiet"]) == 0
    floored = ModelSpec.load(run / "spec.json").decision
    assert floored["floor"]["class"] == "mel" and floored["floor"]["val_sensitivity"]["after"] == 1.0
    assert floored.get("tau") == stored.get("tau") and floored["chosen_on"] == "validation"
    assert main(["evaluate", str(run), "--data", data, "--split", "val", "--out", str(tmp_path / "eval2"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "eval2" / "metrics.json").read_text())
    assert metrics["decision"] == describe(floored) and metrics["per_class"]["mel"]["sensitivity"] == 1.0
    assert "named more readily still" in (tmp_path / "eval2" / "report.md").read_text()
    assert main(["decision", str(run), "--data", data, "--split", "val", "--min-sensitivity", "akiec=0.7", "--quiet"]) == 2


def test_a_floor_names_the_class_at_the_sensitivity_asked_with_the_smallest_step():
    val_labels, val_probs = _bayes_posteriors(3000, seed=0)
    plain = classification_metrics(val_labels, val_probs, NAMES)
    assert plain.per_class["mel"].sensitivity < 0.8
    decision = add_floor({}, val_labels, val_probs, NAMES, "mel", 0.8)
    floor = decision["floor"]
    assert floor["reached"] and floor["val_sensitivity"]["after"] >= 0.8 > floor["val_sensitivity"]["before"]
    assert floor["extra_offset"] > 0 and decision["offsets"] == [floor["extra_offset"], 0.0, 0.0]  # only mel moves
    one_step_less = {"offsets": [floor["extra_offset"] - FLOOR_STEP, 0.0, 0.0]}
    assert (decide(one_step_less, val_probs)[val_labels == 0] == 0).mean() < 0.8
    # It carries to unseen data, and the probability-based figures stay as they were.
    test_labels, test_probs = _bayes_posteriors(3000, seed=1)
    before = classification_metrics(test_labels, test_probs, NAMES)
    after = classification_metrics(test_labels, test_probs, NAMES, decision=decision)
    assert after.per_class["mel"].sensitivity > before.per_class["mel"].sensitivity + 0.1
    assert after.macro_auc == before.macro_auc
    assert after.decision == describe(decision) == "argmax, mel named at >= 80% sensitivity on validation"


def test_a_floor_on_the_balanced_rule_keeps_its_tau_and_adds_to_its_offset():
    labels, probs = _bayes_posteriors(3000, seed=0)
    balanced = choose_decision(labels, probs, PRIOR, NAMES)
    reached = (decide(balanced, probs)[labels == 0] == 0).mean()
    same = add_floor(balanced, labels, probs, NAMES, "mel", reached)  # already there: a zero step
    assert same["offsets"] == balanced["offsets"] and same["floor"]["extra_offset"] == 0.0
    higher = add_floor(balanced, labels, probs, NAMES, "mel", min(1.0, reached + 0.05))
    assert higher["tau"] == balanced["tau"] and higher["offsets"][1:] == balanced["offsets"][1:]
    assert higher["offsets"][0] > balanced["offsets"][0]
    assert describe(higher).startswith("balanced (tau") and describe(higher).endswith("sensitivity on validation")


def test_a_floor_out_of_reach_says_so_and_a_class_absent_from_the_data_changes_nothing():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[1e-15, 1.0, 0.0], [0.4, 0.6, 0.0], [0.1, 0.9, 0.0], [0.2, 0.8, 0.0]])
    floor = add_floor({}, labels, probs, NAMES, "mel", 1.0)["floor"]
    assert not floor["reached"] and floor["extra_offset"] == FLOOR_MAX and floor["val_sensitivity"]["after"] == 0.5
    assert add_floor({"offsets": [0.5, 0.0, 0.0]}, labels, probs, NAMES, "vasc", 0.9) == {"offsets": [0.5, 0.0, 0.0]}


@pytest.mark.parametrize("text", ["mel", "mel=", "mel=0", "mel=1.5", "=0.7", "mel=high", "akiec=0.7"])
def test_a_bad_floor_is_a_one_line_usage_error(text):
    with pytest.raises(UsageError, match="--min-sensitivity"):
        parse_floor(text, NAMES)
    assert parse_floor("vasc=0.5", NAMES) == ("vasc", 0.5)


def test_training_stores_the_floor_it_was_asked_for(tmp_path):
    from edgederm.training.classification import TrainConfig, train_classifier

    with pytest.raises(UsageError, match="--min-sensitivity"):
        TrainConfig(data="synthetic:40,seed=4", out=tmp_path / "bad", min_sensitivity="mel=2")
    common = dict(data="synthetic:60,seed=4", arch="mobilenetv3_small_100", img_size=64, mode="head", epochs=1, test_fraction=0.2)
    spec = train_classifier(TrainConfig(out=tmp_path / "run", decision="argmax", min_sensitivity="mel=1.0", **common)).spec
    assert spec.decision["rule"] == "argmax" and spec.decision["floor"]["val_sensitivity"]["after"] == 1.0
    assert spec.metrics["val"]["per_class"]["mel"]["sensitivity"] == 1.0  # the stored metrics are the floored rule's
