"""``edgederm predict`` and ``edgederm evaluate``: run a model over images or a dataset."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..core import atomic
from ..core.errors import DataError
from ..data.pixels import batched, decode_samples
from ..data.samples import SampleSet
from ..metrics import classification_metrics, segmentation_metrics
from ..runtime import Predictor
from ..runtime.readout import decide, lesion_mask, lesion_probabilities


@dataclass
class Predictions:
    dataset: SampleSet
    class_names: list[str]
    probs: np.ndarray  # (N, C), NaN rows where the image failed
    errors: list[str | None]
    decision: dict = field(default_factory=dict)  # the model's rule for naming the class (edgederm.runtime.readout.decide)

    @property
    def ok(self) -> np.ndarray:
        return np.array([e is None for e in self.errors], bool)


def run_predictor(predictor: Predictor, dataset: SampleSet, batch_size: int = 32) -> Predictions:
    """Predict every sample; an unreadable image becomes an error row, never a crash."""
    fit = predictor.spec.preprocess.fit
    probs = np.full((len(dataset), len(predictor.class_names)), np.nan, np.float32)
    errors: list[str | None] = [None] * len(dataset)
    for chunk in batched(decode_samples(dataset, errors, desc="predicting"), batch_size):
        probs[[item.index for item in chunk]] = predictor.predict_pixels(np.stack([fit(item.image) for item in chunk]))
    return Predictions(dataset, predictor.class_names, probs, errors, predictor.spec.decision)


def write_predictions_csv(predictions: Predictions, path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "label", *predictions.class_names, "predicted", "error"])
    for sample, row, error in zip(predictions.dataset.samples, predictions.probs, predictions.errors, strict=True):
        values = (
            [""] * (len(row) + 1)
            if error
            else [*(f"{p:.6f}" for p in row), predictions.class_names[int(decide(predictions.decision, row))]]
        )
        writer.writerow([sample.display_path, sample.label or "", *values, error or ""])
    atomic.write_text(path, buffer.getvalue())


def labelled_rows(predictions: Predictions) -> tuple[list[int], np.ndarray]:
    """The rows that have a known label and a prediction, and their labels as class indices."""
    keep = [i for i, (s, ok) in enumerate(zip(predictions.dataset.samples, predictions.ok, strict=True)) if ok and s.label is not None]
    unknown = sorted({predictions.dataset.samples[i].label for i in keep} - set(predictions.class_names))
    if unknown:
        raise DataError(f"labels {unknown} are not classes of this model {predictions.class_names}", path=predictions.dataset.spec)
    if not keep:
        raise DataError("no labelled image could be predicted", path=predictions.dataset.spec)
    return keep, np.array([predictions.class_names.index(predictions.dataset.samples[i].label) for i in keep])


def labelled_metrics(predictions: Predictions) -> dict:
    """Metrics over the rows that have a known label and a prediction."""
    keep, labels = labelled_rows(predictions)
    result = classification_metrics(labels, predictions.probs[keep], predictions.class_names, decision=predictions.decision).to_dict()
    result["failed_images"] = int((~predictions.ok).sum())
    return result


def write_metrics_json(metrics: dict, path: Path) -> None:
    atomic.write_text(path, json.dumps(metrics, indent=2))


# ----------------------------------------------------------------------------------------------
# Segmenters: one 0/255 PNG mask per image at its original size, plus the area and (evaluate) the scores

SEGMENTATION_METRICS = ("jaccard", "dice", "pixel_accuracy", "sensitivity", "specificity")


@dataclass
class MaskPredictions:
    dataset: SampleSet
    mask_files: list[str | None]  # relative to the output folder: masks/<image stem>.png
    area_fractions: np.ndarray  # lesion share of the image, NaN where the image failed
    errors: list[str | None]
    scores: list[dict | None]  # per-image metrics against the true mask (evaluate only)
    postprocess: dict  # the model's post-processing (ModelSpec.postprocess), for the record

    @property
    def ok(self) -> np.ndarray:
        return np.array([e is None for e in self.errors], bool)


def mask_names(dataset: SampleSet) -> list[str]:
    """masks/<image stem>.png, made unique when two images share a stem."""
    names, seen = [], set()
    for sample in dataset.samples:
        stem = sample.image_path.stem if sample.image_path is not None else Path(sample.image_id).name
        name, n = f"{stem}.png", 1
        while name in seen:
            n += 1
            name = f"{stem}_{n}.png"
        seen.add(name)
        names.append(f"masks/{name}")
    return names


def write_mask(path: Path, mask: np.ndarray) -> None:
    atomic.write_with(path, lambda tmp: Image.fromarray(mask).save(tmp, format="PNG"))


def run_segmenter(predictor: Predictor, dataset: SampleSet, out_dir: Path, batch_size: int = 32, score: bool = False) -> MaskPredictions:
    """Predict and write every mask; with ``score``, compare each with its true mask (all images need one)."""
    if score:
        dataset.require_masks()
    spec = predictor.spec
    names = mask_names(dataset)
    n = len(dataset)
    errors: list[str | None] = [None] * n
    result = MaskPredictions(dataset, [None] * n, np.full(n, np.nan), errors, [None] * n, dict(spec.postprocess))
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    for chunk in batched(decode_samples(dataset, errors, masks=score, desc="segmenting"), batch_size):
        probabilities = lesion_probabilities(predictor.predict_pixels(np.stack([spec.preprocess.fit(item.image) for item in chunk])))
        for item, probs in zip(chunk, probabilities, strict=True):
            mask = lesion_mask(probs, spec, item.image.size)
            write_mask(out_dir / names[item.index], mask)
            result.mask_files[item.index] = names[item.index]
            result.area_fractions[item.index] = float(np.count_nonzero(mask)) / mask.size
            if item.mask is not None:
                metrics = segmentation_metrics([item.mask], [mask])
                result.scores[item.index] = {name: getattr(metrics, name) for name in SEGMENTATION_METRICS}
    return result


def write_mask_predictions_csv(predictions: MaskPredictions, path: Path) -> None:
    scored = any(s is not None for s in predictions.scores)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "mask", "lesion_area_fraction", *(("jaccard", "dice") if scored else ()), "error"])
    for i, sample in enumerate(predictions.dataset.samples):
        error, score = predictions.errors[i], predictions.scores[i]
        area = "" if error else f"{predictions.area_fractions[i]:.6f}"
        scores = [f"{score[k]:.6f}" if score else "" for k in ("jaccard", "dice")] if scored else []
        writer.writerow([sample.display_path, predictions.mask_files[i] or "", area, *scores, error or ""])
    atomic.write_text(path, buffer.getvalue())


def mask_metrics(predictions: MaskPredictions) -> dict:
    """The five segmentation metrics, per image then averaged, over the images that could be scored."""
    scores = [s for s in predictions.scores if s is not None]
    if not scores:
        raise DataError("no image with a mask could be segmented", path=predictions.dataset.spec)
    result: dict = {name: float(np.mean([s[name] for s in scores])) for name in SEGMENTATION_METRICS}
    result["n"] = len(scores)
    result["failed_images"] = int((~predictions.ok).sum())
    return result
