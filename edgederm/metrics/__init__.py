"""Classification and segmentation metrics, in numpy only.

This module also runs inside the phone-side runtime, so it must not import torch, sklearn or
scipy. Definitions follow scikit-learn for classification and the ISIC challenge for
segmentation; the tests check both.

Conventions where a ratio is 0/0:

* ``sensitivity`` / ``specificity`` / ``auc`` of a class are ``None`` when undefined (no
  positives, no negatives, or only one class present). ``roc_auc`` and ``macro_auc_ovr`` return
  ``None`` when no class can be scored.
* Segmentation metrics are computed per image and then averaged, so each image needs a number:
  Jaccard and Dice are 1.0 when both masks are empty. Sensitivity with no lesion pixels in the
  truth is 1.0 if the prediction is empty too, else 0.0; specificity with no background pixels
  in the truth is 1.0 if the prediction covers everything, else 0.0. In words: an image with
  nothing to find scores 1 when the prediction agrees with it and 0 when it does not, like
  Jaccard and Dice do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..runtime.readout import decide, describe, offsets

MELANOMA = "mel"

# Probabilities computed in float16/float32 on a device can land a hair outside [0, 1].
_PROB_TOLERANCE = 1e-6


# --------------------------------------------------------------------------- input checks


def _as_labels(y: Any, name: str, num_classes: int | None = None) -> np.ndarray:
    """``y`` as a non-empty 1-D int64 array, range-checked when ``num_classes`` is given."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; metrics need at least one sample")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer class indices, got non-integer floats")
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    labels = arr.astype(np.int64)
    if num_classes is not None:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise ValueError(f"{name} contains label {bad}, outside 0..{num_classes - 1} for {num_classes} classes")
    return labels


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        # Every bad input is a ValueError here, so callers need catch only one type.
        got = type(num_classes).__name__
        raise ValueError(f"num_classes must be an int, got {got}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return int(num_classes)


def _check_same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} has {len(a)} samples but {name_b} has {len(b)}")


def _as_score_matrix(probs: Any, n_rows: int, num_classes: int | None = None) -> np.ndarray:
    """Return ``probs`` as a finite float64 (N, C) array with ``n_rows`` rows."""
    arr = np.asarray(probs)
    if arr.ndim != 2:
        raise ValueError(f"probs must be 2-D (N, C), got shape {arr.shape}")
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"probs must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.shape[0] != n_rows:
        raise ValueError(f"probs has {arr.shape[0]} rows but there are {n_rows} labels")
    if num_classes is not None and arr.shape[1] != num_classes:
        raise ValueError(f"probs has {arr.shape[1]} columns but there are {num_classes} classes")
    if not np.all(np.isfinite(arr)):
        raise ValueError("probs contains NaN or infinite values")
    return arr


def _as_prob_matrix(probs: Any, n_rows: int, num_classes: int | None = None) -> np.ndarray:
    """Like ``_as_score_matrix`` but the values must be probabilities in [0, 1]."""
    arr = _as_score_matrix(probs, n_rows, num_classes)
    low, high = float(arr.min()), float(arr.max())
    if low < -_PROB_TOLERANCE or high > 1 + _PROB_TOLERANCE:
        raise ValueError(f"probs must be probabilities in [0, 1], got values in [{low:.4g}, {high:.4g}]; apply softmax to logits first")
    return np.clip(arr, 0.0, 1.0)


def _as_binary_labels(y: Any, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; metrics need at least one sample")
    if arr.dtype.kind not in "fiub" or not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name} must hold only 0/1 (or False/True) values")
    return arr.astype(bool)


