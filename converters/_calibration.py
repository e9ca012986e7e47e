"""Representative inputs for static quantization, through the one Preprocess."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgederm.core.errors import DataError
from edgederm.core.preprocess import Preprocess
from edgederm.data.layouts import load_dataset
from edgederm.data.pixels import load_pixels


@dataclass
class Calibration:
    pixels: np.ndarray  # uint8 (N, S, S, 3) after Preprocess.fit
    preprocess: Preprocess
    source: str

    def __len__(self) -> int:
        return len(self.pixels)

    def batches(self, batch_size: int = 1, layout: str = "NCHW") -> Iterator[np.ndarray]:
        """Normalised float32 batches in the requested layout."""
        for start in range(0, len(self.pixels), batch_size):
            array = self.preprocess.normalize(self.pixels[start : start + batch_size])  # preprocess.layout
            if layout != self.preprocess.layout:
                array = np.ascontiguousarray(np.moveaxis(array, 1, -1) if layout == "NHWC" else np.moveaxis(array, -1, 1))
            yield array


def load_calibration(
    spec_data: str,
    preprocess: Preprocess,
    n: int = 300,
    seed: int = 0,
    splits_csv: Path | None = None,
    other_data_ok: bool = False,
) -> Calibration:
    """Up to ``n`` images of ``spec_data``, a seeded random subset, never failing on one bad image.

    With ``splits_csv`` (a training run's), only its train split: calibration never sees a test image.
    ``other_data_ok``: data sharing no image with the run's split is used whole instead of refused.
    """
    dataset = load_dataset(spec_data)
    if splits_csv is not None:
        from edgederm.data.selection import select_split

        dataset = select_split(dataset, "train", splits_csv, missing_ok=other_data_ok)
    if len(dataset) > n:
        chosen = np.sort(np.random.default_rng(seed).choice(len(dataset), n, replace=False))
        dataset = dataset.subset(chosen.tolist())
    cache = load_pixels(dataset, preprocess, desc="calibration")
    if not cache.kept:
        raise DataError("no calibration image could be read", path=spec_data)
    return Calibration(cache.pixels, preprocess, dataset.spec)
