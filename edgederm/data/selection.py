"""Which samples a command runs on: a dataset spec or image paths, optionally one split of a training run."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import UsageError
from .layouts import images_from_paths, load_dataset
from .samples import SampleSet
from .splits import select_split


def resolve_inputs(data: str | None, images: list[str], split: str | None, splits_csv: Path | None) -> SampleSet:
    if bool(data) == bool(images):
        raise UsageError("give either --data SPEC or image files/folders, not both or neither")
    dataset = load_dataset(data) if data else images_from_paths(images)
    if split:
        if splits_csv is None:
            raise UsageError("--split needs --splits FILE or a MODEL run directory with splits.csv")
        dataset = select_split(dataset, split, splits_csv)
    return dataset