def _as_scores(scores: Any, n: int) -> np.ndarray:
    arr = np.asarray(scores)
    if arr.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"scores must be numeric, got dtype {arr.dtype}")
    if len(arr) != n:
        raise ValueError(f"scores has {len(arr)} samples but y_binary has {n}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("scores contains NaN or infinite values")
    return arr


# --------------------------------------------------------------------------- classification


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts, rows = true class, columns = predicted class."""
    num_classes = _check_num_classes(num_classes)
    t = _as_labels(y_true, "y_true", num_classes)
    p = _as_labels(y_pred, "y_pred", num_classes)
    _check_same_length(t, p, "y_true", "y_pred")
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    t = _as_labels(y_true, "y_true")
    p = _as_labels(y_pred, "y_pred")
    _check_same_length(t, p, "y_true", "y_pred")
    return float(np.mean(t == p))


def _recalls_of_present_classes(cm: np.ndarray) -> np.ndarray:
    support = cm.sum(axis=1)
    present = support > 0
    return np.diag(cm)[present] / support[present]


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Mean recall over the classes present in ``y_true`` (scikit-learn's definition)."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    return float(np.mean(_recalls_of_present_classes(cm)))


def roc_curve(y_binary: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) as ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``.

    The first threshold is ``inf`` so the curve starts at (0, 0). With no negatives (positives)
    ``fpr`` (``tpr``) is all NaN, as in scikit-learn.
    """
    y = _as_binary_labels(y_binary, "y_binary")
    s = _as_scores(scores, len(y))
    order = np.argsort(s, kind="mergesort")[::-1]
    s, y = s[order], y[order]
    # Last index of each run of equal scores: one ROC point per distinct threshold.
    threshold_idxs = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[threshold_idxs].astype(np.float64)
    fps = 1.0 + threshold_idxs - tps
    tps = np.r_[0.0, tps]
    fps = np.r_[0.0, fps]
    thresholds = np.r_[np.inf, s[threshold_idxs]]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr, thresholds


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties getting the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mean_rank = ends - (counts - 1) / 2.0
    return mean_rank[inverse]


def _binary_auc(y: np.ndarray, s: np.ndarray) -> float | None:
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    # Mann-Whitney U with average ranks equals the trapezoidal area under the ROC curve.
    rank_sum = float(_average_ranks(s)[y].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def roc_auc(y_binary: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve; ``None`` when ``y_binary`` holds only one class."""
    y = _as_binary_labels(y_binary, "y_binary")
    return _binary_auc(y, _as_scores(scores, len(y)))


def _per_class_auc(labels: np.ndarray, scores: np.ndarray) -> list[float | None]:
    return [_binary_auc(labels == c, scores[:, c]) for c in range(scores.shape[1])]


def macro_auc_ovr(y_true: np.ndarray, probs: np.ndarray, num_classes: int) -> float | None:
    """One-vs-rest AUC averaged over the classes that have both positives and negatives.

    Classes absent from ``y_true`` are skipped (scikit-learn would refuse them). ``None`` when
    no class can be scored, e.g. when ``y_true`` holds a single class.
    """
    num_classes = _check_num_classes(num_classes)
    labels = _as_labels(y_true, "y_true", num_classes)
    scores = _as_score_matrix(probs, len(labels), num_classes)
    return _mean_or_none(_per_class_auc(labels, scores))


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


@dataclass
class _TopLabelBins:
    edges: np.ndarray
    confidence_sum: np.ndarray
    correct: np.ndarray
    count: np.ndarray


def _top_label_bins(y_true: Any, probs: Any, n_bins: int) -> _TopLabelBins:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be an int >= 1, got {n_bins!r}")
    labels = _as_labels(y_true, "y_true")
    p = _as_prob_matrix(probs, len(labels))
    num_classes = p.shape[1]
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"y_true contains labels outside 0..{num_classes - 1} for probs' columns")
    confidence = p.max(axis=1)
    is_correct = (p.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bins are (lo, hi]; a confidence of exactly 0 falls into the first bin.
    bin_index = np.searchsorted(edges[1:-1], confidence, side="left")
    return _TopLabelBins(
        edges=edges,
        confidence_sum=np.bincount(bin_index, weights=confidence, minlength=n_bins),
        correct=np.bincount(bin_index, weights=is_correct, minlength=n_bins),
        count=np.bincount(bin_index, minlength=n_bins),
    )


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: sum over equal-width bins of (bin count / N) * |accuracy - confidence|."""
    bins = _top_label_bins(y_true, probs, n_bins)
    gap = np.abs(bins.correct - bins.confidence_sum)  # per bin, count * |acc - conf|
    return float(gap.sum() / bins.count.sum())


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> dict[str, list]:
    """Data for a reliability diagram, JSON-serialisable.

    Keys: ``bin_edges`` (n_bins + 1 floats), ``mean_confidence`` and ``accuracy`` (n_bins
    entries, ``None`` for empty bins) and ``count`` (n_bins ints).
    """
    bins = _top_label_bins(y_true, probs, n_bins)

    def per_bin_mean(sums: np.ndarray) -> list[float | None]:
        return [float(s / c) if c else None for s, c in zip(sums, bins.count, strict=True)]

    return {
        "bin_edges": [float(e) for e in bins.edges],
        "mean_confidence": per_bin_mean(bins.confidence_sum),
        "accuracy": per_bin_mean(bins.correct),
        "count": [int(c) for c in bins.count],
    }


@dataclass
class ClassMetrics:
    support: int
    sensitivity: float | None
    specificity: float | None
    auc: float | None


@dataclass
class ClassificationMetrics:
    n: int
    accuracy: float
    balanced_accuracy: float
    macro_auc: float | None
    ece: float
    melanoma_sensitivity: float | None
    per_class: dict[str, ClassMetrics]
    confusion_matrix: list[list[int]]
    class_names: list[str]
    decision: str = "argmax"  # the rule that named each image's class (edgederm.runtime.readout.describe)
    # under another rule than argmax: accuracy, balanced_accuracy and melanoma_sensitivity by plain argmax, beside it
    argmax: dict[str, float | None] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _named_class_figures(cm: np.ndarray, names: list[str]) -> dict[str, float | None]:
    """Accuracy, balanced accuracy and melanoma sensitivity of one confusion matrix (a rule's named classes)."""
    return {
        "accuracy": float(np.trace(cm) / cm.sum()),
        "balanced_accuracy": float(np.mean(_recalls_of_present_classes(cm))),
        "melanoma_sensitivity": _class_metrics(cm, names.index(MELANOMA), None).sensitivity if MELANOMA in names else None,
    }


def _ratio_or_none(numerator: int, denominator: int) -> float | None:
    return float(numerator / denominator) if denominator else None


def _class_metrics(cm: np.ndarray, c: int, auc: float | None) -> ClassMetrics:
    tp = int(cm[c, c])
    fn = int(cm[c, :].sum()) - tp
    fp = int(cm[:, c].sum()) - tp
    tn = int(cm.sum()) - tp - fn - fp
    return ClassMetrics(
        support=tp + fn,
        sensitivity=_ratio_or_none(tp, tp + fn),
        specificity=_ratio_or_none(tn, tn + fp),
        auc=auc,
    )


def _check_class_names(class_names: Sequence[str]) -> list[str]:
    if isinstance(class_names, str):
        raise ValueError("class_names must be a sequence of names, not one string")
    names = list(class_names)
    if not names:
        raise ValueError("class_names is empty")
    if not all(isinstance(name, str) for name in names):
        raise ValueError("class_names must all be strings")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"class_names has duplicates: {', '.join(duplicates)}")
    return names


def classification_metrics(
    y_true: Sequence[int] | np.ndarray, probs: np.ndarray, class_names: Sequence[str], decision: Mapping[str, Any] | None = None
) -> ClassificationMetrics:
    """All classification metrics for one evaluation.

    The named class (accuracy, balanced accuracy, sensitivities, confusion matrix) follows
    ``decision``, a ModelSpec's rule (``edgederm.runtime.readout.decide``; None = argmax). AUC and ECE read the
    probabilities, whatever the rule. Under a rule other than argmax, ``argmax`` gives accuracy, balanced
    accuracy and melanoma sensitivity by argmax beside it.
    """
    names = _check_class_names(class_names)
    num_classes = len(names)
    labels = _as_labels(y_true, "y_true", num_classes)
    p = _as_prob_matrix(probs, len(labels), num_classes)
    y_pred = decide(decision, p)
    cm = confusion_matrix(labels, y_pred, num_classes)
    aucs = _per_class_auc(labels, p)
    per_class = {name: _class_metrics(cm, c, aucs[c]) for c, name in enumerate(names)}
    argmax = _named_class_figures(confusion_matrix(labels, p.argmax(axis=1), num_classes), names) if offsets(decision) is not None else None
    named = _named_class_figures(cm, names)
    return ClassificationMetrics(
        n=len(labels),
        accuracy=named["accuracy"],
        balanced_accuracy=named["balanced_accuracy"],
        macro_auc=_mean_or_none(aucs),
        ece=expected_calibration_error(labels, p),
        melanoma_sensitivity=named["melanoma_sensitivity"],
        per_class=per_class,
        confusion_matrix=[[int(v) for v in row] for row in cm],
        class_names=names,
        decision=describe(decision),
        argmax=argmax,
    )


# --------------------------------------------------------------------------- segmentation


@dataclass
class SegmentationMetrics:
    n: int
    jaccard: float
    dice: float
    pixel_accuracy: float
    sensitivity: float
    specificity: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def binarize_mask(mask: np.ndarray) -> np.ndarray:
    """Lesion pixels as a bool array.

    bool masks are kept; float masks must lie in [0, 1] and are thresholded at >= 0.5; integer
    masks are read as 0/255 masks thresholded at >= 128, except that an integer mask holding
    only 0 and 1 is read as a 0/1 mask (thresholding one at 128 would silently empty it).
    """
    arr = np.asarray(mask)
    if arr.size == 0:
        raise ValueError("mask is empty")
    if arr.dtype.kind == "b":
        return arr.copy()
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise ValueError("float mask contains NaN or infinite values")
        if arr.min() < 0 or arr.max() > 1:
            raise ValueError(
                f"float mask values must be in [0, 1], got [{arr.min():.4g}, {arr.max():.4g}]; "
                "divide 0..255 masks by 255 or pass them as uint8"
            )
        return arr >= 0.5
    if arr.dtype.kind in "iu":
        low, high = int(arr.min()), int(arr.max())
        if low < 0 or high > 255:
            raise ValueError(f"integer mask values must be in 0..255, got {low}..{high}")
        return arr >= (1 if high <= 1 else 128)
    raise ValueError(f"mask must be bool, integer or float, got dtype {arr.dtype}")


@dataclass
class _PixelCounts:
    tp: int
    fp: int
    fn: int
    tn: int


def _pixel_counts(true_mask: np.ndarray, pred_mask: np.ndarray) -> _PixelCounts:
    t = binarize_mask(true_mask)
    p = binarize_mask(pred_mask)
    if t.shape != p.shape:
        raise ValueError(f"true mask has shape {t.shape} but predicted mask has shape {p.shape}")
    tp = int(np.count_nonzero(t & p))
    fp = int(np.count_nonzero(~t & p))
    fn = int(np.count_nonzero(t & ~p))
    return _PixelCounts(tp=tp, fp=fp, fn=fn, tn=t.size - tp - fp - fn)


def _ratio_or(numerator: int, denominator: int, if_undefined: float) -> float:
    return numerator / denominator if denominator else if_undefined


def _jaccard(c: _PixelCounts) -> float:
    return _ratio_or(c.tp, c.tp + c.fp + c.fn, 1.0)


def _dice(c: _PixelCounts) -> float:
    return _ratio_or(2 * c.tp, 2 * c.tp + c.fp + c.fn, 1.0)


def _sensitivity(c: _PixelCounts) -> float:
    # No lesion pixels to find: right (1) iff nothing was predicted, see the module docstring.
    return _ratio_or(c.tp, c.tp + c.fn, 1.0 if c.fp == 0 else 0.0)


def _specificity(c: _PixelCounts) -> float:
    return _ratio_or(c.tn, c.tn + c.fp, 1.0 if c.fn == 0 else 0.0)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard index of two masks; 1.0 when both are empty."""
    return float(_jaccard(_pixel_counts(a, b)))


def segmentation_metrics(true_masks: Sequence[np.ndarray], pred_masks: Sequence[np.ndarray]) -> SegmentationMetrics:
    """ISIC-style metrics, computed per image and averaged over images."""
    if len(true_masks) != len(pred_masks):
        raise ValueError(f"got {len(true_masks)} true masks but {len(pred_masks)} predicted masks")
    if len(true_masks) == 0:
        raise ValueError("no masks given; segmentation metrics need at least one image")
    counts = [_pixel_counts(t, p) for t, p in zip(true_masks, pred_masks, strict=True)]

    def mean_of(metric: Any) -> float:
        return float(np.mean([metric(c) for c in counts]))

    return SegmentationMetrics(
        n=len(counts),
        jaccard=mean_of(_jaccard),
        dice=mean_of(_dice),
        pixel_accuracy=mean_of(lambda c: (c.tp + c.tn) / (c.tp + c.tn + c.fp + c.fn)),
        sensitivity=mean_of(_sensitivity),
        specificity=mean_of(_specificity),
    )
