"""Decode and resize a dataset once into memory, skipping bad images by path with a count."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ..errors import ImageError
from ..preprocess import Preprocess
from .samples import SampleSet


@dataclass
class PixelCache:
    pixels: np.ndarray  # uint8 (N, S, S, 3), already through Preprocess.fit
    kept: list[int]  # indices into the SampleSet of the rows in ``pixels``
    failures: list[str] = field(default_factory=list)  # one line per skipped image


def load_pixels(dataset: SampleSet, preprocess: Preprocess, desc: str = "images", quiet: bool = False) -> PixelCache:
    side = preprocess.input_size
    pixels = np.empty((len(dataset), side, side, 3), np.uint8)
    kept: list[int] = []
    failures: list[str] = []
    for index, sample in enumerate(
        tqdm(dataset.samples, desc=f"loading {desc}", unit="img", disable=quiet, file=sys.stderr, mininterval=2)
    ):
        try:
            pixels[len(kept)] = preprocess.fit(sample.load_image())
        except ImageError as error:
            failures.append(str(error))
            continue
        kept.append(index)
    return PixelCache(pixels[: len(kept)], kept, failures)
