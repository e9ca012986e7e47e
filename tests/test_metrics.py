"""Tests for edgederm.metrics against scikit-learn and hand-computed values."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from edgederm import metrics as m

METRICS_FILE = Path(m.__file__)


def random_probs(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    logits = rng.normal(size=(n, num_classes))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def one_hot_like(y_pred: list[int], num_classes: int, top: float = 0.8) -> np.ndarray:
    """Probabilities whose argmax is ``y_pred``: ``top`` on it, the rest spread evenly."""
    probs = np.full((len(y_pred), num_classes), (1 - top) / (num_classes - 1))
    probs[np.arange(len(y_pred)), y_pred] = top
    return probs


# --------------------------------------------------------------------------- import constraint


def test_module_imports_only_numpy_from_third_parties() -> None:
    # The phone-side runtime has numpy but not torch/sklearn/scipy; import the module (and the
    # decision rule it uses) in a fresh interpreter.
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(METRICS_FILE.parents[1])!r})\n"
        "import edgederm.metrics\n"
        "heavy = sorted(n for n in ('torch', 'sklearn', 'scipy') if n in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# --------------------------------------------------------------------------- confusion / accuracy


def test_confusion_matrix_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, size=200)
    y_pred = rng.integers(0, 5, size=200)
    cm = m.confusion_matrix(y_true, y_pred, 5)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y_true, y_pred, labels=range(5)))


def test_confusion_matrix_keeps_unseen_classes_as_zero_rows_and_columns() -> None:
    cm = m.confusion_matrix([0, 0, 1], [0, 1, 1], 4)
    assert cm.shape == (4, 4)
    np.testing.assert_array_equal(cm[:2, :2], [[1, 1], [0, 1]])
    assert cm[2:].sum() == 0 and cm[:, 2:].sum() == 0


def test_accuracy_and_balanced_accuracy_match_sklearn() -> None:
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 4, size=300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 4, size=300))
    assert m.accuracy(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert m.balanced_accuracy(y_true, y_pred, 4) == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))


def test_balanced_accuracy_ignores_class_absent_from_y_true() -> None:
    # Class 3 is predicted but never true: sklearn averages recall over classes 0..2 only.
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 3, 0, 1, 3, 2, 2, 1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the y_pred-only class
        expected = skm.balanced_accuracy_score(y_true, y_pred)
    assert expected == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)
    assert m.balanced_accuracy(y_true, y_pred, 4) == pytest.approx(expected)


# --------------------------------------------------------------------------- ROC / AUC


def test_roc_curve_matches_sklearn_without_dropping_points() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, size=120)
    scores = np.round(rng.random(120), 1)  # rounding creates many ties
    fpr, tpr, thresholds = m.roc_curve(y, scores)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_array_equal(thresholds, sk_thr)
    assert thresholds[0] == np.inf


def test_roc_curve_single_class_gives_nan_axis_like_sklearn() -> None:
    fpr, tpr, _ = m.roc_curve([1, 1, 1], [0.2, 0.5, 0.9])
    assert np.all(np.isnan(fpr))
    np.testing.assert_allclose(tpr, [0.0, 1 / 3, 2 / 3, 1.0])


def test_roc_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, size=500)
    scores = rng.integers(0, 6, size=500) + 0.3 * y  # heavy ties, some signal
    assert m.roc_auc(y, scores) == pytest.approx(skm.roc_auc_score(y, scores), abs=1e-12)


def test_roc_auc_hand_computed_with_tie() -> None:
    # Pairs (pos, neg): (0.8, 0.1) win, (0.8, 0.4) win, (0.4, 0.1) win, (0.4, 0.4) tie -> 3.5 / 4.
    assert m.roc_auc([1, 0, 1, 0], [0.8, 0.1, 0.4, 0.4]) == pytest.approx(0.875)


def test_roc_auc_is_none_for_one_class() -> None:
    assert m.roc_auc([0, 0, 0], [0.1, 0.2, 0.3]) is None
    assert m.roc_auc(np.array([True, True]), [0.1, 0.2]) is None


def test_macro_auc_ovr_matches_sklearn_when_all_classes_present() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 4, size=200)
    probs = random_probs(rng, 200, 4)
    expected = skm.roc_auc_score(y, probs, multi_class="ovr", average="macro")
    assert m.macro_auc_ovr(y, probs, 4) == pytest.approx(expected, abs=1e-12)


def test_macro_auc_ovr_averages_only_present_classes() -> None:
    rng = np.random.default_rng(5)
    y = rng.choice([0, 1, 3], size=150)  # class 2 never occurs
    probs = random_probs(rng, 150, 4)
    present = [0, 1, 3]
    expected = np.mean([skm.roc_auc_score(y == c, probs[:, c]) for c in present])
    assert m.macro_auc_ovr(y, probs, 4) == pytest.approx(expected, abs=1e-12)


def test_macro_auc_ovr_is_none_when_only_one_class_present() -> None:
    assert m.macro_auc_ovr([2, 2, 2], random_probs(np.random.default_rng(6), 3, 3), 3) is None


# --------------------------------------------------------------------------- calibration

# Four samples, 5 bins of width 0.2 (bins are (lo, hi]):
#   [0.90, 0.10] y=0 -> conf 0.90, right -> bin 4
#   [0.70, 0.30] y=1 -> conf 0.70, wrong -> bin 3
#   [0.30, 0.70] y=1 -> conf 0.70, right -> bin 3
#   [0.45, 0.55] y=0 -> conf 0.55, wrong -> bin 2
# bin 4: n=1 acc 1.0 conf 0.90 gap 0.10; bin 3: n=2 acc 0.5 conf 0.70 gap 0.20;
# bin 2: n=1 acc 0.0 conf 0.55 gap 0.55.  ECE = (1*0.10 + 2*0.20 + 1*0.55) / 4 = 0.2625
ECE_Y = np.array([0, 1, 1, 0])
ECE_PROBS = np.array([[0.9, 0.1], [0.7, 0.3], [0.3, 0.7], [0.45, 0.55]])


def test_ece_hand_computed() -> None:
    assert m.expected_calibration_error(ECE_Y, ECE_PROBS, n_bins=5) == pytest.approx(0.2625)


def test_ece_is_zero_for_perfectly_calibrated_bins() -> None:
    # Confidence 0.75 in every sample and exactly 3 of 4 right.
    probs = np.array([[0.75, 0.25]] * 4)
    assert m.expected_calibration_error([0, 0, 0, 1], probs) == pytest.approx(0.0)


def test_reliability_bins_hand_computed() -> None:
    bins = m.reliability_bins(ECE_Y, ECE_PROBS, n_bins=5)
    np.testing.assert_allclose(bins["bin_edges"], [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert bins["count"] == [0, 0, 1, 2, 1]
    assert bins["mean_confidence"][:2] == [None, None]
    np.testing.assert_allclose(bins["mean_confidence"][2:], [0.55, 0.70, 0.90])
    assert bins["accuracy"] == [None, None, 0.0, 0.5, 1.0]
    json.dumps(bins, allow_nan=False)


def test_reliability_bins_upper_edge_is_inclusive() -> None:
    # With 2 bins, confidence exactly 0.5 is in (0, 0.5] and 1.0 is in (0.5, 1].
    bins = m.reliability_bins([0, 0], np.array([[0.5, 0.5], [1.0, 0.0]]), n_bins=2)
    assert bins["count"] == [1, 1]


# --------------------------------------------------------------------------- full report

# 3 classes, 8 samples, argmax predictions:
#   y_true = 0 0 0 1 1 2 2 2
#   y_pred = 0 0 1 1 2 2 2 0
# confusion matrix [[2,1,0],[0,1,1],[1,0,2]]
#   class 0: TP 2 FN 1 FP 1 TN 4 -> sens 2/3 spec 4/5
#   class 1: TP 1 FN 1 FP 1 TN 5 -> sens 1/2 spec 5/6
#   class 2: TP 2 FN 1 FP 1 TN 4 -> sens 2/3 spec 4/5
# accuracy 5/8, balanced accuracy (2/3 + 1/2 + 2/3) / 3 = 11/18.
# AUC of class 1 with scores 0.8 on the predicted class and 0.1 elsewhere: positives score
# {0.8, 0.1}, negatives {0.8, 0.1 x5}: wins 5 + ties 0.5 (0.8 vs 0.8) + ties 2.5 (0.1 vs 0.1)
# = 8 of 12 pairs -> 2/3.
Y3 = [0, 0, 0, 1, 1, 2, 2, 2]
PRED3 = [0, 0, 1, 1, 2, 2, 2, 0]
NAMES3 = ["nv", "mel", "bkl"]


def test_classification_metrics_hand_computed_three_classes() -> None:
    probs = one_hot_like(PRED3, 3, top=0.8)
    result = m.classification_metrics(Y3, probs, NAMES3)
    assert result.n == 8
    assert result.confusion_matrix == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    assert result.accuracy == pytest.approx(5 / 8)
    assert result.balanced_accuracy == pytest.approx(11 / 18)
    expected = {"nv": (3, 2 / 3, 4 / 5), "mel": (2, 1 / 2, 5 / 6), "bkl": (3, 2 / 3, 4 / 5)}
    for name, (support, sens, spec) in expected.items():
        cls = result.per_class[name]
        assert cls.support == support
        assert cls.sensitivity == pytest.approx(sens)
        assert cls.specificity == pytest.approx(spec)
    assert result.per_class["mel"].auc == pytest.approx(2 / 3)
    assert result.melanoma_sensitivity == pytest.approx(1 / 2)
    # All confidences are 0.8 and 5/8 are right -> one bin, gap |0.625 - 0.8|.
    assert result.ece == pytest.approx(0.175)
    assert result.class_names == NAMES3


def test_classification_metrics_agree_with_sklearn_on_random_data() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 4, size=250)
    probs = random_probs(rng, 250, 4)
    result = m.classification_metrics(y, probs, ["a", "b", "c", "mel"])
    y_pred = probs.argmax(axis=1)
    assert result.accuracy == pytest.approx(skm.accuracy_score(y, y_pred))
    assert result.balanced_accuracy == pytest.approx(skm.balanced_accuracy_score(y, y_pred))
    assert result.macro_auc == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr"))
    assert result.melanoma_sensitivity == pytest.approx(skm.recall_score(y == 3, y_pred == 3))
    assert result.ece == pytest.approx(m.expected_calibration_error(y, probs))


def test_per_class_metrics_are_none_where_undefined() -> None:
    # "mel" (class 2) never occurs in y_true: no sensitivity, no AUC, so no melanoma sensitivity.
    y = [0, 1, 0, 1]
    probs = one_hot_like([0, 1, 2, 1], 3)
    result = m.classification_metrics(y, probs, ["nv", "bkl", "mel"])
    mel = result.per_class["mel"]
    assert mel.support == 0
    assert mel.sensitivity is None and mel.auc is None
    assert mel.specificity == pytest.approx(3 / 4)  # one false positive among 4 negatives
    assert result.melanoma_sensitivity is None


def test_specificity_none_when_every_sample_is_that_class() -> None:
    result = m.classification_metrics([0, 0], one_hot_like([0, 1], 2), ["mel", "nv"])
    assert result.per_class["mel"].specificity is None
    assert result.per_class["mel"].sensitivity == pytest.approx(0.5)
    assert result.macro_auc is None


def test_melanoma_sensitivity_none_without_mel_class() -> None:
    result = m.classification_metrics(Y3, one_hot_like(PRED3, 3), ["a", "b", "c"])
    assert result.melanoma_sensitivity is None


def test_to_dict_is_json_serialisable_with_field_names() -> None:
    result = m.classification_metrics(Y3, one_hot_like(PRED3, 3), NAMES3)
    d = result.to_dict()
    assert list(d) == [f.name for f in dataclasses.fields(m.ClassificationMetrics)]
    assert set(d["per_class"]["mel"]) == {"support", "sensitivity", "specificity", "auc"}
    round_trip = json.loads(json.dumps(d, allow_nan=False))
    assert round_trip == d
    assert type(d["accuracy"]) is float and type(d["n"]) is int
    assert type(d["confusion_matrix"][0][0]) is int


# --------------------------------------------------------------------------- segmentation

# Hand-drawn 4x4 example (1 = lesion):
#   truth        pred
#   0 0 0 0      0 0 0 0
#   0 1 1 0      0 1 1 1
#   0 1 1 0      0 1 0 0
#   0 0 0 0      0 0 0 0
# TP = 3 ((1,1),(1,2),(2,1)), FP = 1 ((1,3)), FN = 1 ((2,2)), TN = 16 - 5 = 11.
# Jaccard 3/5 = 0.6, Dice 6/8 = 0.75, pixel accuracy 14/16 = 0.875,
# sensitivity 3/4 = 0.75, specificity 11/12.
TRUTH_4X4 = np.array([[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=np.uint8) * 255
# Float probabilities: 0.5 counts as lesion, 0.49 does not.
PRED_4X4 = np.array(
    [
        [0.0, 0.1, 0.2, 0.0],
        [0.0, 0.9, 0.5, 0.7],
        [0.3, 0.6, 0.49, 0.0],
        [0.0, 0.0, 0.2, 0.1],
    ]
)


def test_segmentation_metrics_hand_computed_4x4() -> None:
    result = m.segmentation_metrics([TRUTH_4X4], [PRED_4X4])
    assert result.n == 1
    assert result.jaccard == pytest.approx(0.6)
    assert result.dice == pytest.approx(0.75)
    assert result.pixel_accuracy == pytest.approx(0.875)
    assert result.sensitivity == pytest.approx(0.75)
    assert result.specificity == pytest.approx(11 / 12)
    assert m.mask_iou(TRUTH_4X4, PRED_4X4) == pytest.approx(0.6)


def test_segmentation_metrics_average_per_image() -> None:
    # Adding a perfect empty/empty image (all metrics 1 by convention) halves each shortfall.
    empty = np.zeros((4, 4), dtype=np.uint8)
    result = m.segmentation_metrics([TRUTH_4X4, empty], [PRED_4X4, np.zeros((4, 4))])
    assert result.n == 2
    assert result.jaccard == pytest.approx(0.8)
    assert result.dice == pytest.approx(0.875)
    assert result.pixel_accuracy == pytest.approx(0.9375)
    assert result.sensitivity == pytest.approx(0.875)
    assert result.specificity == pytest.approx((11 / 12 + 1) / 2)
    json.dumps(result.to_dict(), allow_nan=False)
    assert list(result.to_dict()) == [f.name for f in dataclasses.fields(m.SegmentationMetrics)]


def test_segmentation_zero_over_zero_conventions() -> None:
    empty = np.zeros((3, 3), dtype=bool)
    one_pixel = empty.copy()
    one_pixel[1, 1] = True
    full = np.ones((3, 3), dtype=bool)

    both_empty = m.segmentation_metrics([empty], [empty])
    assert (both_empty.jaccard, both_empty.dice, both_empty.sensitivity) == (1.0, 1.0, 1.0)

    false_alarm = m.segmentation_metrics([empty], [one_pixel])
    assert (false_alarm.jaccard, false_alarm.dice, false_alarm.sensitivity) == (0.0, 0.0, 0.0)
    assert false_alarm.specificity == pytest.approx(8 / 9)

    both_full = m.segmentation_metrics([full], [full])
    assert both_full.specificity == 1.0 and both_full.sensitivity == 1.0

    missed_background = m.segmentation_metrics([full], [~one_pixel])
    assert missed_background.specificity == 0.0
    assert missed_background.sensitivity == pytest.approx(8 / 9)


def test_segmentation_matches_sklearn_on_random_masks() -> None:
    rng = np.random.default_rng(8)
    truths = [(rng.random((32, 32)) < 0.3).astype(np.uint8) * 255 for _ in range(6)]
    preds = [rng.random((32, 32)) for _ in range(6)]
    result = m.segmentation_metrics(truths, preds)
    flat = [((t >= 128).ravel(), (p >= 0.5).ravel()) for t, p in zip(truths, preds)]
    assert result.jaccard == pytest.approx(np.mean([skm.jaccard_score(t, p) for t, p in flat]))
    assert result.dice == pytest.approx(np.mean([skm.f1_score(t, p) for t, p in flat]))
    assert result.pixel_accuracy == pytest.approx(np.mean([skm.accuracy_score(t, p) for t, p in flat]))
    assert result.sensitivity == pytest.approx(np.mean([skm.recall_score(t, p) for t, p in flat]))
    assert result.specificity == pytest.approx(np.mean([skm.recall_score(t, p, pos_label=False) for t, p in flat]))


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        (np.array([0.0, 0.49, 0.5, 1.0]), [False, False, True, True]),
        (np.array([0, 127, 128, 255], dtype=np.uint8), [False, False, True, True]),
        (np.array([0, 1, 1, 0], dtype=np.uint8), [False, True, True, False]),
        (np.array([0, 1, 0, 1], dtype=np.int64), [False, True, False, True]),
        (np.array([True, False, True, False]), [True, False, True, False]),
    ],
)
def test_binarize_mask(mask: np.ndarray, expected: list[bool]) -> None:
    out = m.binarize_mask(mask)
    assert out.dtype == bool
    assert out.tolist() == expected


# --------------------------------------------------------------------------- input validation


@pytest.mark.parametrize(
    ("y_true", "probs", "names", "match"),
    [
        ([0, 1], np.array([0.5, 0.5]), ["a", "b"], "2-D"),
        ([0, 1], np.full((2, 3), 1 / 3), ["a", "b"], "3 columns but there are 2 classes"),
        ([0, 2], np.full((2, 2), 0.5), ["a", "b"], "outside 0..1"),
        ([0, -1], np.full((2, 2), 0.5), ["a", "b"], "outside 0..1"),
        ([], np.zeros((0, 2)), ["a", "b"], "empty"),
        ([0, 1, 1], np.full((2, 2), 0.5), ["a", "b"], "2 rows but there are 3 labels"),
        ([0, 1], np.array([[0.5, np.nan], [0.5, 0.5]]), ["a", "b"], "NaN"),
        ([0, 1], np.array([[3.2, -1.0], [0.5, 0.5]]), ["a", "b"], "softmax"),
        ([0, 1], np.full((2, 2), 0.5), ["a", "a"], "duplicates"),
        ([0.5, 1], np.full((2, 2), 0.5), ["a", "b"], "integer class indices"),
        ([[0, 1]], np.full((2, 2), 0.5), ["a", "b"], "1-D"),
    ],
)
def test_classification_metrics_rejects_bad_input(y_true, probs, names, match) -> None:
    with pytest.raises(ValueError, match=match) as info:
        m.classification_metrics(y_true, probs, names)
    assert "\n" not in str(info.value)


def test_other_functions_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="3 samples but y_pred has 2"):
        m.confusion_matrix([0, 1, 1], [0, 1], 2)
    with pytest.raises(ValueError, match="num_classes"):
        m.confusion_matrix([0], [0], 0)
    with pytest.raises(ValueError, match="0/1"):
        m.roc_auc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="scores has 2 samples"):
        m.roc_auc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="n_bins"):
        m.expected_calibration_error([0], np.array([[1.0, 0.0]]), n_bins=0)
    with pytest.raises(ValueError, match="shape"):
        m.segmentation_metrics([np.zeros((4, 4))], [np.zeros((4, 5))])
    with pytest.raises(ValueError, match="2 true masks but 1"):
        m.segmentation_metrics([np.zeros((2, 2))] * 2, [np.zeros((2, 2))])
    with pytest.raises(ValueError, match="no masks"):
        m.segmentation_metrics([], [])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.binarize_mask(np.array([0.0, 255.0]))


# --------------------------------------------------------------------------- properties


def equal_length_lists(min_size: int, max_size: int, first_max: int, second_max: int):
    """Two lists of one drawn length: integers in [0, first_max], then in [0, second_max]."""
    return st.integers(min_value=min_size, max_value=max_size).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(0, first_max), min_size=n, max_size=n),
            st.lists(st.integers(0, second_max), min_size=n, max_size=n),
        )
    )


binary_samples = equal_length_lists(2, 60, 1, 8)


@settings(deadline=None, max_examples=150)
@given(binary_samples)
def test_auc_matches_sklearn_and_is_invariant_to_monotone_transforms(sample) -> None:
    y, raw = (np.array(v) for v in sample)
    auc = m.roc_auc(y, raw)
    if len(set(y.tolist())) < 2:
        assert auc is None
        return
    assert auc == pytest.approx(skm.roc_auc_score(y, raw), abs=1e-12)
    # Strictly increasing and exact on these small integers, so ties are preserved.
    transformed = raw.astype(np.float64) ** 3 + 2.0 * raw - 100.0
    assert m.roc_auc(y, transformed) == pytest.approx(auc, abs=1e-12)
    assert m.roc_auc(y, -raw) == pytest.approx(1.0 - auc, abs=1e-12)


label_pairs = equal_length_lists(1, 80, 4, 4)


@settings(deadline=None, max_examples=150)
@given(label_pairs)
def test_balanced_accuracy_properties(pair) -> None:
    y_true, y_pred = (np.array(v) for v in pair)
    bal = m.balanced_accuracy(y_true, y_pred, 5)
    assert 0.0 <= bal <= 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert bal == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    # Equal support for every present class makes it the plain accuracy.
    supports = np.bincount(y_true)
    if len(set(supports[supports > 0].tolist())) == 1:
        assert bal == pytest.approx(m.accuracy(y_true, y_pred))
