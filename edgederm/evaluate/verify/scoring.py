"""The numbers verify records for one set of outputs: task metrics, and agreement with the reference.

Classifiers are scored on labels; segmenters on true masks at each image's own size, after the
spec's post-processing, exactly as ``edgederm predict`` writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...core.errors import DataError, ImageError
from ...core.spec import ModelSpec
from ...data.pixels import PixelCache
from ...data.samples import SampleSet
from ...metrics import binarize_mask, classification_metrics, mask_iou, segmentation_metrics
from ...metrics.operating_point import sensitivity_specificity
from ...runtime.readout import decide, lesion_mask, lesion_probabilities


@dataclass
class Truth:
    labels: np.ndarray | None = None  # classification: class indices
    masks: list[np.ndarray] | None = None  # segmentation: bool (h, w) at each image's own size
    sizes: list[tuple[int, int]] | None = None  # segmentation: (w, h) of each image

    def subset(self, indices: np.ndarray) -> Truth:
        if self.labels is not None:
            return Truth(labels=self.labels[indices])
        return Truth(masks=[self.masks[i] for i in indices], sizes=[self.sizes[i] for i in indices])


def load_truth(spec: ModelSpec, dataset: SampleSet, cache: PixelCache) -> Truth:
    samples = [dataset.samples[i] for i in cache.kept]
    if spec.task == "segmentation":
        dataset.subset(cache.kept).require_masks()
        masks, sizes = [], []
        for sample in samples:
            try:
                image, mask = sample.load_image_and_mask()
            except ImageError as error:
                raise DataError(f"cannot read a true mask ({error})", path=sample.display_path) from None
            masks.append(binarize_mask(mask))
            sizes.append(image.size)
        return Truth(masks=masks, sizes=sizes)
    if any(s.label is None for s in samples):
        raise DataError(
            "verify needs labelled images", path=dataset.spec, fix="use a dataset spec with labels (not a folder of unlabelled images)"
        )
    unknown = sorted({s.label for s in samples} - set(spec.class_names))
    if unknown:
        raise DataError(f"labels {unknown} are not classes of this model {spec.class_names}", path=dataset.spec)
    return Truth(labels=np.array([spec.class_names.index(s.label) for s in samples]))


def normalise(spec: ModelSpec, outputs: np.ndarray) -> np.ndarray:
    """Class probabilities (N, C), or lesion probabilities (N, S, S) whatever the backend's layout."""
    return lesion_probabilities(outputs) if spec.task == "segmentation" else np.asarray(outputs, np.float32)


def masks_of(spec: ModelSpec, truth: Truth, probs: np.ndarray) -> list[np.ndarray]:
    return [lesion_mask(p, spec, size) > 0 for p, size in zip(probs, truth.sizes, strict=True)]


def score(spec: ModelSpec, truth: Truth, probs: np.ndarray) -> dict[str, Any]:
    """Flat metrics (numbers a guard can name); a classifier's also carry the confusion matrix."""
    if spec.task == "segmentation":
        return segmentation_metrics(truth.masks, masks_of(spec, truth, probs)).to_dict()
    result = classification_metrics(truth.labels, probs, spec.class_names, decision=spec.decision)
    flat: dict[str, Any] = {
        "accuracy": result.accuracy,
        "balanced_accuracy": result.balanced_accuracy,
        "macro_auc": result.macro_auc,
        "ece": result.ece,
        "mel_sensitivity": result.melanoma_sensitivity,
    }
    if result.argmax is not None:
        flat["argmax_accuracy"] = result.argmax["accuracy"]
        flat["argmax_balanced_accuracy"] = result.argmax["balanced_accuracy"]
        flat["argmax_mel_sensitivity"] = result.argmax["melanoma_sensitivity"]
    for name, per_class in result.per_class.items():
        flat[f"sensitivity_{name}"] = per_class.sensitivity
    if spec.operating_point.get("threshold") is not None:
        at = sensitivity_specificity(spec, truth.labels, probs, spec.operating_point["threshold"])
        flat["op_sensitivity"], flat["op_specificity"] = at["sensitivity"], at["specificity"]
    flat["confusion_matrix"] = result.confusion_matrix
    return flat


def agreement(spec: ModelSpec, truth: Truth, reference: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    diff = np.abs(probs.astype(np.float64) - reference)
    common = {"max_abs_prob_diff": float(diff.max()), "mean_abs_prob_diff": float(diff.mean())}
    if spec.task == "segmentation":
        ious = [mask_iou(a, b) for a, b in zip(masks_of(spec, truth, reference), masks_of(spec, truth, probs), strict=True)]
        return {"mask_iou": float(np.mean(ious)), "mask_iou_per_image": [round(v, 4) for v in ious], **common}
    changes = class_changes(spec, truth, reference, probs)
    changed = sum(change["lost"] for change in changes.values())  # every image named differently is lost by one class
    return {"top1": (len(probs) - changed) / len(probs), "class_changes": changes, **common}


def class_changes(spec: ModelSpec, truth: Truth, reference: np.ndarray, probs: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per class: images the reference names it and the artifact does not (lost), the reverse (gained), how many of each
    were truly that class, and the mean change of its log-probability. An overall agreement figure hides whether the
    changes fall on one class; a sensitivity moves by (gained_true - lost_true) / class count."""
    named, ref_named = decide(spec.decision, probs), decide(spec.decision, reference)
    dlogp = np.log(np.clip(probs.astype(np.float64), 1e-12, None)) - np.log(np.clip(reference.astype(np.float64), 1e-12, None))
    labels = truth.labels if truth.labels is not None and len(truth.labels) == len(named) else None
    changes = {}
    for index, name in enumerate(spec.class_names):
        lost, gained = (ref_named == index) & (named != index), (named == index) & (ref_named != index)
        entry: dict[str, Any] = {"lost": int(lost.sum()), "gained": int(gained.sum()), "mean_dlogp": float(dlogp[:, index].mean())}
        if labels is not None:
            entry["lost_true"], entry["gained_true"] = int((lost & (labels == index)).sum()), int((gained & (labels == index)).sum())
        changes[name] = entry
    return changes
