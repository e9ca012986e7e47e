"""Segment, then classify: crop each image around the segmenter's lesion and classify the crop.

Only the torch-free runtime is used (``Predictor``), so the segmenter and the classifier may each be
a run directory or an exported artifact. The crop is taken from the original image, not from the
segmenter's input, so the classifier sees the full resolution.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core import atomic
from ..core.errors import ModelError
from ..data.pixels import batched, decode_samples
from ..data.samples import SampleSet
from ..runtime import Predictor
from ..runtime.readout import lesion_mask, lesion_probabilities
from .predict import Predictions, mask_names, write_mask

DEFAULT_CROP_MARGIN = 0.2
CROP_LESION = "lesion"
CROP_WHOLE_IMAGE = "whole_image_empty_mask"

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels; x1, y1 exclusive (PIL's crop box)


def lesion_bounding_box(mask: np.ndarray) -> Box | None:
    """The tight box around the mask's non-zero pixels, or None when the mask is empty."""
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return None
    y0, y1 = np.flatnonzero(rows)[[0, -1]]
    x0, x1 = np.flatnonzero(cols)[[0, -1]]
    return int(x0), int(y0), int(x1) + 1, int(y1) + 1


def expand_to_square(box: Box, image_size: tuple[int, int], margin: float = DEFAULT_CROP_MARGIN) -> Box:
    """Grow ``box`` by ``margin`` x its side on each side, square it around its centre, clip to the image (w, h).

    Clipping keeps the centre where the square fits and cuts it at the border where it does not, so a
    lesion at the edge gives a rectangular crop (the classifier's letterbox takes any aspect).
    """
    x0, y0, x1, y1 = box
    width, height = image_size
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = math.floor(cx - side / 2), math.floor(cy - side / 2)
    right, bottom = math.ceil(cx + side / 2), math.ceil(cy + side / 2)
    return max(0, left), max(0, top), min(width, right), min(height, bottom)


def crop_box_for(mask: np.ndarray, margin: float = DEFAULT_CROP_MARGIN) -> tuple[Box, str]:
    """The crop for one (h, w) mask and what it is: the lesion's square, or the whole image when the mask is empty."""
    height, width = mask.shape[:2]
    box = lesion_bounding_box(mask)
    if box is None:
        return (0, 0, width, height), CROP_WHOLE_IMAGE
    return expand_to_square(box, (width, height), margin), CROP_LESION


@dataclass
class CropPredictions:
    """A classifier's predictions on lesion crops, with where each crop came from."""

    predictions: Predictions  # probabilities of the crops, in the usual classifier layout
    boxes: list[Box | None]
    crop_sources: list[str | None]  # CROP_LESION or CROP_WHOLE_IMAGE; None where the image failed
    area_fractions: np.ndarray  # the segmenter's lesion share of the image, NaN where the image failed
    mask_files: list[str | None]  # relative to the output folder, when the masks were written


def check_tasks(segmenter: Predictor, classifier: Predictor) -> None:
    for predictor, task, flag in ((segmenter, "segmentation", "--segmenter"), (classifier, "classification", "--classifier")):
        if predictor.spec.task != task:
            raise ModelError(f"{flag} needs a {task} model, this is a {predictor.spec.task} model", path=predictor.path)


MaskHook = Callable[[int, np.ndarray], None]  # (sample index, uint8 0/255 mask at the image's size)


def run_segment_classify(
    segmenter: Predictor,
    classifier: Predictor,
    dataset: SampleSet,
    margin: float = DEFAULT_CROP_MARGIN,
    batch_size: int = 32,
    on_mask: MaskHook | None = None,
    masks_to: Path | None = None,
) -> CropPredictions:
    """Segment every image, crop the original around its lesion, classify the crop; unreadable images become error rows.

    With ``masks_to``, each mask is written as ``masks_to/masks/<image stem>.png``, as ``edgederm predict`` does for a segmenter.
    """
    check_tasks(segmenter, classifier)
    n = len(dataset)
    names = mask_names(dataset)
    if masks_to is not None:
        (masks_to / "masks").mkdir(parents=True, exist_ok=True)
    probs = np.full((n, len(classifier.class_names)), np.nan, np.float32)
    errors: list[str | None] = [None] * n
    result = CropPredictions(
        Predictions(dataset, classifier.class_names, probs, errors, classifier.spec.decision),
        [None] * n,
        [None] * n,
        np.full(n, np.nan),
        [None] * n,
    )
    for chunk in batched(decode_samples(dataset, errors, desc="segment + classify"), batch_size):
        seg_pixels = np.stack([segmenter.spec.preprocess.fit(item.image) for item in chunk])
        lesion = lesion_probabilities(segmenter.predict_pixels(seg_pixels))
        crops = []
        for item, lesion_probs in zip(chunk, lesion, strict=True):
            index, image = item.index, item.image
            mask = lesion_mask(lesion_probs, segmenter.spec, image.size)
            if on_mask is not None:
                on_mask(index, mask)
            if masks_to is not None:
                write_mask(masks_to / names[index], mask)
                result.mask_files[index] = names[index]
            box, source = crop_box_for(mask, margin)
            result.boxes[index], result.crop_sources[index] = box, source
            result.area_fractions[index] = float(np.count_nonzero(mask)) / mask.size
            crops.append(classifier.spec.preprocess.fit(image.crop(box)))
        probs[[item.index for item in chunk]] = classifier.predict_pixels(np.stack(crops))
    return result


def write_crop_predictions_csv(result: CropPredictions, path: Path) -> None:
    """The classifier's columns (image, label, one per class), then the crop's, then error last as everywhere."""
    predictions = result.predictions
    with_masks = any(m is not None for m in result.mask_files)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["image", "label", *predictions.class_names, "crop_box", "lesion_area_fraction", "crop", *(["mask"] if with_masks else []), "error"]
    )
    for i, sample in enumerate(predictions.dataset.samples):
        error = predictions.errors[i]
        values = [""] * len(predictions.class_names) if error else [f"{p:.6f}" for p in predictions.probs[i]]
        box = "" if result.boxes[i] is None else ",".join(str(v) for v in result.boxes[i])
        area = "" if error else f"{result.area_fractions[i]:.6f}"
        mask = [result.mask_files[i] or ""] if with_masks else []
        writer.writerow([sample.display_path, sample.label or "", *values, box, area, result.crop_sources[i] or "", *mask, error or ""])
    atomic.write_text(path, buffer.getvalue())
