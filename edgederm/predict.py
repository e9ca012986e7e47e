"""``edgederm predict`` and ``edgederm evaluate``: run a model over images or a dataset."""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import _atomic
from .data.layouts import images_from_paths, load_dataset
from .data.samples import SampleSet
from .errors import DataError, ImageError, UsageError
from .metrics import classification_metrics
from .runtime import Predictor


@dataclass
class Predictions:
    dataset: SampleSet
    class_names: list[str]
    probs: np.ndarray  # (N, C), NaN rows where the image failed
    errors: list[str | None]

    @property
    def ok(self) -> np.ndarray:
        return np.array([e is None for e in self.errors], bool)


def select_split(dataset: SampleSet, split: str, splits_csv: Path) -> SampleSet:
    """Keep the samples that a training run's splits.csv put in ``split``."""
    if not splits_csv.is_file():
        raise DataError("splits.csv not found", path=splits_csv, fix="--split needs a run directory from edgederm train (or --splits FILE)")
    with open(splits_csv, newline="", encoding="utf-8") as handle:
        chosen = {row["image_id"] for row in csv.DictReader(handle) if row.get("split") == split}
    if not chosen:
        raise DataError(f"no images in split {split!r}", path=splits_csv)
    indices = [i for i, s in enumerate(dataset.samples) if s.image_id in chosen]
    if not indices:
        raise DataError(
            f"none of the {split} images of {splits_csv} are in {dataset.spec}",
            path=splits_csv,
            fix="use the --data the model was trained on",
        )
    return dataset.subset(indices, f"[{split}]")


def resolve_inputs(data: str | None, images: list[str], split: str | None, splits_csv: Path | None) -> SampleSet:
    if bool(data) == bool(images):
        raise UsageError("give either --data SPEC or image files/folders, not both or neither")
    dataset = load_dataset(data) if data else images_from_paths(images)
    if split:
        if splits_csv is None:
            raise UsageError("--split needs --splits FILE or a MODEL run directory with splits.csv")
        dataset = select_split(dataset, split, splits_csv)
    return dataset


def run_predictor(predictor: Predictor, dataset: SampleSet, batch_size: int = 32, quiet: bool = False) -> Predictions:
    """Predict every sample; an unreadable image becomes an error row, never a crash."""
    preprocess = predictor.spec.preprocess
    probs = np.full((len(dataset), len(predictor.class_names)), np.nan, np.float32)
    errors: list[str | None] = [None] * len(dataset)
    pending: list[int] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        if pending:
            probs[pending] = predictor.predict_pixels(np.stack(batch))
            pending.clear()
            batch.clear()

    for index, sample in enumerate(tqdm(dataset.samples, desc="predicting", unit="img", disable=quiet, file=sys.stderr, mininterval=2)):
        try:
            batch.append(preprocess.fit(sample.load_image()))
        except ImageError as error:
            errors[index] = str(error)
            continue
        pending.append(index)
        if len(pending) >= batch_size:
            flush()
    flush()
    return Predictions(dataset, predictor.class_names, probs, errors)


def write_predictions_csv(predictions: Predictions, path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "label", *predictions.class_names, "error"])
    for sample, row, error in zip(predictions.dataset.samples, predictions.probs, predictions.errors, strict=True):
        values = [""] * len(row) if error else [f"{p:.6f}" for p in row]
        writer.writerow([sample.display_path, sample.label or "", *values, error or ""])
    _atomic.write_text(path, buffer.getvalue())


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
    result = classification_metrics(labels, predictions.probs[keep], predictions.class_names).to_dict()
    result["failed_images"] = int((~predictions.ok).sum())
    return result


def write_metrics_json(metrics: dict, path: Path) -> None:
    _atomic.write_text(path, json.dumps(metrics, indent=2))
