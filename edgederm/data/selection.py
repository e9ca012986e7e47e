"""Which samples a command runs on: a dataset spec or image paths, optionally one split of a training run."""

from __future__ import annotations

import csv
from pathlib import Path

from ..core.errors import DataError, UsageError
from .layouts import images_from_paths, load_dataset
from .samples import SampleSet


def select_split(dataset: SampleSet, split: str, splits_csv: Path, *, missing_ok: bool = False) -> SampleSet:
    """Keep the samples that a training run's splits.csv put in ``split``.

    With ``missing_ok``, a dataset that shares no image with that split (other data) comes back whole.
    """
    if not splits_csv.is_file():
        raise DataError("splits.csv not found", path=splits_csv, fix="--split needs a run directory from edgederm train (or --splits FILE)")
    with open(splits_csv, newline="", encoding="utf-8") as handle:
        chosen = {row["image_id"] for row in csv.DictReader(handle) if row.get("split") == split}
    if not chosen:
        raise DataError(f"no images in split {split!r}", path=splits_csv)
    indices = [i for i, s in enumerate(dataset.samples) if s.image_id in chosen]
    if not indices and missing_ok:
        return dataset
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
